"""Counter deltas, the plan functions one by one, and the rules engine on a real SQLite store
with a clock that tests move."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter

from core.clock import ManualClock
from core.config import Plan, SiteConfig, parse_config
from core.records import FaultEvent, Reading
from core.store import SqliteStore
from rules.counters import counter_delta
from rules.engine import RulesEngine
from rules.meter import MeterState, forecast, observe_counter
from rules.plans import Basis, Status, assess, new_state

LONDON = ZoneInfo("Europe/London")
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
PLANS: TypeAdapter[Plan] = TypeAdapter(Plan)


@pytest.mark.parametrize(
    ("previous", "current", "width", "expected"),
    [
        pytest.param(100, 130, 16, 30, id="increase"),
        pytest.param(100, 100, 16, 0, id="unchanged"),
        pytest.param(10.5, 12.0, None, 1.5, id="fractional-increase"),
        pytest.param(65530, 4, 16, 10, id="uint16-wrap"),
        pytest.param(65535, 0, 16, 1, id="uint16-wrap-to-zero"),
        pytest.param(2**32 - 5, 10, 32, 15, id="uint32-wrap"),
        # 20 + 65536 - 30000 = 35556, more than half the range: not a wrap
        pytest.param(30000, 20, 16, 20, id="uint16-reset"),
        pytest.param(4_000_000, 7, 32, 7, id="uint32-reset"),
        # 0 + 65536 - 32769 = 32767 < 32768: wrap; from 32768 it is exactly half: reset
        pytest.param(32769, 0, 16, 32767, id="just-under-half-range-is-wrap"),
        pytest.param(32768, 0, 16, 0, id="exactly-half-range-is-reset"),
        pytest.param(65530, 4, None, 4, id="no-width-drop-is-reset"),
    ],
)
def test_counter_delta(previous: float, current: float, width: int | None, expected: float) -> None:
    assert counter_delta(previous, current, width) == expected


def _reading(raw: int | None, value: float, minutes: float, width: int | None = 16) -> Reading:
    return Reading("d", "m", value, T0 + timedelta(minutes=minutes), raw=raw, width=width)


def _fold(state: MeterState, readings: list[Reading], scale: float = 1.0) -> MeterState:
    for reading in readings:
        state = observe_counter(state, reading, scale)
    return state


def test_counter_readings_fold_wraps_into_usage() -> None:
    state = _fold(
        MeterState(), [_reading(65530, 65530, 0), _reading(65534, 65534, 1), _reading(2, 2, 2)]
    )
    # the first reading only sets the baseline; then +4, then 65534 -> 2 wraps for +4
    assert (state.first_value, state.usage, state.last_raw) == (65530, 8, 2)
    assert state.last_ts == T0 + timedelta(minutes=2)


def test_counter_deltas_are_scaled_from_raw_register_steps() -> None:
    readings = [_reading(182505, 18250.5, 0, 32), _reading(182530, 18253.0, 60, 32)]
    state = _fold(MeterState(), readings, scale=0.1)
    assert state.first_value == 18250.5
    assert state.usage == pytest.approx(2.5)  # (182530 - 182505) x 0.1
    assert state.last_raw == 182530


def test_counter_without_raw_value_drops_to_a_reset() -> None:
    start = MeterState(usage=40.0, first_value=100.0, last_raw=140.0, last_value=140.0, last_ts=T0)
    state = _fold(start, [_reading(None, 150.0, 5, None), _reading(None, 3.0, 6, None)])
    # +10, then a drop with no width: a reset, the new value is the usage
    assert state.usage == 53.0
    assert state.first_value == 100.0


def test_a_reading_not_newer_than_the_last_changes_nothing() -> None:
    state = _fold(MeterState(), [_reading(10, 10, 0), _reading(20, 20, 5)])
    assert observe_counter(state, _reading(20, 20, 5)) is state  # the same reading again
    assert observe_counter(state, _reading(15, 15, 3)) is state  # a late one


def test_rate_window_keeps_only_recent_days() -> None:
    # 1000 units in the first day, then 10 a day for 40 days: only the recent, slow days count
    readings = [_reading(0, 0, 0, 32), _reading(1000, 1000, 24 * 60, 32)]
    readings += [
        _reading(1000 + 10 * d, 1000 + 10 * d, (1 + d) * 24 * 60, 32) for d in range(1, 41)
    ]
    state = _fold(MeterState(), readings)
    # 5-day buckets from 2026-11-23 (UTC day 20780, a multiple of 5): the last reading, on day
    # 41, is in bucket 8 (days 40-44); buckets 3 to 8 are kept: days 15 to 41, 27 deltas of 10
    assert len(state.rate) == 6
    assert sum(bucket[1] for bucket in state.rate) == 270
    assert sum(bucket[2] for bucket in state.rate) == 27 * 86_400
    # 1400 used; 100 more to 1500 at 10 a day: 10 days after the last reading
    assert state.last_ts is not None
    assert forecast(state, 1500) == state.last_ts + timedelta(days=10)


SERVICE = PLANS.validate_python(
    {"id": "svc", "name": "Service", "type": "meter", "metric": "m", "every": 500,
     "first_due": 4500}
)  # fmt: skip


def test_meter_plan_without_readings_is_ok_and_says_so() -> None:
    status = assess(SERVICE, new_state(SERVICE, T0), T0, LONDON)
    assert (status.status, status.due_value) == (Status.OK, 4500)
    assert status.detail == "no reading of m yet (due every 500)"


@pytest.mark.parametrize(
    ("cycle", "usage", "expected"),
    [
        # first reading 4490, first_due 4500: due after 10 units, not after every=500
        pytest.param(0, 9.0, Status.OK, id="first-due-not-yet"),
        pytest.param(0, 10.0, Status.DUE, id="first-due-reached"),
        # after the first service, plain every
        pytest.param(1, 10.0, Status.OK, id="later-cycle-ignores-first-due"),
        pytest.param(1, 499.0, Status.OK, id="later-cycle-not-yet"),
        pytest.param(1, 500.0, Status.DUE, id="later-cycle-due-at-every"),
    ],
)
def test_meter_due(cycle: int, usage: float, expected: Status) -> None:
    state = MeterState(
        cycle=cycle, usage=usage, first_value=4490.0, last_raw=4490.0 + usage,
        last_value=4490.0 + usage, last_ts=T0,
    )  # fmt: skip
    status = assess(SERVICE, state, T0, LONDON)
    assert (status.status, status.basis, status.due_at, status.cycle) == (
        expected, Basis.METER, None, cycle,
    )  # fmt: skip
    assert status.detail == f"{usage:g} m since last service (due every 500)"


def test_calendar_due_from_start_in_site_zone() -> None:
    plan = PLANS.validate_python(
        {"id": "cal", "name": "Check", "type": "calendar", "every": "90 days",
         "start": "2026-03-01"}
    )  # fmt: skip
    state = new_state(plan, T0)
    # 2026-03-01 + 90 days = 2026-05-30; midnight BST is 23:00 UTC the day before
    due_at = datetime(2026, 5, 29, 23, 0, tzinfo=UTC)
    assert assess(plan, state, due_at - timedelta(seconds=1), LONDON).status is Status.OK
    status = assess(plan, state, due_at, LONDON)
    assert (status.status, status.due_at, status.due_value) == (Status.DUE, due_at, None)
    assert status.detail == "every 90 days (fixed); due 2026-05-30"


# --- the engine on a real SQLite store ------------------------------------------------------

SITE = """\
site: {name: Test practice, timezone: Europe/London}
kind_plans:
  autoclave:
    - {id: spore, name: Spore test, type: calendar, every: 1 week, start: 2026-11-16}
devices:
  - id: ac-1
    kind: autoclave
    location: Sterilisation room
    source:
      protocol: mqtt
      topic: clinic/ac-1
      fields:
        - {field: cycles, kind: counter, width: 16}
        - {field: temp_c}
        - {field: water_pct}
        - {field: faults, kind: fault}
    plans:
      - {id: service, name: Service, type: meter, metric: cycles, every: 100}
      - {id: too-hot, name: Too hot, type: condition, metric: temp_c, above: 140, for: 10m,
         hysteresis: 5, severity: critical}
      - {id: water, name: Water, type: supplies, metric: water_pct, below: 20, hysteresis: 30,
         item: Distilled water}
      - {id: door, name: Door trouble, type: fault, code: DOOR, count: 2, within: 1h}
"""


@pytest.fixture
def site() -> SiteConfig:
    return parse_config(SITE, "site.yaml")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "rules.sqlite") as opened:
        yield opened


# the engine's clock in the tests below, before the spore test falls due (2026-11-23 00:00)
BEFORE_SPORE_TEST = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _counter(raw: int, when: datetime) -> Reading:
    return Reading("ac-1", "cycles", float(raw), when, raw=raw, width=16)


async def test_engine_catches_up_after_a_week_down_with_one_due_item_and_one_notice(
    site: SiteConfig, store: SqliteStore
) -> None:
    clock = ManualClock(datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    await RulesEngine(site, store, clock).evaluate()
    assert await store.maintenance_due() == []
    # down for a week: the spore test fell due on 11-23 00:00 (GMT) meanwhile
    clock.set(datetime(2026, 11, 30, 9, 0, tzinfo=UTC))
    engine = RulesEngine(site, store, clock)  # a restarted engine, from stored state only
    for _ in range(3):
        await engine.evaluate()
        clock.advance(timedelta(hours=1))
    await RulesEngine(site, store, clock).evaluate()
    [due] = await store.maintenance_due()
    assert (due.plan_id, due.device_id, due.cycle, due.basis) == (
        "spore.ac-1",
        "ac-1",
        0,
        "calendar",
    )
    assert due.due_at == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    assert [n.subject for n in await store.notices()] == [
        "Maintenance due: Spore test on ac-1 (Sterilisation room)"
    ]


async def test_engine_counts_a_wrapping_counter_from_the_store(
    site: SiteConfig, store: SqliteStore
) -> None:
    clock = ManualClock(BEFORE_SPORE_TEST)
    engine = RulesEngine(site, store, clock)
    await store.write([_counter(65500, T0), _counter(65530, T0 + timedelta(minutes=10))])
    statuses = {s.plan_id: s for s in await engine.evaluate()}
    assert (statuses["service"].status, statuses["service"].usage) == (Status.OK, 30)
    # 65530 -> 70 wraps: 65536 - 65530 + 70 = 76, usage 106
    await store.write([_counter(70, T0 + timedelta(minutes=20))])
    await engine.evaluate()
    [due] = await store.maintenance_due()
    # the due point as the counter reads now: 70 - 106 + 100 = 64 (65600 - 65536)
    assert (due.plan_id, due.basis, due.due_value) == ("service", "meter", 64)
    stored = (await store.plan_documents())["service"]
    assert (stored["type"], stored["usage"], stored["last_raw"]) == ("meter", 106, 70)


async def test_engine_raises_and_clears_a_condition_alarm_and_records_the_occurrence(
    site: SiteConfig, store: SqliteStore
) -> None:
    clock = ManualClock(BEFORE_SPORE_TEST)
    engine = RulesEngine(site, store, clock)
    await engine.evaluate()
    minutes = [(0, 150.0), (5, 151.0), (10, 149.0)]  # above 140 from 0:00; at 0:10 it fires
    await store.write([Reading("ac-1", "temp_c", v, T0 + timedelta(minutes=m)) for m, v in minutes])
    await engine.evaluate()
    [alarm] = await store.alarms(active_only=True)
    assert (alarm.type, alarm.severity, alarm.first_seen) == (
        "condition:too-hot", "critical", T0 + timedelta(minutes=10),
    )  # fmt: skip
    [due] = await store.maintenance_due()
    assert (due.plan_id, due.basis, due.due_at) == ("too-hot", "condition", alarm.first_seen)
    await store.write([Reading("ac-1", "temp_c", 135.0, T0 + timedelta(minutes=20))])  # <= 135
    await engine.evaluate()
    assert await store.alarms(active_only=True) == []
    assert len(await store.maintenance_due()) == 1  # open until someone completes it


async def test_engine_supplies_and_fault_plans(site: SiteConfig, store: SqliteStore) -> None:
    clock = ManualClock(BEFORE_SPORE_TEST)
    engine = RulesEngine(site, store, clock)
    await engine.evaluate()
    await store.write(
        [
            Reading("ac-1", "water_pct", 25.0, T0),
            Reading("ac-1", "water_pct", 15.0, T0 + timedelta(minutes=1)),
            Reading("ac-1", "water_pct", 12.0, T0 + timedelta(minutes=2)),
            FaultEvent("ac-1", "DOOR", T0, True),
            FaultEvent("ac-1", "DOOR", T0 + timedelta(minutes=1), False),
        ]
    )
    await engine.evaluate()
    assert [(d.plan_id, d.basis) for d in await store.maintenance_due()] == [("water", "supplies")]
    # the second DOOR within the hour opens the corrective occurrence
    await store.write([FaultEvent("ac-1", "DOOR", T0 + timedelta(minutes=30), True)])
    await engine.evaluate()
    await engine.evaluate()
    assert [(d.plan_id, d.basis, d.cycle) for d in await store.maintenance_due()] == [
        ("water", "supplies", 0),
        ("door", "fault", 0),
    ]
    assert [n.subject for n in await store.notices()] == [
        "Reorder Distilled water: Water on ac-1 (Sterilisation room)",
        "Corrective maintenance: Door trouble on ac-1 (Sterilisation room)",
    ]
    assert [a.type for a in await store.alarms(active_only=True)] == ["fault:DOOR"]


async def test_a_stored_state_of_another_plan_type_is_logged_and_the_plan_starts_afresh(
    site: SiteConfig, store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    calendar_state = new_state(site.kind_plans["autoclave"][0], T0).to_json()
    await store.save_plan_document("service", "ac-1", 0, calendar_state)
    with caplog.at_level(logging.WARNING, logger="rules.engine"):
        await RulesEngine(site, store, ManualClock(T0)).evaluate()
    assert "plan 'service': stored state cannot be read" in caplog.text
    assert (await store.plan_documents())["service"]["type"] == "meter"
