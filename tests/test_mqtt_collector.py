"""The MQTT collector against a real Mosquitto: routing, dead letters, acknowledgements after the
commit, persistent sessions, shared subscriptions and the fall-back to MQTT 3.1.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from collector.base import CollectorStats, OnDurable
from collector.mqtt import PAYLOAD_KEEP, MqttCollector, parse_mqtt_url
from collector.writer import BatchWriter, StoreTarget
from core.clock import ManualClock
from core.config import MqttSettings, SiteConfig, parse_config
from core.records import DeadLetter, Reading, Record, StatusChange
from core.store import SqliteStore
from equipwatch.broker import embedded_broker
from tests.support import wait_for

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


class RecordingSink:
    """Keeps what the collector hands over. Reports it durable at once, or, with ``hold``, only
    when ``release`` is called, as a store whose commit is late would."""

    def __init__(self, *, hold: bool = False) -> None:
        self.records: list[Record] = []
        self.letters: list[DeadLetter] = []
        self.held: list[OnDurable] = []
        self.hold = hold

    async def put(self, records: Sequence[Record], on_durable: OnDurable | None = None) -> None:
        self.records += records
        self._durable(on_durable)

    async def dead_letter(self, letter: DeadLetter, on_durable: OnDurable | None = None) -> None:
        self.letters.append(letter)
        self._durable(on_durable)

    def _durable(self, on_durable: OnDurable | None) -> None:
        if on_durable is not None:
            if self.hold:
                self.held.append(on_durable)
            else:
                on_durable()

    def release(self) -> None:
        held, self.held = self.held, []
        for on_durable in held:
            on_durable()

    def readings(self, metric: str | None = None) -> list[Reading]:
        return [
            r
            for r in self.records
            if isinstance(r, Reading) and (metric is None or r.metric == metric)
        ]


def site(prefix: str, devices: str, *, templates: str = "") -> SiteConfig:
    """A site whose topics live under the test's own prefix."""
    text = f"mqtt:\n  subscriptions:\n{templates}\n" if templates else ""
    return parse_config((text + "devices:\n" + devices).replace("PREFIX", prefix), "site.yaml")


def settings(url: str, client_id: str, config: SiteConfig, **changes: object) -> MqttSettings:
    return config.mqtt.model_copy(update={"url": url, "client_id": client_id, **changes})


@contextlib.asynccontextmanager
async def running(collector: MqttCollector) -> AsyncIterator[MqttCollector]:
    """The collector, connected and subscribed; stopped (and its failure raised) at the end."""
    task = asyncio.create_task(collector.run(), name="test.collector")
    try:
        waiter = asyncio.create_task(collector.connected.wait())
        await asyncio.wait({task, waiter}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()
        assert collector.connected.is_set(), "the collector did not connect"
        yield collector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def publish(url: str, messages: Sequence[tuple[str, bytes]], *, qos: int = 1) -> None:
    host, port, _ = parse_mqtt_url(url)
    async with aiomqtt.Client(host, port, identifier="test-publisher") as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=qos)


FRIDGE = """\
  - id: fridge-1
    kind: vaccine_fridge
    source:
      protocol: mqtt
      topic: PREFIX/fridge-1/telemetry
      timestamp_field: ts
      fields:
        - {field: temperature_c, minimum: -30, maximum: 60}
        - {field: door_openings, kind: counter, width: 32}
"""
TELEMETRY_TEMPLATE = '    - topic: "PREFIX/{site}/devices/{device_id}/telemetry"\n'

MALFORMED = [
    ("fridge-1/telemetry", b'{"ts": 1795420800000, "temperature_c": 4', "bad_json"),
    ("fridge-1/telemetry", b'["not", "an", "object"]', "not_an_object"),
    ("fridge-1/telemetry", b'{"ts": 1795420800000, "temperature_c": 4.5}', "missing_field"),
    (
        "fridge-1/telemetry",
        b'{"ts": 1795420800000, "temperature_c": "cold", "door_openings": 3}',
        "wrong_type",
    ),
    (
        "fridge-1/telemetry",
        b'{"ts": 1795420800000, "temperature_c": 85.0, "door_openings": 3}',
        "out_of_range",
    ),
    (
        "fridge-1/telemetry",
        b'{"ts": "last Tuesday", "temperature_c": 4.5, "door_openings": 3}',
        "bad_timestamp",
    ),
    ("riverside/devices/xray-7/telemetry", b'{"ts": 1795420800000}', "unknown_device"),
    ("fridge-1/telemetry", b'{"padding": "' + b"x" * 2000 + b'"}', "missing_field"),
]


async def test_malformed_payloads_are_dead_lettered_and_collection_goes_on(
    mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    config = site(topic_prefix, FRIDGE, templates=TELEMETRY_TEMPLATE)
    stats = CollectorStats()
    async with SqliteStore(tmp_path / "site.sqlite") as store:
        writer = BatchWriter(StoreTarget(store), batch_size=50, flush_interval=0.05)
        collector = MqttCollector(
            config.devices,
            settings=settings(mqtt_url, f"{topic_prefix}-collector", config),
            sink=writer,
            clock=ManualClock(NOW),
            stats=stats,
        )
        writing = asyncio.create_task(writer.run())
        try:
            async with running(collector):
                good = b'{"ts": 1795420860000, "temperature_c": 4.5, "door_openings": 3}'
                await publish(
                    mqtt_url,
                    [(f"{topic_prefix}/{topic}", payload) for topic, payload, _ in MALFORMED]
                    + [(f"{topic_prefix}/fridge-1/telemetry", good)],
                )

                async def stored() -> bool:
                    found = await store.readings_after("fridge-1", "temperature_c", None)
                    return bool(found)

                await wait_for(stored, timeout=10, what="the good message after the bad ones")
        finally:
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writing
        letters = list(reversed(await store.dead_letters()))

    assert [(letter.topic, letter.reason) for letter in letters] == [
        (f"{topic_prefix}/{topic}", reason) for topic, _, reason in MALFORMED
    ]
    for letter, (_, payload, _) in zip(letters, MALFORMED, strict=True):
        assert letter.source == "mqtt"
        assert letter.ts == NOW
        assert letter.payload == payload[:PAYLOAD_KEEP].decode()
        assert letter.detail
    assert len(letters[-1].payload) == PAYLOAD_KEEP  # a long payload is cut
    expected = {reason for _, _, reason in MALFORMED}
    assert dict(stats.dead_letters) == {
        reason: sum(r == reason for _, _, r in MALFORMED) for reason in expected
    }
    assert stats.messages == len(MALFORMED) + 1
    assert collector.mqtt_stats.acks_sent == len(MALFORMED) + 1


TEMPLATED = """\
  - id: fridge-1
    kind: vaccine_fridge
    source:
      protocol: mqtt
      timestamp_field: ts
      expected_interval: 200ms
      fields:
        - {field: temperature_c, minimum: -30, maximum: 60}
        - {field: door_openings, kind: counter, width: 32}
  - id: fridge-2
    kind: vaccine_fridge
    source:
      protocol: mqtt
      timestamp_field: ts
      fields:
        - {field: temperature_c}
        - {field: door_openings, kind: counter, width: 32}
  - id: autoclave-1
    kind: autoclave
    source:
      protocol: mqtt
      topic: PREFIX/legacy/autoclave-1
      fields:
        - {field: chamber_temp_c}
"""
TEMPLATES = (
    TELEMETRY_TEMPLATE
    + '    - topic: "PREFIX/{site}/devices/{device_id}/channels/{channel}"\n'
    + '    - {topic: "PREFIX/{site}/devices/{device_id}/status", status: true}\n'
)


async def test_templates_map_topics_to_devices_and_channels(
    mqtt_url: str, topic_prefix: str
) -> None:
    config = site(topic_prefix, TEMPLATED, templates=TEMPLATES)
    sink = RecordingSink()
    collector = MqttCollector(
        config.devices,
        settings=settings(mqtt_url, f"{topic_prefix}-collector", config),
        sink=sink,
        clock=ManualClock(NOW),
    )
    p = topic_prefix
    async with running(collector):
        await publish(
            mqtt_url,
            [
                (
                    f"{p}/riverside/devices/fridge-1/telemetry",
                    b'{"ts": 1795424400000, "temperature_c": 4.5, "door_openings": 12}',
                ),
                (
                    f"{p}/north/devices/fridge-2/telemetry",
                    b'{"ts": 1795424400000, "temperature_c": 6.0, "door_openings": 3}',
                ),
                (f"{p}/riverside/devices/fridge-2/channels/temperature_c", b"6.5"),
                (f"{p}/riverside/devices/fridge-2/channels/door_openings", b"4"),
                (f"{p}/legacy/autoclave-1", b'{"chamber_temp_c": 134.2}'),
                (f"{p}/riverside/devices/fridge-2/status", b"offline"),
            ],
        )

        async def all_there() -> bool:
            return len(sink.readings()) == 7 and len(sink.records) >= 10

        await wait_for(all_there, timeout=10, what="every reading and status change")
        # the fridge that fell silent goes offline after three expected intervals (200 ms)

        async def fridge_1_offline() -> bool:
            return any(
                isinstance(r, StatusChange) and r.device_id == "fridge-1" and not r.online
                for r in sink.records
            )

        await wait_for(fridge_1_offline, timeout=10, what="fridge-1 marked offline")

    values = {(r.device_id, r.metric): r.value for r in sink.readings() if r.ts == NOW}
    assert values == {
        ("fridge-2", "temperature_c"): 6.5,
        ("fridge-2", "door_openings"): 4,
        ("autoclave-1", "chamber_temp_c"): 134.2,
    }
    stamped = {(r.device_id, r.metric): r.value for r in sink.readings() if r.ts != NOW}
    assert stamped == {
        ("fridge-1", "temperature_c"): 4.5,
        ("fridge-1", "door_openings"): 12,
        ("fridge-2", "temperature_c"): 6.0,
        ("fridge-2", "door_openings"): 3,
    }
    statuses = [
        (r.device_id, r.online, r.reason) for r in sink.records if isinstance(r, StatusChange)
    ]
    assert statuses[:4] == [
        ("fridge-1", True, "data received"),
        ("fridge-2", True, "data received"),
        ("autoclave-1", True, "data received"),
        ("fridge-2", False, "status: offline"),
    ]
    assert statuses[4][:2] == ("fridge-1", False)
    assert statuses[4][2].startswith("no data for")
    assert sink.letters == []


async def test_a_message_is_acknowledged_only_once_durable(
    mqtt_url: str, topic_prefix: str
) -> None:
    """Until the sink reports the commit, the broker keeps the message for the session and
    delivers it again to the next connection; afterwards it does not."""
    config = site(topic_prefix, FRIDGE)
    topic = f"{topic_prefix}/fridge-1/telemetry"
    client_id = f"{topic_prefix}-collector"

    def message(minute: int) -> tuple[str, bytes]:
        ts = 1795420800000 + minute * 60_000
        return topic, b'{"ts": %d, "temperature_c": 4.5, "door_openings": 1}' % ts

    held = RecordingSink(hold=True)
    first = MqttCollector(
        config.devices,
        settings=settings(mqtt_url, client_id, config),
        sink=held,
        clock=ManualClock(NOW),
    )
    async with running(first):
        await publish(mqtt_url, [message(1), message(2), message(3)])

        async def three_held() -> bool:
            return len(held.held) > 0 and len(held.readings("temperature_c")) == 3

        await wait_for(three_held, timeout=10, what="three messages received, none durable")
        assert first.mqtt_stats.unacked == 3
        assert first.mqtt_stats.acks_sent == 0
    # durable only now, after that connection ended: the acknowledgement must not go out
    held.release()
    assert first.mqtt_stats.acks_sent == 0
    assert first.mqtt_stats.acks_dropped == 3

    again = RecordingSink()
    second = MqttCollector(
        config.devices,
        settings=settings(mqtt_url, client_id, config),
        sink=again,
        clock=ManualClock(NOW),
    )
    async with running(second):

        async def redelivered() -> bool:
            return len(again.readings("temperature_c")) == 3

        await wait_for(redelivered, timeout=10, what="the three messages delivered again")
        assert second.mqtt_stats.acks_sent == 3
        assert second.mqtt_stats.unacked == 0

    last = RecordingSink()
    third = MqttCollector(
        config.devices,
        settings=settings(mqtt_url, client_id, config),
        sink=last,
        clock=ManualClock(NOW),
    )
    async with running(third):
        await publish(mqtt_url, [message(4)])

        async def marker() -> bool:
            return len(last.readings("temperature_c")) >= 1

        await wait_for(marker, timeout=10, what="the next message")
    # acknowledged messages are not delivered a third time: only the new one arrives
    assert [r.ts.minute for r in last.readings("temperature_c")] == [4]


async def test_shared_subscription_splits_one_stream(mqtt_url: str, topic_prefix: str) -> None:
    config = site(topic_prefix, FRIDGE)
    sinks = [RecordingSink(), RecordingSink()]
    collectors = [
        MqttCollector(
            config.devices,
            settings=settings(
                mqtt_url, f"{topic_prefix}-{index}", config, shared_group="collectors"
            ),
            sink=sink,
            clock=ManualClock(NOW),
        )
        for index, sink in enumerate(sinks)
    ]
    count = 200
    async with running(collectors[0]), running(collectors[1]):
        await publish(
            mqtt_url,
            [
                (
                    f"{topic_prefix}/fridge-1/telemetry",
                    b'{"ts": %d, "temperature_c": 4.5, "door_openings": %d}'
                    % (1795420800000 + index, index),
                )
                for index in range(count)
            ],
        )

        async def all_taken() -> bool:
            return sum(len(s.readings("door_openings")) for s in sinks) >= count

        await wait_for(all_taken, timeout=15, what="every message taken by one collector")
    taken = [[int(r.value) for r in s.readings("door_openings")] for s in sinks]
    assert sorted(taken[0] + taken[1]) == list(range(count)), "a message was stored twice"
    assert taken[0]
    assert taken[1], "one collector took the whole stream"


async def test_a_session_left_subscribed_to_old_topics_drops_and_unsubscribes_them(
    mqtt_url: str, topic_prefix: str
) -> None:
    """A persistent session keeps the subscriptions of the configuration it was made with;
    after the configuration changes, messages on the old topics are no dead letters."""
    client_id = f"{topic_prefix}-collector"
    before = site(topic_prefix, FRIDGE)
    old = MqttCollector(
        before.devices,
        settings=settings(mqtt_url, client_id, before),
        sink=RecordingSink(),
        clock=ManualClock(NOW),
    )
    async with running(old):
        pass
    after = site(topic_prefix, FRIDGE.replace("fridge-1/telemetry", "fridge-1/v2"))
    sink = RecordingSink()
    new = MqttCollector(
        after.devices,
        settings=settings(mqtt_url, client_id, after),
        sink=sink,
        clock=ManualClock(NOW),
    )
    good = b'{"ts": 1795420800000, "temperature_c": 4.5, "door_openings": 1}'
    async with running(new):
        await publish(mqtt_url, [(f"{topic_prefix}/fridge-1/telemetry", good)])

        async def unsubscribed() -> bool:
            return new.mqtt_stats.unsubscribed == 1

        await wait_for(unsubscribed, timeout=10, what="the old topic unsubscribed")
        assert new.mqtt_stats.strays == 1
        await publish(
            mqtt_url,
            [(f"{topic_prefix}/fridge-1/telemetry", good), (f"{topic_prefix}/fridge-1/v2", good)],
        )

        async def current() -> bool:
            return bool(sink.readings())

        await wait_for(current, timeout=10, what="the message on the current topic")
    assert new.mqtt_stats.strays == 1, "the old topic was not unsubscribed"
    assert sink.letters == []
    assert new.mqtt_stats.acks_sent == 2


async def test_a_broker_without_mqtt_5_gets_3_1_1(topic_prefix: str) -> None:
    """The demo's embedded broker (amqtt) speaks only 3.1.1."""
    config = site(topic_prefix, FRIDGE)
    sink = RecordingSink()
    async with embedded_broker() as url:
        collector = MqttCollector(
            config.devices,
            settings=settings(url, "collector", config),
            sink=sink,
            clock=ManualClock(NOW),
        )
        async with running(collector):
            assert collector.mqtt_stats.version == "3.1.1"
            await publish(
                url,
                [
                    (
                        f"{topic_prefix}/fridge-1/telemetry",
                        b'{"ts": 1795420800000, "temperature_c": 4.5, "door_openings": 1}',
                    )
                ],
            )

            async def received() -> bool:
                return bool(sink.readings())

            await wait_for(received, timeout=10, what="a message through the 3.1.1 session")
            assert collector.mqtt_stats.acks_sent == 1


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_the_configured_protocol_is_used(
    mqtt_url: str, topic_prefix: str, protocol: str
) -> None:
    config = site(topic_prefix, FRIDGE)
    collector = MqttCollector(
        config.devices,
        settings=settings(mqtt_url, f"{topic_prefix}-c", config, protocol=protocol),
        sink=RecordingSink(),
        clock=ManualClock(NOW),
    )
    async with running(collector):
        assert collector.mqtt_stats.version == protocol


@pytest.mark.parametrize("qos", [0, 2])
async def test_other_qos_levels_deliver(mqtt_url: str, topic_prefix: str, qos: int) -> None:
    """QoS 0 needs no acknowledgement; at QoS 2 the acknowledgement after the commit is the
    PUBCOMP (the PUBREC went out on receipt, see MqttSettings.qos)."""
    config = site(topic_prefix, FRIDGE)
    sink = RecordingSink()
    collector = MqttCollector(
        config.devices,
        settings=settings(mqtt_url, f"{topic_prefix}-c", config, qos=qos),
        sink=sink,
        clock=ManualClock(NOW),
    )
    async with running(collector):
        await publish(
            mqtt_url,
            [
                (
                    f"{topic_prefix}/fridge-1/telemetry",
                    b'{"ts": 1795424400000, "temperature_c": 4.5, "door_openings": 1}',
                )
            ],
            qos=qos,
        )

        async def received() -> bool:
            return bool(sink.readings())

        await wait_for(received, timeout=10, what="the message")
        assert collector.mqtt_stats.acks_sent == (1 if qos else 0)
        assert collector.mqtt_stats.unacked == 0
