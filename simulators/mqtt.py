"""A simulated device that publishes JSON over MQTT with a client of its own, as a real device
does: a retained ``online`` status when it connects, a last will that says ``offline`` when it
drops off the network, and a clean ``offline`` when it is switched off.

Payloads are ``{"ts": <publication time>, <channel>: <value>, ..., "faults": [<code>, ...]}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from core.aio import raise_if_cancelling
from core.clock import AcceleratedClock, Clock, SystemClock
from simulators.behaviour import Behaviour
from simulators.devices.base import DeviceModel
from simulators.stats import SimStats

__all__ = ["MALFORMED_KINDS", "MqttDeviceSim", "topics"]

log = logging.getLogger(__name__)

# what a scenario's malformed payloads look like, in turn
MALFORMED_KINDS = ("bad_json", "missing_field", "wrong_type")
GOODBYE_TIMEOUT = 2.0  # seconds a switched-off device waits for its "offline" to be taken


def topics(site_slug: str, device_id: str) -> tuple[str, str]:
    """The documented topic scheme: (telemetry topic, retained status topic)."""
    base = f"clinic/{site_slug}/devices/{device_id}"
    return f"{base}/telemetry", f"{base}/status"


class MqttDeviceSim:
    def __init__(
        self,
        *,
        device_id: str,
        url: str,
        topic: str,
        status_topic: str | None,
        model: DeviceModel,
        clock: AcceleratedClock,
        interval: float,
        qos: int = 1,
        behaviour: Behaviour | None = None,
        stats: SimStats | None = None,
        phase: float = 0.0,
        wall: Clock | None = None,
    ) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 1883
        self.device_id = device_id
        self._topic = topic
        self._status_topic = status_topic
        self._model = model
        self._clock = clock
        self._interval = interval
        self._qos = qos
        self.behaviour = behaviour or Behaviour()
        self.stats = stats or SimStats()
        self._phase = phase  # real seconds before the first message, so a fleet is spread out
        self._wall = wall or SystemClock()
        self._malformed_sent = 0

    def body(self, now: datetime) -> bytes:
        """The next message: the model's state at simulated ``now``, stamped with wall time."""
        model = self._model
        model.advance(now)
        payload: dict[str, Any] = {"ts": self._wall.now().isoformat(timespec="milliseconds")}
        payload.update(model.published())
        payload["faults"] = model.faults()
        if self.behaviour.take_malformed():
            return self._malformed(payload)
        return json.dumps(payload).encode()

    def _malformed(self, payload: dict[str, Any]) -> bytes:
        kind = MALFORMED_KINDS[self._malformed_sent % len(MALFORMED_KINDS)]
        self._malformed_sent += 1
        self.stats.malformed += 1
        first = next(iter(self._model.published()))
        if kind == "bad_json":
            return json.dumps(payload).encode()[:-7]
        if kind == "missing_field":
            del payload[first]
        else:
            payload[first] = "n/a"
        return json.dumps(payload).encode()

    async def run(self) -> None:
        will = (
            aiomqtt.Will(self._status_topic, b"offline", qos=1, retain=True)
            if self._status_topic
            else None
        )
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self._phase
        attempt = 0
        while True:
            outage = self.behaviour.active("offline", self._clock.now())
            if outage is not None:
                await self._wait_out(outage.end)
                next_at = loop.time()
                continue
            try:
                async with aiomqtt.Client(
                    self._host, self._port, identifier=f"sim-{self.device_id}", will=will
                ) as client:
                    attempt = 0
                    self.stats.connects += 1
                    if self._status_topic:
                        await client.publish(self._status_topic, b"online", qos=1, retain=True)
                    raise_if_cancelling()
                    next_at = await self._publish_until_outage(client, next_at)
            except aiomqtt.MqttError as exc:
                delay = random.uniform(0, min(10.0, 1.5**attempt))
                attempt += 1
                log.debug("simulator %s: %s; reconnecting in %.1fs", self.device_id, exc, delay)
                await asyncio.sleep(delay)

    async def _publish_until_outage(self, client: aiomqtt.Client, next_at: float) -> float:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(max(next_at - loop.time(), 0.0))
                self.stats.record_lag(loop.time() - next_at)
                now = self._clock.now()
                if self.behaviour.active("offline", now) is not None:
                    await self._lose_power(client)
                    return next_at
                await client.publish(self._topic, self.body(now), qos=self._qos)
                raise_if_cancelling()  # aiomqtt's publish can swallow one (wait_for, 3.11)
                self.stats.published += 1
                slow = self.behaviour.active("slow", now)
                next_at += self._interval + (slow.delay if slow else 0.0)
                # after a stall, carry on from now rather than firing the missed messages at once
                next_at = max(next_at, loop.time())
        except asyncio.CancelledError:
            # switched off: say goodbye, unless the broker is gone too (the will covers that)
            if self._status_topic:
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(GOODBYE_TIMEOUT):
                        await client.publish(self._status_topic, b"offline", qos=1, retain=True)
            raise

    async def _lose_power(self, client: aiomqtt.Client) -> None:
        """Drop the connection without a DISCONNECT, as a device losing power does, so the
        broker publishes the device's last will."""
        paho = client._client
        sock = paho.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
        disconnected = client._disconnected
        await asyncio.wait({disconnected}, timeout=5.0)
        if disconnected.done() and not disconnected.cancelled():
            disconnected.exception()  # expected: mark it seen, so asyncio does not log it

    async def _wait_out(self, end: datetime | None) -> None:
        if end is None:
            await asyncio.Future()  # off for the rest of the run
        await asyncio.sleep(self._clock.wall_seconds(end) if end else 0.0)
