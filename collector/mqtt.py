"""The streaming source: devices that publish over MQTT.

A message reaches a device by its exact ``topic`` (or ``status_topic``), or through one of the
site's topic templates (``mqtt.subscriptions``), whose ``{device_id}`` segment names the device
and whose ``{channel}`` segment names the payload field of a plain value.

Delivery is at least once, end to end: the collector keeps a persistent session and
acknowledges a QoS 1 message to the broker only once the records made from it (or its dead
letter) are committed to the store. A crash before the commit leaves the message unacknowledged,
and the broker delivers it again to the session; the store's writes are idempotent on
(device, metric, time), so the second delivery adds nothing.

aiomqtt (2.5) opens, watches and closes the connection. What it does not offer is reached
through its internals, here and nowhere else, each use saying why: its paho client
(``client._client``: manual acknowledgements, the message callback, the socket) and its futures
for the CONNACK and the connection's end (``_connected``, ``_disconnected``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collector.base import CollectorStats, FaultTracker, OnlineTracker, RecordSink
from collector.mapping import map_payload
from core.aio import raise_if_cancelling
from core.clock import Clock
from core.config import Device, MqttSettings, MqttSource, TlsSettings, TopicTemplate
from core.errors import PayloadError
from core.records import DeadLetter, Record

__all__ = [
    "BrokerAddress",
    "MqttCollector",
    "MqttStats",
    "Route",
    "TopicRouter",
    "parse_mqtt_url",
]

log = logging.getLogger(__name__)

PAYLOAD_KEEP = 512  # bytes of a bad payload kept in its dead letter
MAX_BATCH = 1000  # messages handled (and acknowledged) together, at most
READ_BURST = 200  # packets read from the socket in one go, at most
READ_AHEAD = 65_536  # bytes taken from the socket per system call
HIGH_WATER = 5_000  # messages waiting to be mapped at which reading stops
LOW_WATER = 1_000  # ... and starts again
OPERATION_TIMEOUT = 10.0  # seconds a broker has to answer a CONNECT or a SUBSCRIBE
PROBE_TIMEOUT = 3.0  # the same while it is not known whether the broker speaks MQTT 5
ROUTE_CACHE = 10_000  # topics whose route is remembered; the cache starts over when full

Version = Literal["5", "3.1.1"]


class BrokerAddress(NamedTuple):
    host: str
    port: int
    tls: bool


def parse_mqtt_url(url: str) -> BrokerAddress:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` (TLS)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{url!r} is not an mqtt://host:port URL")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, parts.port or (8883 if tls else 1883), tls)


# --- which device a topic belongs to ---------------------------------------------------------


class Route(NamedTuple):
    """Where a message goes: the device (None when ``device_id`` names no configured device),
    the payload field its ``{channel}`` names, and whether it is an online/offline status."""

    device: Device | None
    device_id: str
    channel: str | None
    status: bool


class _Template:
    """A topic template split into levels: a literal to compare, or a segment name to capture."""

    def __init__(self, template: TopicTemplate) -> None:
        self.status = template.status
        self.levels: list[str | None] = []
        self.captures: dict[int, str] = {}
        for index, level in enumerate(template.topic.split("/")):
            if level.startswith("{") and level.endswith("}"):
                self.levels.append(None)
                self.captures[index] = level[1:-1]
            else:
                self.levels.append(level)
        self.filter = "/".join("+" if level is None else level for level in self.levels)

    def match(self, levels: list[str]) -> dict[str, str] | None:
        if len(levels) != len(self.levels):
            return None
        for mine, theirs in zip(self.levels, levels, strict=True):
            if mine is not None and mine != theirs:
                return None
        return {name: levels[index] for index, name in self.captures.items()}

    def covers(self, topic: str) -> bool:
        return self.match(topic.split("/")) is not None


class TopicRouter:
    """Maps a topic to a device: exact topics first, then the templates in the order given."""

    def __init__(self, devices: Sequence[Device], templates: Sequence[TopicTemplate]) -> None:
        self._devices = {device.id: device for device in devices}
        self._templates = [_Template(template) for template in templates]
        self._exact: dict[str, Route] = {}
        for device in devices:
            source = device.source
            assert isinstance(source, MqttSource)
            if source.topic:
                self._exact[source.topic] = Route(device, device.id, None, False)
            if source.status_topic:
                self._exact[source.status_topic] = Route(device, device.id, None, True)
        self._cache: dict[str, Route | None] = {}

    def filters(self) -> list[tuple[str, bool]]:
        """(filter, is_status) to subscribe to. An exact topic a template already covers is
        left out: the broker would deliver a message once per matching subscription."""
        wanted = {template.filter: template.status for template in self._templates}
        for topic, route in self._exact.items():
            if not any(template.covers(topic) for template in self._templates):
                wanted.setdefault(topic, route.status)
        return list(wanted.items())

    def route(self, topic: str) -> Route | None:
        """The route of ``topic``, or None when nothing subscribed matches it."""
        route = self._exact.get(topic)
        if route is not None:
            return route
        try:
            return self._cache[topic]
        except KeyError:
            pass
        route = self._match(topic)
        if len(self._cache) >= ROUTE_CACHE:
            self._cache.clear()  # a publisher inventing topics must not grow memory without end
        self._cache[topic] = route
        return route

    def _match(self, topic: str) -> Route | None:
        levels = topic.split("/")
        for template in self._templates:
            captured = template.match(levels)
            if captured is not None:
                device_id = captured["device_id"]
                return Route(
                    self._devices.get(device_id),
                    device_id,
                    captured.get("channel"),
                    template.status,
                )
        return None


# --- the collector ---------------------------------------------------------------------------


@dataclass
class MqttStats:
    """The MQTT session's own counters, next to the records and dead letters every collector
    counts in ``CollectorStats``."""

    connected: bool = False
    connections: int = 0
    version: str = ""
    acks_sent: int = 0
    acks_dropped: int = 0  # durable only after their connection was gone; redelivered instead
    unacked: int = 0  # received on this connection at QoS >= 1, not yet durable
    strays: int = 0  # messages on topics no longer configured (see _unsubscribe_strays)
    unsubscribed: int = 0  # such topics unsubscribed


class _Connection:
    """Acknowledges messages on one connection, and only while that connection lives.

    Message ids are per connection: after a reconnect the broker redelivers what was not
    acknowledged, and an old id may name a new message. So an acknowledgement that becomes
    due after its connection ended is dropped; the redelivered copy is acknowledged instead.
    """

    def __init__(self, client: aiomqtt.Client, stats: MqttStats) -> None:
        # aiomqtt 2.5 has no API for manual acknowledgements; its paho client does (``ack``).
        self._paho: paho.Client = client._client
        self.client = client
        self._stats = stats
        self.alive = True

    def ack(self, messages: list[tuple[int, int]]) -> None:
        """Called by the sink once the records of ``messages`` (mid, qos) have committed."""
        # aiomqtt resolves ``_disconnected`` as soon as paho reports the loss, which may be
        # before the receive loop notices and marks this connection dead
        if not self.alive or self.client._disconnected.done():
            self._stats.acks_dropped += len(messages)
            return
        for mid, qos in messages:
            # PUBACKs go out in the order the PUBLISHes came in, as MQTT requires: the sink
            # calls back in order, and ``messages`` is in arrival order
            if self._paho.ack(mid, qos) == paho.MQTT_ERR_SUCCESS:
                self._stats.acks_sent += 1
            else:
                self._stats.acks_dropped += 1
            self._stats.unacked -= 1


class MqttCollector:
    """Subscribes to the devices' topics and the site's topic templates and maps what arrives.

    Reconnects with a capped, jittered exponential backoff and subscribes again on every
    connection. A device is marked offline when nothing arrived for three expected intervals,
    or when its status topic says so (a device's last will).
    """

    def __init__(
        self,
        devices: Sequence[Device],
        *,
        settings: MqttSettings,
        sink: RecordSink,
        clock: Clock,
        url: str | None = None,
        stats: CollectorStats | None = None,
    ) -> None:
        url = url or settings.url
        if url is None:
            raise ValueError("no MQTT broker URL: set mqtt.url or pass one")
        self._broker = parse_mqtt_url(url)
        if settings.tls is not None and not self._broker.tls:
            raise ValueError(f"mqtt.tls is set but {url} is not an mqtts:// URL")
        self._settings = settings
        self._name = settings.client_id
        self._sink = sink
        self._clock = clock
        self.stats = stats or CollectorStats()
        self.mqtt_stats = MqttStats()
        self._devices = list(devices)
        self._router = TopicRouter(self._devices, settings.subscriptions)
        self._faults = FaultTracker()
        self._online = OnlineTracker()
        self._last_seen: dict[str, float] = {}
        self._unsubscribed: set[str] = set()
        self._unsubscribing: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()

    def device_states(self) -> dict[str, bool]:
        """Online (True) or offline for each device this collector has heard from or polled."""
        return self._online.states()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._receive_forever(), name=f"mqtt[{self._name}].receive")
            tasks.create_task(self._watch_offline(), name=f"mqtt[{self._name}].offline")

    # --- the connection ----------------------------------------------------------------------

    async def _receive_forever(self) -> None:
        # None while protocol "auto" has not settled: MQTT 5 is tried first, and 3.1.1 only
        # after a broker refused 5 (the demo's embedded amqtt does)
        configured = self._settings.protocol
        version: Version | None = None if configured == "auto" else configured
        attempt = 0
        while True:
            trying: Version = version or "5"
            client = self._client(trying, timeout=OPERATION_TIMEOUT if version else PROBE_TIMEOUT)
            # before the CONNECT: a resumed session's messages come right after the CONNACK
            inbox = _Inbox(client)
            entered = False
            try:
                try:
                    async with client:
                        entered = True
                        raise_if_cancelling()  # aiomqtt's connect can swallow a cancellation
                        version = trying
                        client.timeout = OPERATION_TIMEOUT
                        attempt = 0
                        await self._session(client, inbox, trying)
                finally:
                    if not entered:
                        _hang_up(client)
            except aiomqtt.MqttError as exc:
                if not entered and version is None and await self._refuses_v5(exc):
                    version = "3.1.1"
                    log.warning(
                        "mqtt: %s:%d does not speak MQTT 5; using 3.1.1, which has no session "
                        "expiry and lets the broker cap unacknowledged messages (Mosquitto: "
                        "max_inflight_messages)",
                        self._broker.host,
                        self._broker.port,
                    )
                    continue
                delay = random.uniform(0, min(self._settings.backoff_max, 1.5**attempt))
                attempt += 1
                log.warning("mqtt: %s; reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _refuses_v5(self, error: aiomqtt.MqttError) -> bool:
        """Whether the broker does not speak MQTT 5: it said so, or it did not answer and says
        so to a bare MQTT 5 CONNECT.

        A 3.1.1 broker may not get far enough into a CONNECT with properties (session expiry)
        to refuse it: amqtt waits for bytes that never come. The probe carries no properties,
        and a client id of its own, since the collector's id would resume its persistent
        session and, with no session expiry given, end it.
        """
        if isinstance(error, MqttConnectError):
            return _version_refused(error)
        if not _unanswered(error):
            return False
        probe = aiomqtt.Client(
            self._broker.host,
            self._broker.port,
            identifier=f"{self._settings.client_id[:50]}-probe",
            username=self._settings.username,
            password=self._settings.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_params=self._tls(),
            timeout=PROBE_TIMEOUT,
        )
        try:
            async with probe:
                raise_if_cancelling()
        except MqttConnectError as exc:
            return _version_refused(exc)
        except aiomqtt.MqttError:
            _hang_up(probe)
        return False

    def _tls(self) -> aiomqtt.TLSParameters | None:
        if not self._broker.tls:
            return None
        files = self._settings.tls or TlsSettings()
        return aiomqtt.TLSParameters(
            ca_certs=str(files.ca_file) if files.ca_file else None,
            certfile=str(files.cert_file) if files.cert_file else None,
            keyfile=str(files.key_file) if files.key_file else None,
        )

    def _client(self, version: Version, *, timeout: float) -> aiomqtt.Client:
        settings = self._settings
        persistent = settings.session_expiry > 0
        common: dict[str, Any] = {
            "identifier": settings.client_id,
            "username": settings.username,
            "password": settings.password,
            "tls_params": self._tls(),
            "timeout": timeout,
        }
        if version == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = round(settings.session_expiry)
            # acknowledgements wait for the commit: the broker must let that many be pending
            properties.ReceiveMaximum = settings.receive_maximum
            client = aiomqtt.Client(
                self._broker.host,
                self._broker.port,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=not persistent,
                properties=properties,
                **common,
            )
        else:
            client = aiomqtt.Client(
                self._broker.host,
                self._broker.port,
                protocol=aiomqtt.ProtocolVersion.V311,
                clean_session=not persistent,
                **common,
            )
        # aiomqtt 2.5 does not expose paho's manual acknowledgement. It must be on before the
        # CONNECT: a resumed session's queued messages arrive right after the CONNACK, and paho
        # would acknowledge them on receipt, before they are stored.
        client._client.manual_ack_set(True)
        return client

    async def _session(self, client: aiomqtt.Client, inbox: _Inbox, version: Version) -> None:
        connection = _Connection(client, self.mqtt_stats)
        try:
            await self._subscribe(client)
            raise_if_cancelling()  # aiomqtt's subscribe can swallow a cancellation
            inbox.start()
            self.mqtt_stats.connected = True
            self.mqtt_stats.connections += 1
            self.mqtt_stats.version = version
            self.connected.set()
            while True:
                await self._handle(await inbox.take(MAX_BATCH), connection)
        finally:
            connection.alive = False
            self.connected.clear()
            self.mqtt_stats.connected = False
            self.mqtt_stats.unacked = 0  # the broker delivers them again on the next connection
            unsubscribing = list(self._unsubscribing)
            for task in unsubscribing:
                task.cancel()
            await asyncio.gather(*unsubscribing, return_exceptions=True)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        """Subscribe to everything in one SUBSCRIBE, on every connection: a resumed session
        keeps its subscriptions, but an expired one or a changed configuration does not."""
        qos = self._settings.qos
        group = self._settings.shared_group
        topics: list[tuple[str, int]] = [
            # retained messages (a device's last will) never reach a shared subscription, and
            # every collector needs them, so status topics are not shared
            (f"$share/{group}/{topic}" if group and not status else topic, qos)
            for topic, status in self._router.filters()
        ]
        if not topics:
            return
        granted: list[int | ReasonCode] = list(await client.subscribe(topics))
        for (topic, _), code in zip(topics, granted, strict=False):
            value = int(code.value) if isinstance(code, ReasonCode) else int(code)
            if value >= 0x80:
                log.error("mqtt: the broker refused the subscription %r (%s)", topic, code)
        log.info(
            "mqtt: subscribed to %d topic filters on %s:%d at QoS %d",
            len(topics),
            self._broker.host,
            self._broker.port,
            qos,
        )

    # --- messages ------------------------------------------------------------------------------

    async def _handle(self, batch: list[_Received], connection: _Connection | None) -> None:
        """Map a batch of messages; their records, their dead letters, then one callback that
        acknowledges them all go to the sink in arrival order."""
        now = self._clock.now()
        seen_at = asyncio.get_running_loop().time()
        records: list[Record] = []
        to_ack: list[tuple[int, int]] = []
        strays: set[str] = set()
        for message in batch:
            topic, payload = message.topic, message.payload
            route = self._router.route(topic)
            if route is None:
                strays.add(topic)
            else:
                try:
                    records += self._map(route, payload, now, seen_at)
                except PayloadError as exc:
                    await self._reject(topic, payload, exc, now)
            if message.qos > 0:
                to_ack.append((message.mid, message.qos))
        self.stats.messages += len(batch)
        self.stats.records += len(records)
        if to_ack and connection is not None:
            self.mqtt_stats.unacked += len(to_ack)
            await self._sink.put(records, on_durable=lambda: connection.ack(to_ack))
        elif records:
            await self._sink.put(records)
        if strays:
            self._unsubscribe_strays(strays, connection)

    def _unsubscribe_strays(self, topics: set[str], connection: _Connection | None) -> None:
        """Messages that match none of the filters subscribed now come from a subscription the
        broker kept in the persistent session from an earlier configuration. They are
        acknowledged and dropped; their topic is unsubscribed in case that subscription was an
        exact topic (a wildcard one cannot be named from here, and stays)."""
        self.mqtt_stats.strays += len(topics)
        new = topics - self._unsubscribed
        if not new or connection is None:
            return
        if len(self._unsubscribed) > ROUTE_CACHE:
            self._unsubscribed.clear()
        self._unsubscribed |= new
        log.info(
            "mqtt: %d topic(s) match no configured topic, e.g. %r: left in the session by an "
            "earlier configuration; unsubscribing",
            len(new),
            next(iter(new)),
        )
        # in a task of its own: the receive loop must go on reading, or the UNSUBACK would
        # wait behind the messages it is not taking
        task = asyncio.create_task(
            self._unsubscribe(connection.client, sorted(new)), name=f"mqtt[{self._name}].unsub"
        )
        self._unsubscribing.add(task)
        task.add_done_callback(self._unsubscribing.discard)

    async def _unsubscribe(self, client: aiomqtt.Client, topics: list[str]) -> None:
        try:
            await client.unsubscribe(topics)
        except aiomqtt.MqttError as exc:
            log.warning("mqtt: could not unsubscribe %d old topic(s): %s", len(topics), exc)
        else:
            self.mqtt_stats.unsubscribed += len(topics)

    def _map(self, route: Route, payload: bytes, now: datetime, seen_at: float) -> list[Record]:
        device = route.device
        if device is None:
            raise PayloadError("unknown_device", f"{route.device_id!r} is not a configured device")
        if route.status:
            text = payload.decode("utf-8", "replace").strip().lower()
            if text not in ("online", "offline"):
                raise PayloadError("bad_status", repr(text[:40]))
            return list(self._online.mark(device.id, text == "online", now, f"status: {text}"))
        mapped = map_payload(device, payload, now, route.channel)
        self._last_seen[device.id] = seen_at
        records: list[Record] = []
        records += self._online.mark(device.id, True, mapped.ts, "data received")
        records += mapped.readings
        if mapped.active_faults is not None:
            records += self._faults.update(device.id, mapped.active_faults, mapped.ts)
        return records

    async def _reject(self, topic: str, payload: bytes, error: PayloadError, now: datetime) -> None:
        self.stats.dead_letters[error.reason] += 1
        text = payload[:PAYLOAD_KEEP].decode("utf-8", "replace")
        await self._sink.dead_letter(
            DeadLetter("mqtt", topic, text, error.reason, error.detail, now)
        )

    # --- silence -------------------------------------------------------------------------------

    async def _watch_offline(self) -> None:
        if not self._devices:
            return
        loop = asyncio.get_running_loop()
        check_every = min(
            d.source.expected_interval for d in self._devices if isinstance(d.source, MqttSource)
        )
        while True:
            await asyncio.sleep(max(0.5, check_every / 4))
            now = loop.time()
            for device in self._devices:
                silent_for = now - self._last_seen.get(device.id, now)
                if silent_for > device.offline_after and self._online.is_online(device.id):
                    reason = f"no data for {timedelta(seconds=round(silent_for))}"
                    changes = self._online.mark(device.id, False, self._clock.now(), reason)
                    self.stats.records += len(changes)
                    await self._sink.put(changes)


def _version_refused(error: MqttConnectError) -> bool:
    code = error.rc.value if isinstance(error.rc, ReasonCode) else error.rc
    return code in (paho.CONNACK_REFUSED_PROTOCOL_VERSION, 0x84)  # 3.1.1's code and 5's


def _unanswered(error: aiomqtt.MqttError) -> bool:
    # aiomqtt tells a missing CONNACK from other failures only by this message
    return type(error) is aiomqtt.MqttError and "timed out" in str(error)


def _hang_up(client: aiomqtt.Client) -> None:
    """End a connection whose CONNECT was not answered, which aiomqtt leaves open.

    Only our sending side is shut: a broker still waiting for the rest of a CONNECT it could
    not parse then reads its end, answers and closes, and paho closes ours when it reads that.
    (Closing both sides at once makes amqtt log a traceback when it answers.)
    """
    sock = client._client.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
    # a late answer lands in the CONNACK future aiomqtt set up for a next attempt, which
    # nobody awaits; take its exception so asyncio does not report it as never retrieved
    client._connected.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class _Received(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    mid: int


class _Inbox:
    """Takes one connection's messages from paho and hands them over in batches.

    This replaces aiomqtt's receive path, which costs more than mapping and storing a
    message: aiomqtt wraps every message in its own objects, queues it, and starts a task for
    each one read; and its socket reader has paho read one packet per turn of the event loop.
    Worse, a backlog of its messages keeps paho's MQTT 5 properties alive, some sixty objects a
    message that every full garbage collection walks. Here a message becomes one small tuple
    as paho hands it over, the reader reads every packet already received, and it stops
    reading while ``HIGH_WATER`` messages wait (the broker holds the rest, and TCP slows it
    down) until the backlog is under ``LOW_WATER`` again.

    aiomqtt still opens, watches and closes the connection; ``_disconnected`` is its future
    for the connection's end, which ends ``take`` as aiomqtt's own iterator would. While
    reading is stopped nothing else is read either (a PINGRESP, an UNSUBACK), so it is only
    stopped after the subscriptions are acknowledged, and the consumer never waits on a reply.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._paho: paho.Client = client._client
        self._loop = asyncio.get_running_loop()
        self._messages: deque[_Received] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._received = 0
        self._paho.on_message = self._on_message
        self._sock: socket.socket | None = None
        self._reading = False
        self._read_ahead = _ReadAhead(self._paho._sock_recv)

    def start(self) -> None:
        """Read the connected socket from now on. Until the subscriptions are acknowledged
        aiomqtt's reader reads it, which never stops: a backlog of a resumed session must not
        keep the SUBACK from being read."""
        sock = self._paho.socket()
        if isinstance(sock, socket.socket):
            self._sock = sock
            # paho reads by calling its own _sock_recv; an attribute of the instance comes first
            setattr(self._paho, "_sock_recv", self._read_ahead)  # noqa: B010
            self._loop.remove_reader(sock.fileno())
            self._loop.add_reader(sock.fileno(), self._read)
            self._reading = True

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        payload = message.payload
        if not isinstance(payload, bytes):
            payload = bytes(payload)
        self._messages.append(_Received(message.topic, payload, message.qos, message.mid))
        self._received += 1
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _open(self) -> bool:
        """Whether paho still has the socket this inbox reads (paho closes it on a failure)."""
        return self._paho.socket() is self._sock

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            for _ in range(READ_BURST):
                # a read that brought no message found the socket empty (or half a packet,
                # or a packet that is not a message): wait for the loop to say there is more,
                # unless bytes are read ahead or TLS has decrypted more already, which no
                # readiness event announces
                received = self._received
                self._paho.loop_read()
                if not self._open():
                    return
                if self._received == received and not self._unread(sock):
                    break
            else:
                if self._unread(sock):
                    self._loop.call_soon(self._read)
        except Exception as exc:
            # as aiomqtt's reader does: a failed read means the connection is gone
            if not self._client._disconnected.done():
                self._client._disconnected.set_exception(exc)
            return
        if len(self._messages) >= HIGH_WATER:
            self._loop.remove_reader(sock.fileno())
            self._reading = False

    def _unread(self, sock: socket.socket) -> bool:
        """Whether bytes received wait where no readiness event announces them."""
        return self._read_ahead.pending() or _decrypted(sock)

    async def take(self, limit: int) -> list[_Received]:
        """Up to ``limit`` messages, waiting for one; MqttError once the connection is gone
        and every message received before is taken."""
        disconnected = self._client._disconnected
        while not self._messages:
            if disconnected.done():
                cause = None if disconnected.cancelled() else disconnected.exception()
                raise aiomqtt.MqttError("Disconnected during message iteration") from cause
            self._waiter = self._loop.create_future()
            await asyncio.wait((self._waiter, disconnected), return_when=asyncio.FIRST_COMPLETED)
        messages = self._messages
        batch = [messages.popleft() for _ in range(min(limit, len(messages)))]
        if not self._reading and len(messages) < LOW_WATER and self._sock and self._open():
            self._loop.add_reader(self._sock.fileno(), self._read)
            self._loop.call_soon(self._read)  # bytes TLS decrypted before the pause
            self._reading = True
        return batch


class _ReadAhead:
    """paho's socket reads, served from one large read. paho reads a packet in three reads
    (its command byte, the length, the rest): three system calls per message, a third of its
    cost in reading a small one. This reads up to ``READ_AHEAD`` bytes at once and hands them
    out as paho asks; what it holds is announced by no readiness event, so the reader asks
    ``pending`` before it waits for one.

    Refills go through paho's own ``_sock_recv``, which turns TLS's want-read into the
    ``BlockingIOError`` paho expects; an empty read (the connection closed) is passed on."""

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv
        self._buffer = b""
        self._at = 0

    def __call__(self, size: int) -> bytes:
        buffer, at = self._buffer, self._at
        if at >= len(buffer):
            buffer = self._buffer = self._recv(READ_AHEAD)
            at = 0
        end = self._at = at + size
        return buffer if at == 0 and end >= len(buffer) else buffer[at:end]

    def pending(self) -> bool:
        return self._at < len(self._buffer)


def _decrypted(sock: socket.socket) -> bool:
    """Whether TLS holds bytes it has decrypted but paho has not read yet."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
