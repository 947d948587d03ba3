"""A simulated device that publishes JSON over MQTT, with one client of its own as a real
device has, a retained online status and a last will that says offline."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

__all__ = ["MqttDeviceSim"]

log = logging.getLogger(__name__)


class MqttDeviceSim:
    def __init__(
        self,
        *,
        device_id: str,
        url: str,
        topic: str,
        status_topic: str | None,
        payload: Callable[[], dict[str, Any]],
        interval: float,
        qos: int = 1,
    ) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 1883
        self.device_id = device_id
        self._topic = topic
        self._status_topic = status_topic
        self._payload = payload
        self._interval = interval
        self._qos = qos
        self.published = 0

    async def run(self) -> None:
        will = (
            aiomqtt.Will(self._status_topic, b"offline", qos=1, retain=True)
            if self._status_topic
            else None
        )
        attempt = 0
        while True:
            try:
                async with aiomqtt.Client(
                    self._host, self._port, identifier=f"sim-{self.device_id}", will=will
                ) as client:
                    attempt = 0
                    if self._status_topic:
                        await client.publish(self._status_topic, b"online", qos=1, retain=True)
                    try:
                        while True:
                            body = json.dumps(self._payload()).encode()
                            await client.publish(self._topic, body, qos=self._qos)
                            self.published += 1
                            await asyncio.sleep(self._interval)
                    except asyncio.CancelledError:
                        # a clean stop says goodbye; the will covers a crash
                        if self._status_topic:
                            await client.publish(self._status_topic, b"offline", qos=1, retain=True)
                        raise
            except aiomqtt.MqttError as exc:
                delay = random.uniform(0, min(10.0, 1.5**attempt))
                attempt += 1
                log.debug("simulator %s: %s; reconnecting in %.1fs", self.device_id, exc, delay)
                await asyncio.sleep(delay)
