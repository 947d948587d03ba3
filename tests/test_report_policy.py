"""Report strategy: every sample, or changes beyond a deadband with a heartbeat."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from collector.base import OnDurable
from collector.report import ReportFilter
from core.config import Device
from core.records import DeadLetter, FaultEvent, Reading, Record

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


class Sink:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.durable: list[OnDurable | None] = []

    async def put(self, records: Sequence[Record], on_durable: OnDurable | None = None) -> None:
        self.records.extend(records)
        self.durable.append(on_durable)

    async def dead_letter(self, letter: DeadLetter, on_durable: OnDurable | None = None) -> None:
        raise AssertionError("no dead letters expected")


def fridge() -> Device:
    return Device.model_validate(
        {
            "id": "fridge-1",
            "kind": "vaccine_fridge",
            "source": {
                "protocol": "mqtt",
                "topic": "t/fridge-1",
                "fields": [
                    {"field": "temperature_c", "report": {"mode": "change", "deadband": 0.2,
                                                          "heartbeat": "5m"}},
                    {"field": "door_openings", "kind": "counter"},
                ],
            },
        }
    )  # fmt: skip


@pytest.mark.parametrize(
    ("samples", "kept"),
    [
        pytest.param([(0, 4.0), (10, 4.1), (20, 4.15), (30, 4.25)], [4.0, 4.25], id="inside-band"),
        pytest.param([(0, 4.0), (10, 4.3), (20, 4.0)], [4.0, 4.3, 4.0], id="each-change-kept"),
        pytest.param([(0, 4.0), (299, 4.0), (300, 4.0), (400, 4.0)], [4.0, 4.0], id="heartbeat"),
        pytest.param([(0, 4.0), (10, 4.15), (20, 4.3)], [4.0, 4.3], id="band-from-last-kept"),
    ],
)
async def test_a_deadband_metric_keeps_changes_and_heartbeats(
    samples: list[tuple[int, float]], kept: list[float]
) -> None:
    sink = Sink()
    report = ReportFilter([fridge()], sink)
    for second, value in samples:
        await report.put(
            [Reading("fridge-1", "temperature_c", value, T0 + timedelta(seconds=second))]
        )
    assert [r.value for r in sink.records if isinstance(r, Reading)] == kept
    assert report.suppressed == len(samples) - len(kept)


async def test_other_metrics_and_records_pass_untouched_with_their_callback() -> None:
    sink = Sink()
    report = ReportFilter([fridge()], sink)
    records: list[Record] = [
        Reading("fridge-1", "door_openings", 5, T0),
        Reading("fridge-1", "door_openings", 5, T0 + timedelta(seconds=1)),
        FaultEvent("fridge-1", "EXCURSION_HIGH", T0),
    ]

    def durable() -> None:
        pass

    await report.put(records, durable)
    assert sink.records == records
    assert sink.durable == [durable]  # the acknowledgement is passed on, filtered or not
