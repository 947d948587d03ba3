"""Counter deltas and when plans fall due: pure functions, hand-computed expectations."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.config import CalendarPlan, UsagePlan
from core.records import Reading
from core.store import PlanState
from rules.counters import counter_delta
from rules.plans import accumulate_usage, calendar_due, usage_due

LONDON = ZoneInfo("Europe/London")
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


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


def _state(**changes: object) -> PlanState:
    state = PlanState(plan_id="p", device_id="d", started=T0)
    for name, value in changes.items():
        setattr(state, name, value)
    return state


def _reading(raw: int | None, value: float, minutes: int, width: int | None = 16) -> Reading:
    return Reading(
        device_id="d",
        metric="m",
        value=value,
        ts=T0 + timedelta(minutes=minutes),
        raw=raw,
        width=width,
    )


def test_accumulate_usage_folds_wraps_into_usage() -> None:
    state = _state()
    readings = [_reading(65530, 65530, 0), _reading(65534, 65534, 1), _reading(2, 2, 2)]
    assert accumulate_usage(state, readings, scale=1.0) is True
    # the first reading only sets the baseline; then +4, then 65534 -> 2 wraps for +4
    assert state.first_value == 65530
    assert state.usage == 8
    assert state.last_raw == 2
    assert state.last_ts == T0 + timedelta(minutes=2)


def test_accumulate_usage_scales_raw_deltas() -> None:
    state = _state()
    readings = [_reading(182505, 18250.5, 0, 32), _reading(182530, 18253.0, 60, 32)]
    accumulate_usage(state, readings, scale=0.1)
    assert state.first_value == 18250.5
    assert state.usage == pytest.approx(2.5)
    assert state.last_raw == 182530


def test_accumulate_usage_continues_from_stored_state() -> None:
    state = _state(usage=40.0, first_value=100.0, last_raw=140.0)
    accumulate_usage(state, [_reading(None, 150.0, 5, None), _reading(None, 3.0, 6, None)], 1.0)
    # +10, then a drop with no width: a reset, the new value is the usage
    assert state.usage == 53.0
    assert state.first_value == 100.0


def test_accumulate_usage_without_readings_changes_nothing() -> None:
    state = _state(usage=5.0, last_raw=10.0)
    assert accumulate_usage(state, [], scale=1.0) is False
    assert (state.usage, state.last_raw, state.last_ts) == (5.0, 10.0, None)


SERVICE = UsagePlan(
    id="svc", name="Service", type="usage", metric="cycles_total", every=500, first_due=4500
)


def test_usage_not_due_before_any_reading() -> None:
    assert usage_due(SERVICE, _state(usage=10_000.0)) is None


@pytest.mark.parametrize(
    ("cycle", "usage", "due"),
    [
        # first reading 4490, first_due 4500: due after 10 units, not after every=500
        pytest.param(0, 9.0, False, id="first-due-not-yet"),
        pytest.param(0, 10.0, True, id="first-due-reached"),
        # after the first service, plain every
        pytest.param(1, 10.0, False, id="later-cycle-ignores-first-due"),
        pytest.param(1, 499.0, False, id="later-cycle-not-yet"),
        pytest.param(1, 500.0, True, id="later-cycle-due-at-every"),
    ],
)
def test_usage_due(cycle: int, usage: float, due: bool) -> None:
    state = _state(cycle=cycle, usage=usage, first_value=4490.0, last_raw=4490.0 + usage)
    result = usage_due(SERVICE, state)
    if not due:
        assert result is None
    else:
        assert result is not None
        assert (result.basis, result.due_at) == ("usage", None)
        assert result.detail == f"{usage:g} cycles_total since last service (due every 500)"


def test_first_due_value_is_the_configured_counter_value() -> None:
    # first reading 4490 + 10 units to go = 4500, the configured first_due
    due = usage_due(SERVICE, _state(usage=10.0, first_value=4490.0, last_raw=4500.0))
    assert due is not None
    assert due.due_value == 4500


def test_usage_due_without_first_due_uses_every() -> None:
    plan = SERVICE.model_copy(update={"first_due": None})
    assert usage_due(plan, _state(usage=499.0, first_value=4490.0, last_raw=4989.0)) is None
    due = usage_due(plan, _state(usage=500.0, first_value=4490.0, last_raw=4990.0))
    assert due is not None
    # first reading 4490 + every 500
    assert due.due_value == 4990


def test_usage_first_due_already_passed_is_due_at_once() -> None:
    state = _state(usage=0.0, first_value=4600.0, last_raw=4600.0)
    due = usage_due(SERVICE, state)
    assert due is not None
    assert due.due_value == 4500  # overdue since the configured point, not since first seen


def _calendar(every_days: int, start: date | None) -> CalendarPlan:
    return CalendarPlan(id="cal", name="Check", type="calendar", every_days=every_days, start=start)


@pytest.mark.parametrize(
    ("start", "every_days", "due_utc"),
    [
        # 2026-06-01 + 180 days = 2026-11-28, local midnight in GMT
        pytest.param(date(2026, 6, 1), 180, datetime(2026, 11, 28, 0, 0, tzinfo=UTC), id="winter"),
        # 2026-03-01 + 90 days = 2026-05-30; midnight BST is 23:00 UTC the day before
        pytest.param(date(2026, 3, 1), 90, datetime(2026, 5, 29, 23, 0, tzinfo=UTC), id="summer"),
    ],
)
def test_calendar_due_from_start_in_site_zone(
    start: date, every_days: int, due_utc: datetime
) -> None:
    plan = _calendar(every_days, start)
    state = _state()
    assert calendar_due(plan, state, due_utc - timedelta(seconds=1), LONDON) is None
    due = calendar_due(plan, state, due_utc, LONDON)
    assert due is not None
    assert due.basis == "calendar"
    assert due.due_at == due_utc
    assert due.due_value is None
    assert due.detail == (
        f"due every {every_days} days; due since {due_utc.astimezone(LONDON).date().isoformat()}"
    )


def test_calendar_due_from_last_completed() -> None:
    # completed 2026-07-15 15:30 London (BST, 14:30 UTC); 180 days on the site's calendar is
    # 2027-01-11 15:30 London (GMT), i.e. 15:30 UTC; the plan's start no longer counts
    plan = _calendar(180, date(2026, 6, 1))
    state = _state(last_completed=datetime(2026, 7, 15, 14, 30, tzinfo=UTC), cycle=1)
    due_at = datetime(2027, 1, 11, 15, 30, tzinfo=UTC)
    assert calendar_due(plan, state, datetime(2026, 11, 28, 12, 0, tzinfo=UTC), LONDON) is None
    assert calendar_due(plan, state, due_at - timedelta(seconds=1), LONDON) is None
    due = calendar_due(plan, state, due_at, LONDON)
    assert due is not None
    assert due.due_at == due_at


def test_calendar_due_without_start_counts_from_first_seen() -> None:
    plan = _calendar(7, None)
    state = _state()  # started at T0, 2026-11-23 09:00 UTC
    due_at = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    assert calendar_due(plan, state, due_at - timedelta(seconds=1), LONDON) is None
    due = calendar_due(plan, state, due_at + timedelta(days=3), LONDON)
    assert due is not None
    assert due.due_at == due_at
    assert due.detail == "due every 7 days; due since 2026-11-30"
