"""/metrics in the Prometheus text format, read from the running parts' own counters.

The counters live where they are counted (``CollectorStats``, ``MqttStats``, ``PollStats``,
the writer, the outbox, the rules engine); a scrape reads them all at once rather than every
increment also updating a second, global registry. The outbox's figures come from its SQLite
file, so they are read (asynchronously) before the text is rendered.

The names are part of the deployment contract (deploy/prometheus/alerts.yml alerts on them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["MetricSource", "Snapshot", "render"]


@dataclass
class Snapshot:
    """Every figure of one scrape; a part that is not running in this process leaves its
    figures out rather than reporting zeros that would look like a stalled part."""

    ready: bool = False
    leader: bool | None = None
    messages: int | None = None
    records: int | None = None
    dead_letters: dict[str, int] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    polls_late: int | None = None
    breakers_open: int | None = None
    mqtt_connected: bool | None = None
    mqtt_unacked: int | None = None
    writer_queue_depth: int | None = None
    writer_batches: int | None = None
    writer_failed_attempts: int | None = None
    outbox_depth: dict[str, int] = field(default_factory=dict)
    outbox_oldest_age: dict[str, float] = field(default_factory=dict)
    outbox_dropped: dict[str, int] = field(default_factory=dict)
    influx_points: int | None = None
    influx_dropped: dict[str, int] = field(default_factory=dict)
    rules_passes: int | None = None
    notifications: dict[tuple[str, str], int] = field(default_factory=dict)
    devices_online: dict[str, bool] = field(default_factory=dict)


MetricSource = Callable[[], Awaitable[Snapshot]]


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot
        yield _gauge("equipwatch_ready", "1 when /readyz answers ready", [((), int(s.ready))])
        if s.leader is not None:
            yield _gauge(
                "equipwatch_leader", "1 for the active rules engine", [((), int(s.leader))]
            )
        if s.messages is not None:
            yield _counter("equipwatch_messages", "Messages received", [((), s.messages)])
        if s.records is not None:
            yield _counter("equipwatch_records", "Records produced", [((), s.records)])
        if s.messages is not None or s.dead_letters:
            yield _counter(
                "equipwatch_dead_letters",
                "Messages that could not be mapped, by reason",
                [((reason,), count) for reason, count in sorted(s.dead_letters.items())],
                labels=("reason",),
            )
        if s.polls:
            yield _counter(
                "equipwatch_polls",
                "Modbus polls, by result (ok or the failure's reason)",
                [((result,), count) for result, count in sorted(s.polls.items())],
                labels=("result",),
            )
        if s.polls_late is not None:
            yield _counter("equipwatch_polls_late", "Polls started late", [((), s.polls_late)])
        if s.breakers_open is not None:
            yield _gauge(
                "equipwatch_breakers_open",
                "Modbus devices whose circuit breaker is open",
                [((), s.breakers_open)],
            )
        if s.mqtt_connected is not None:
            yield _gauge(
                "equipwatch_mqtt_connected",
                "1 while connected to the broker",
                [((), int(s.mqtt_connected))],
            )
        if s.mqtt_unacked is not None:
            yield _gauge(
                "equipwatch_mqtt_unacked",
                "QoS 1 messages received and not yet durable",
                [((), s.mqtt_unacked)],
            )
        if s.writer_queue_depth is not None:
            yield _gauge(
                "equipwatch_writer_queue_depth",
                "Messages or polls waiting for the writer",
                [((), s.writer_queue_depth)],
            )
        if s.writer_batches is not None:
            yield _counter(
                "equipwatch_writer_batches", "Batches committed", [((), s.writer_batches)]
            )
        if s.writer_failed_attempts is not None:
            yield _counter(
                "equipwatch_writer_failed_attempts",
                "Batch writes refused and retried",
                [((), s.writer_failed_attempts)],
            )
        if s.outbox_depth:
            yield _gauge(
                "equipwatch_outbox_depth",
                "Records in the outbox a destination has not taken yet",
                [((name,), depth) for name, depth in sorted(s.outbox_depth.items())],
                labels=("consumer",),
            )
            yield _gauge(
                "equipwatch_outbox_oldest_age_seconds",
                "Age of the oldest record a destination has not taken yet",
                [((name,), age) for name, age in sorted(s.outbox_oldest_age.items())],
                labels=("consumer",),
            )
            yield _counter(
                "equipwatch_outbox_dropped",
                "Records the outbox dropped at a cap, by reason (cap or age)",
                [((reason,), n) for reason, n in sorted(s.outbox_dropped.items())],
                labels=("reason",),
            )
        if s.influx_points is not None:
            yield _counter(
                "equipwatch_influx_points", "Points written to InfluxDB", [((), s.influx_points)]
            )
            yield _counter(
                "equipwatch_influx_dropped",
                "Points InfluxDB refused for good, by HTTP status",
                [((status,), n) for status, n in sorted(s.influx_dropped.items())],
                labels=("status",),
            )
        if s.rules_passes is not None:
            yield _counter(
                "equipwatch_rules_passes", "Rules evaluation passes", [((), s.rules_passes)]
            )
        if s.notifications:
            yield _counter(
                "equipwatch_notifications",
                "Notices by channel and outcome",
                [(key, n) for key, n in sorted(s.notifications.items())],
                labels=("channel", "status"),
            )
        if s.devices_online:
            yield _gauge(
                "equipwatch_device_online",
                "1 while a device reports, 0 once it counts as offline",
                [((device,), int(up)) for device, up in sorted(s.devices_online.items())],
                labels=("device",),
            )


def _counter(
    name: str,
    documentation: str,
    samples: Iterable[tuple[tuple[str, ...], float]],
    labels: tuple[str, ...] = (),
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _gauge(
    name: str,
    documentation: str,
    samples: Iterable[tuple[tuple[str, ...], float]],
    labels: tuple[str, ...] = (),
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def render(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)
