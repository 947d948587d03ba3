"""Preventive-maintenance plans as pure functions of a plan, its state and the time.

The engine keeps one state per plan (stored as JSON, see ``to_json``/``state_from_json``) and
calls four functions:

- ``new_state(plan, now)``: the state of a plan seen for the first time;
- ``observe(plan, state, record)``: fold one new reading or fault event in (incremental);
- ``assess(plan, state, now, zone)``: where the plan stands, as a ``PlanStatus``;
- ``complete(plan, state, at, counters, zone)``: the state after the work was done.

Nothing here reads a clock or remembers "the last tick": ``assess`` works everything out from
the stored state and ``now``, so calling it twice, or once after a week of downtime, gives the
same single occurrence. Each occurrence is named by (plan id, ``cycle``), ``cycle`` being the
number of occurrences completed before it; the engine records an occurrence once per key.

Statuses, by plan type:

- calendar: ``upcoming`` from ``lead`` before the due day, ``due`` from the start of the due
  day (site time), ``overdue`` from ``grace`` after it, or without a grace from the next due
  date (when a second occurrence would otherwise have begun);
- meter: the same in units of usage: ``upcoming`` ``lead`` units before the due point,
  ``overdue`` ``grace`` units past it, or without a grace once a whole further interval is used;
- whichever first: the worse of its two parts (``basis`` says which: calendar, meter, or both
  when they stand equal);
- condition, fault, supplies: ``due`` while an occurrence is open, else ``ok``; never overdue,
  since they have no due point.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from core.config import (
    CalendarPlan,
    CalendarSchedule,
    ConditionPlan,
    FaultPlan,
    MeterPlan,
    MeterSchedule,
    Plan,
    SuppliesPlan,
    WhicheverFirstPlan,
)
from core.errors import InvalidRecord
from core.records import FaultEvent, Reading
from rules.calendar import CalendarState, calendar_times, complete_calendar, local_start
from rules.conditions import FaultState, ThresholdState, observe_fault, observe_threshold
from rules.meter import MeterState, complete_meter, forecast, meter_point, observe_counter
from rules.states import STATE_VERSION, check_header

__all__ = [
    "Basis",
    "CalendarState",
    "FaultState",
    "MeterState",
    "PlanStatus",
    "State",
    "Status",
    "ThresholdState",
    "WhicheverFirstState",
    "assess",
    "complete",
    "new_state",
    "observe",
    "observe_many",
    "state_from_json",
]


class Status(StrEnum):
    OK = "ok"
    UPCOMING = "upcoming"
    DUE = "due"
    OVERDUE = "overdue"


_RANK = {Status.OK: 0, Status.UPCOMING: 1, Status.DUE: 2, Status.OVERDUE: 3}


class Basis(StrEnum):
    """What a status was decided on."""

    CALENDAR = "calendar"
    METER = "meter"
    BOTH = "both"
    CONDITION = "condition"
    FAULT = "fault"
    SUPPLIES = "supplies"


@dataclass(frozen=True, slots=True)
class WhicheverFirstState:
    """A whichever-first plan's two parts; one completion serves both, so they share cycles."""

    calendar: CalendarState
    meter: MeterState

    @property
    def cycle(self) -> int:
        return self.calendar.cycle

    def to_json(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "type": "whichever_first",
            "calendar": self.calendar.to_json(),
            "meter": self.meter.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WhicheverFirstState:
        check_header(data, "whichever_first")
        return cls(CalendarState.from_json(data["calendar"]), MeterState.from_json(data["meter"]))


State = CalendarState | MeterState | WhicheverFirstState | ThresholdState | FaultState


@dataclass(frozen=True, slots=True)
class PlanStatus:
    """Where one plan stands at one moment: what the engine needs to record an occurrence,
    send an upcoming or overdue notice, or show a forecast.

    ``cycle`` names the occurrence this status is about: the one open or falling due, or for
    an event plan with nothing open, the next one. ``due_at``/``upcoming_at``/``overdue_at``
    are calendar times (for event plans ``due_at`` is when it fired); ``due_value`` the counter
    value at which a meter plan falls due and ``usage`` the units counted since the last
    service; ``forecast_at`` when the meter will reach its due point at the recent rate.
    ``active`` is True while a condition or supplies plan is fired and not yet re-armed.
    """

    plan_id: str
    status: Status
    basis: Basis
    cycle: int
    detail: str
    due_at: datetime | None = None
    due_value: float | None = None
    usage: float | None = None
    upcoming_at: datetime | None = None
    overdue_at: datetime | None = None
    forecast_at: datetime | None = None
    fired_at: datetime | None = None
    rearmed_at: datetime | None = None
    active: bool = False
    repeats: int = 0

    @property
    def key(self) -> tuple[str, int]:
        """The occurrence's identity: record it, notify about it, once per key."""
        return (self.plan_id, self.cycle)

    @property
    def upcoming(self) -> bool:
        """Inside the lead time, not yet due."""
        return self.status is Status.UPCOMING

    @property
    def needs_action(self) -> bool:
        return self.status is Status.DUE or self.status is Status.OVERDUE


# --- new, observe ----------------------------------------------------------------------


def new_state(plan: Plan, now: datetime) -> State:
    """The state of a plan first seen at ``now`` (a calendar plan without ``start`` counts
    from that day)."""
    if isinstance(plan, CalendarPlan):
        return CalendarState(started=now)
    if isinstance(plan, MeterPlan):
        return MeterState()
    if isinstance(plan, WhicheverFirstPlan):
        return WhicheverFirstState(CalendarState(started=now), MeterState())
    if isinstance(plan, ConditionPlan | SuppliesPlan):
        return ThresholdState(type=plan.type)
    return FaultState()


def observe(plan: Plan, state: State, record: Reading | FaultEvent, scale: float = 1.0) -> State:
    """``state`` with one new record folded in; the same object when the record does not
    concern the plan (another metric, a calendar plan) or was folded before. ``scale`` is
    the channel's scale, which turns a counter's raw register steps into its units."""
    _check_pair(plan, state)
    if isinstance(record, FaultEvent):
        if isinstance(plan, FaultPlan) and isinstance(state, FaultState):
            return observe_fault(
                state, record, codes=plan.fault_codes, count=plan.count, within=plan.within
            )
        return state
    if isinstance(plan, MeterPlan) and isinstance(state, MeterState):
        if record.metric != plan.metric:
            return state
        return observe_counter(state, record, scale)
    if isinstance(plan, WhicheverFirstPlan) and isinstance(state, WhicheverFirstState):
        if record.metric != plan.meter.metric:
            return state
        meter = observe_counter(state.meter, record, scale)
        return state if meter is state.meter else replace(state, meter=meter)
    if isinstance(plan, ConditionPlan) and isinstance(state, ThresholdState):
        if record.metric != plan.metric:
            return state
        return observe_threshold(
            state, record, threshold=plan.threshold, rising=plan.above is not None,
            duration=plan.duration, hysteresis=plan.hysteresis, close_on_rearm=False,
        )  # fmt: skip
    if isinstance(plan, SuppliesPlan) and isinstance(state, ThresholdState):
        if record.metric != plan.metric:
            return state
        return observe_threshold(
            state, record, threshold=plan.below, rising=False, duration=0.0,
            hysteresis=plan.hysteresis, close_on_rearm=True,
        )  # fmt: skip
    return state  # calendar and fault plans learn nothing from readings


def observe_many(
    plan: Plan, state: State, records: Iterable[Reading | FaultEvent], scale: float = 1.0
) -> State:
    """Fold records in, oldest first; the same as folding them one ``observe`` at a time."""
    for record in records:
        state = observe(plan, state, record, scale)
    return state


_STATE_OF: dict[str, type[State]] = {
    "calendar": CalendarState,
    "meter": MeterState,
    "whichever_first": WhicheverFirstState,
    "condition": ThresholdState,
    "supplies": ThresholdState,
    "fault": FaultState,
}


def _check_pair(plan: Plan, state: State) -> None:
    """A state handed to another plan type's logic is a bug in the caller, not bad data."""
    if type(state) is not _STATE_OF[plan.type] or (
        isinstance(state, ThresholdState) and state.type != plan.type
    ):
        raise TypeError(f"plan {plan.id!r} ({plan.type}) was given a {type(state).__name__}")


# --- assess ---------------------------------------------------------------------------


def assess(plan: Plan, state: State, now: datetime, zone: ZoneInfo) -> PlanStatus:
    """Where ``plan`` stands at ``now``, from its state alone (``zone``: the site's)."""
    if isinstance(plan, CalendarPlan) and isinstance(state, CalendarState):
        return _assess_calendar(plan, plan.id, state, now, zone)
    if isinstance(plan, MeterPlan) and isinstance(state, MeterState):
        return _assess_meter(plan, plan.id, state)
    if isinstance(plan, WhicheverFirstPlan) and isinstance(state, WhicheverFirstState):
        return _assess_whichever(plan, state, now, zone)
    if isinstance(plan, ConditionPlan | SuppliesPlan) and isinstance(state, ThresholdState):
        return _assess_threshold(plan, state)
    if isinstance(plan, FaultPlan) and isinstance(state, FaultState):
        return _assess_fault(plan, state)
    _check_pair(plan, state)
    raise AssertionError("unreachable: _check_pair raises for every other pair")


def _assess_calendar(
    schedule: CalendarSchedule, plan_id: str, state: CalendarState, now: datetime, zone: ZoneInfo
) -> PlanStatus:
    times = calendar_times(schedule, state, zone)
    due_at = local_start(times.due, zone)
    overdue_at = local_start(times.overdue_from, zone)
    upcoming_at = None if times.upcoming_from is None else local_start(times.upcoming_from, zone)
    if now >= overdue_at:
        status = Status.OVERDUE
    elif now >= due_at:
        status = Status.DUE
    elif upcoming_at is not None and now >= upcoming_at:
        status = Status.UPCOMING
    else:
        status = Status.OK
    detail = f"every {schedule.every} ({schedule.mode}); due {times.due.isoformat()}"
    return PlanStatus(
        plan_id, status, Basis.CALENDAR, state.cycle, detail, due_at=due_at,
        upcoming_at=upcoming_at, overdue_at=overdue_at,
    )  # fmt: skip


def _assess_meter(schedule: MeterSchedule, plan_id: str, state: MeterState) -> PlanStatus:
    point = meter_point(schedule, state)
    target = point.target
    if target is None or state.last_ts is None:
        return PlanStatus(
            plan_id, Status.OK, Basis.METER, state.cycle,
            f"no reading of {schedule.metric} yet (due every {schedule.every:g})",
            due_value=point.due_value,
        )  # fmt: skip
    usage = state.usage
    if point.overdue_from is not None and usage >= point.overdue_from:
        status = Status.OVERDUE
    elif usage >= target:
        status = Status.DUE
    elif point.upcoming_from is not None and usage >= point.upcoming_from:
        status = Status.UPCOMING
    else:
        status = Status.OK
    detail = (
        f"{max(usage, 0.0):g} {schedule.metric} since last service (due every {schedule.every:g})"
    )
    return PlanStatus(
        plan_id, status, Basis.METER, state.cycle, detail, due_value=point.due_value,
        usage=usage, forecast_at=forecast(state, target),
    )  # fmt: skip


def _assess_whichever(
    plan: WhicheverFirstPlan, state: WhicheverFirstState, now: datetime, zone: ZoneInfo
) -> PlanStatus:
    calendar = _assess_calendar(plan.calendar, plan.id, state.calendar, now, zone)
    meter = _assess_meter(plan.meter, plan.id, state.meter)
    by_calendar, by_meter = _RANK[calendar.status], _RANK[meter.status]
    if by_calendar == by_meter:
        basis = Basis.BOTH
    else:
        basis = Basis.CALENDAR if by_calendar > by_meter else Basis.METER
    return PlanStatus(
        plan.id, max(calendar.status, meter.status, key=_RANK.__getitem__), basis, state.cycle,
        f"{calendar.detail}; or {meter.detail}", due_at=calendar.due_at,
        due_value=meter.due_value, usage=meter.usage, upcoming_at=calendar.upcoming_at,
        overdue_at=calendar.overdue_at, forecast_at=meter.forecast_at,
    )  # fmt: skip


def _minutes(seconds: float) -> str:
    if seconds % 3600 == 0 and seconds:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min"


def _assess_threshold(plan: ConditionPlan | SuppliesPlan, state: ThresholdState) -> PlanStatus:
    if isinstance(plan, ConditionPlan):
        side = "above" if plan.above is not None else "below"
        rule = f"{plan.metric} {side} {plan.threshold:g} for {_minutes(plan.duration)}"
        basis = Basis.CONDITION
    else:
        rule = f"{plan.item}: {plan.metric} below {plan.below:g}"
        basis = Basis.SUPPLIES
    if state.open:
        fired = state.fired_at.isoformat() if state.fired_at is not None else "?"
        detail = f"{rule}; fired {fired}"
        if state.repeats:
            detail += f", again {state.repeats} time(s) since"
    else:
        detail = f"{rule}; armed" if state.armed else f"{rule}; waiting to re-arm"
    return PlanStatus(
        plan.id, Status.DUE if state.open else Status.OK, basis, state.cycle, detail,
        due_at=state.fired_at if state.open else None, fired_at=state.fired_at,
        rearmed_at=state.rearmed_at, active=not state.armed, repeats=state.repeats,
    )  # fmt: skip


def _assess_fault(plan: FaultPlan, state: FaultState) -> PlanStatus:
    codes = plan.fault_codes
    which = "any fault" if codes is None else ", ".join(sorted(codes))
    rule = (
        which if plan.count == 1 else f"{plan.count} x {which} within {_minutes(plan.within or 0)}"
    )
    if state.open:
        fired = state.fired_at.isoformat() if state.fired_at is not None else "?"
        detail = f"{rule}; fired {fired}"
        if state.repeats:
            detail += f", again {state.repeats} time(s) since"
    else:
        detail = f"{rule}; {len(state.recent)} in the window"
    return PlanStatus(
        plan.id, Status.DUE if state.open else Status.OK, Basis.FAULT, state.cycle, detail,
        due_at=state.fired_at if state.open else None, fired_at=state.fired_at,
        repeats=state.repeats,
    )  # fmt: skip


# --- complete --------------------------------------------------------------------------


def complete(
    plan: Plan,
    state: State,
    at: datetime,
    counters: Mapping[str, float],
    zone: ZoneInfo,
) -> State:
    """The state after the current occurrence was done at ``at``. ``counters``: counter
    values read at the service, by metric (a meter plan restarts from its counter's value).

    A schedule can be completed at any time (early work serves the occurrence coming up); an
    event plan only while an occurrence is open. Raises InvalidRecord otherwise, or when ``at``
    has no time zone or lies before the previous completion."""
    if at.tzinfo is None:
        raise InvalidRecord(f"plan {plan.id!r}: completion time {at.isoformat()} has no zone")
    previous = _last_completed(state)
    if previous is not None and at < previous:
        raise InvalidRecord(
            f"plan {plan.id!r}: completion at {at.isoformat()} is before the previous one "
            f"({previous.isoformat()})"
        )
    _check_pair(plan, state)
    try:
        if isinstance(plan, CalendarPlan) and isinstance(state, CalendarState):
            return complete_calendar(plan, state, at, zone)
        if isinstance(plan, MeterPlan) and isinstance(state, MeterState):
            return complete_meter(plan, state, at, counters)
        if isinstance(plan, WhicheverFirstPlan) and isinstance(state, WhicheverFirstState):
            return WhicheverFirstState(
                complete_calendar(plan.calendar, state.calendar, at, zone),
                complete_meter(plan.meter, state.meter, at, counters),
            )
    except ValueError as exc:
        raise InvalidRecord(f"plan {plan.id!r}: {exc}") from exc
    assert isinstance(state, ThresholdState | FaultState)
    if not state.open:
        raise InvalidRecord(
            f"plan {plan.id!r} has no open occurrence to complete (occurrence {state.cycle} "
            "has not fired)"
        )
    return replace(state, open=False, cycle=state.cycle + 1, repeats=0, last_completed=at)


def _last_completed(state: State) -> datetime | None:
    if isinstance(state, WhicheverFirstState):
        return state.calendar.last_completed
    return state.last_completed


# --- stored form -----------------------------------------------------------------------


def state_from_json(plan: Plan, data: Mapping[str, Any]) -> State:
    """A state read back from its JSON form (each state's ``to_json``). Raises InvalidRecord,
    naming the plan and the reason, for a state of another plan type, from a newer version,
    or damaged."""
    document = dict(data)
    try:
        if isinstance(plan, CalendarPlan):
            return CalendarState.from_json(document)
        if isinstance(plan, MeterPlan):
            return MeterState.from_json(document)
        if isinstance(plan, WhicheverFirstPlan):
            return WhicheverFirstState.from_json(document)
        if isinstance(plan, ConditionPlan | SuppliesPlan):
            return ThresholdState.from_json(document, plan.type)
        return FaultState.from_json(document)
    except KeyError as exc:
        raise InvalidRecord(f"plan {plan.id!r}: stored state lacks {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"plan {plan.id!r}: stored state cannot be read: {exc}") from exc
