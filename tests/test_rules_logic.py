"""Counter deltas and the plan functions one by one (the engine that drives them is tested in
tests/test_rules_engine.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter

from core.config import Plan
from core.records import Reading
from rules.counters import counter_delta
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
