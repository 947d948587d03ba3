"""An embedded MQTT broker for the demo, so it runs on a machine without Mosquitto."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from amqtt.broker import Broker

__all__ = ["run_embedded_broker"]


async def run_embedded_broker(host: str, port: int, started: asyncio.Event) -> None:
    """Serve MQTT on host:port (never on every interface) until cancelled."""
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    config: dict[str, Any] = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    started.set()
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(broker.shutdown())
