"""An embedded MQTT broker for the demo and the simulators, so they run on a machine without
Mosquitto."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from amqtt.broker import Broker

from core.net import free_port

__all__ = ["embedded_broker", "run_embedded_broker"]

START_TIMEOUT = 15.0


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


@asynccontextmanager
async def embedded_broker(host: str = "127.0.0.1") -> AsyncIterator[str]:
    """A broker on a free port for the duration of the block; yields its mqtt:// URL."""
    port = free_port()
    started = asyncio.Event()
    broker = asyncio.create_task(run_embedded_broker(host, port, started), name="embedded-broker")
    waiter = asyncio.create_task(started.wait())
    try:
        await asyncio.wait(
            {broker, waiter}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if broker.done():
            broker.result()  # re-raises why the broker could not start
        if not started.is_set():
            raise RuntimeError("the embedded MQTT broker did not start")
        yield f"mqtt://{host}:{port}"
    finally:
        broker.cancel()
        await asyncio.gather(broker, return_exceptions=True)
