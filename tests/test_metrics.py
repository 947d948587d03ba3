"""/metrics text: every figure of a snapshot under its documented name, nothing invented for
parts that are not running in the process."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from equipwatch.metrics import Snapshot, render


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_a_collector_snapshot_renders_under_the_documented_names() -> None:
    snapshot = Snapshot(
        ready=True,
        messages=120,
        records=480,
        dead_letters={"bad_json": 2, "unknown_device": 1},
        polls={"ok": 50, "timeout": 3},
        writer_queue_depth=7,
        outbox_depth={"store": 10, "influx": 250},
        outbox_oldest_age={"store": 0.5, "influx": 31.0},
        outbox_dropped={"cap": 0, "age": 4},
        notifications={("email", "sent"): 3, ("webhook", "failed"): 1},
    )
    found = samples(render(snapshot))
    assert found[("equipwatch_ready", ())] == 1
    assert found[("equipwatch_messages_total", ())] == 120
    assert found[("equipwatch_records_total", ())] == 480
    assert found[("equipwatch_dead_letters_total", (("reason", "bad_json"),))] == 2
    assert found[("equipwatch_dead_letters_total", (("reason", "unknown_device"),))] == 1
    assert found[("equipwatch_polls_total", (("result", "timeout"),))] == 3
    assert found[("equipwatch_writer_queue_depth", ())] == 7
    assert found[("equipwatch_outbox_depth", (("consumer", "influx"),))] == 250
    assert found[("equipwatch_outbox_oldest_age_seconds", (("consumer", "influx"),))] == 31.0
    assert found[("equipwatch_outbox_dropped_total", (("reason", "age"),))] == 4
    key = ("equipwatch_notifications_total", (("channel", "webhook"), ("status", "failed")))
    assert found[key] == 1


def test_parts_not_running_here_are_left_out_not_reported_as_zero() -> None:
    found = samples(render(Snapshot(ready=False, rules_passes=12, leader=False)))
    names = {name for name, _ in found}
    assert names == {"equipwatch_ready", "equipwatch_leader", "equipwatch_rules_passes_total"}
    assert found[("equipwatch_ready", ())] == 0
    assert found[("equipwatch_leader", ())] == 0
