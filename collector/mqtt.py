"""The streaming source: devices that publish JSON over MQTT."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from datetime import timedelta
from urllib.parse import urlsplit

import aiomqtt

from collector.base import CollectorStats, FaultTracker, OnlineTracker, RecordSink
from collector.mapping import map_payload
from core.aio import raise_if_cancelling
from core.clock import Clock
from core.config import Device, MqttSource
from core.errors import PayloadError
from core.records import DeadLetter, Record

__all__ = ["MqttCollector", "parse_mqtt_url"]

log = logging.getLogger(__name__)

PAYLOAD_KEEP = 512  # bytes of a bad payload kept in its dead letter


def parse_mqtt_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{url!r} is not an mqtt://host:port URL")
    return parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883)


class MqttCollector:
    """Subscribes to every MQTT device's topic and maps what arrives.

    Reconnects with a capped, jittered exponential backoff and subscribes again on every
    connection. A device is marked offline when nothing arrived for three expected intervals,
    or when its status topic says so (a device's last will).
    """

    def __init__(
        self,
        devices: Sequence[Device],
        *,
        url: str,
        client_id: str,
        sink: RecordSink,
        clock: Clock,
        stats: CollectorStats | None = None,
        backoff_cap: float = 30.0,
    ) -> None:
        self._host, self._port = parse_mqtt_url(url)
        self._client_id = client_id
        self._sink = sink
        self._clock = clock
        self.stats = stats or CollectorStats()
        self._backoff_cap = backoff_cap
        self._by_topic: dict[str, Device] = {}
        self._by_status_topic: dict[str, Device] = {}
        for device in devices:
            source = device.source
            assert isinstance(source, MqttSource)
            self._by_topic[source.topic] = device
            if source.status_topic:
                self._by_status_topic[source.status_topic] = device
        self._faults = FaultTracker()
        self._online = OnlineTracker()
        self._last_seen: dict[str, float] = {}
        self.connected = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._receive_forever(), name=f"mqtt[{self._client_id}].receive")
            tasks.create_task(self._watch_offline(), name=f"mqtt[{self._client_id}].offline")

    async def _receive_forever(self) -> None:
        attempt = 0
        while True:
            try:
                async with aiomqtt.Client(
                    self._host, self._port, identifier=self._client_id
                ) as client:
                    for topic in (*self._by_topic, *self._by_status_topic):
                        await client.subscribe(topic, qos=1)
                    raise_if_cancelling()  # aiomqtt's connect and subscribe can swallow one
                    attempt = 0
                    self.connected.set()
                    log.info(
                        "mqtt: subscribed to %d topics on %s:%d",
                        len(self._by_topic),
                        self._host,
                        self._port,
                    )
                    async for message in client.messages:
                        await self._handle(message.topic.value, _as_bytes(message.payload))
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                delay = random.uniform(0, min(self._backoff_cap, 1.5**attempt))
                attempt += 1
                log.warning("mqtt: %s; reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _handle(self, topic: str, payload: bytes) -> None:
        now = self._clock.now()
        self.stats.messages += 1
        status_device = self._by_status_topic.get(topic)
        if status_device is not None:
            text = payload.decode("utf-8", "replace").strip().lower()
            if text in ("online", "offline"):
                await self._emit(
                    self._online.mark(status_device.id, text == "online", now, f"status: {text}")
                )
            else:
                await self._reject(topic, payload, PayloadError("bad_status", repr(text[:40])))
            return
        device = self._by_topic.get(topic)
        if device is None:
            await self._reject(topic, payload, PayloadError("unknown_device", topic))
            return
        try:
            mapped = map_payload(device, payload, now)
        except PayloadError as exc:
            await self._reject(topic, payload, exc)
            return
        self._last_seen[device.id] = asyncio.get_running_loop().time()
        records: list[Record] = []
        records += self._online.mark(device.id, True, mapped.ts, "data received")
        records += mapped.readings
        if mapped.active_faults is not None:
            records += self._faults.update(device.id, mapped.active_faults, mapped.ts)
        await self._emit(records)

    async def _emit(self, records: Sequence[Record]) -> None:
        if records:
            self.stats.records += len(records)
            await self._sink.put(records)

    async def _reject(self, topic: str, payload: bytes, error: PayloadError) -> None:
        self.stats.dead_letters[error.reason] += 1
        text = payload[:PAYLOAD_KEEP].decode("utf-8", "replace")
        await self._sink.dead_letter(
            DeadLetter("mqtt", topic, text, error.reason, error.detail, self._clock.now())
        )

    async def _watch_offline(self) -> None:
        loop = asyncio.get_running_loop()
        devices = list(self._by_topic.values())
        check_every = min(
            d.source.expected_interval for d in devices if isinstance(d.source, MqttSource)
        )
        while True:
            await asyncio.sleep(max(0.5, check_every / 4))
            now = loop.time()
            for device in devices:
                silent_for = now - self._last_seen.get(device.id, now)
                if silent_for > device.offline_after and self._online.is_online(device.id):
                    reason = f"no data for {timedelta(seconds=round(silent_for))}"
                    await self._emit(self._online.mark(device.id, False, self._clock.now(), reason))


def _as_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()
