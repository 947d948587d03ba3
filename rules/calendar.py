"""Calendar plans: periods on the site's calendar, and the state of a calendar schedule.

Dates are local dates of the site; a plan falls due at the start of its due day in the site's
time zone (``local_start``), so "every month" stays at local midnight across DST changes.
Months are added on the calendar and clamped to the month's end: 31 January + 1 month is
28 (or 29) February. A fixed schedule's n-th date is always counted from its base date
(``base + n x every``), never from the previous date, so month ends do not drift: 31 Jan,
28 Feb, 31 Mar, 30 Apr.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from core.config import CalendarSchedule, Period
from rules.states import STATE_VERSION, check_header, opt_date, opt_datetime, text

__all__ = [
    "CalendarState",
    "CalendarTimes",
    "calendar_times",
    "complete_calendar",
    "first_anchor_after",
    "local_start",
    "shift",
]


_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _add_months(day: date, months: int) -> date:
    year, month = divmod(day.year * 12 + day.month - 1 + months, 12)
    last = _MONTH_DAYS[month]
    if month == 1 and calendar.isleap(year):
        last = 29
    return date(year, month + 1, day.day if day.day <= last else last)


def shift(day: date, period: Period, times: int = 1) -> date:
    """``day`` moved by ``times`` x ``period`` (negative moves back), month ends clamped."""
    count = period.count * times
    if period.unit == "days":
        return day + timedelta(days=count)
    if period.unit == "weeks":
        return day + timedelta(weeks=count)
    return _add_months(day, count if period.unit == "months" else 12 * count)


def _first_index_after(base: date, period: Period, after: date) -> tuple[int, date]:
    """The least k >= 1 with ``base + k x period`` strictly after ``after``, and that date."""
    if after < base:
        return 1, shift(base, period)
    if period.unit in ("days", "weeks"):
        step = period.count * (7 if period.unit == "weeks" else 1)
        k = (after - base).days // step + 1
        return k, base + timedelta(days=k * step)
    months = period.count * (12 if period.unit == "years" else 1)
    # the k whose date lies in after's month or before it; clamping may leave it not after
    k = max(1, ((after.year - base.year) * 12 + after.month - base.month) // months)
    anchor = _add_months(base, k * months)
    while anchor <= after:
        k += 1
        anchor = _add_months(base, k * months)
    return k, anchor


def first_anchor_after(base: date, period: Period, after: date) -> date:
    """The first of ``base + k x period`` (k >= 1) that falls strictly after ``after``."""
    return _first_index_after(base, period, after)[1]


def local_start(day: date, zone: ZoneInfo) -> datetime:
    """The first moment of ``day`` in ``zone``, in UTC. Where a DST change skips midnight, the
    wall time is read with the offset in force before the change: the day's first real
    instant. (Converted, because a wall time inside a skipped hour never compares equal to
    any other zone's time.)"""
    return datetime.combine(day, time(), zone).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class CalendarState:
    """What a calendar schedule remembers: when it was first seen, and its last completion.

    ``covered`` is the due date of the occurrence the last completion served: a fixed
    schedule's next date is the first of its dates after both that and the completion day.
    """

    started: datetime
    cycle: int = 0
    last_completed: datetime | None = None
    covered: date | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "type": "calendar",
            "started": self.started.isoformat(),
            "cycle": self.cycle,
            "last_completed": text(self.last_completed),
            "covered": text(self.covered),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CalendarState:
        check_header(data, "calendar")
        started = opt_datetime(data, "started")
        if started is None:
            raise ValueError("started is missing")
        return cls(
            started=started,
            cycle=int(data["cycle"]),
            last_completed=opt_datetime(data, "last_completed"),
            covered=opt_date(data, "covered"),
        )


@dataclass(frozen=True, slots=True)
class CalendarTimes:
    """The current occurrence's dates: upcoming from (the lead), due, overdue from."""

    due: date
    upcoming_from: date | None
    overdue_from: date


def _due(schedule: CalendarSchedule, state: CalendarState, zone: ZoneInfo) -> tuple[date, date]:
    """The due date, and the next one after it (the date a second occurrence would start)."""
    every = schedule.every
    base = schedule.start or state.started.astimezone(zone).date()
    completed = state.last_completed
    if schedule.mode == "floating":
        due = shift(base if completed is None else completed.astimezone(zone).date(), every)
        return due, shift(due, every)
    if completed is None:
        return shift(base, every), shift(base, every, 2)
    completed_on = completed.astimezone(zone).date()
    floor = completed_on if state.covered is None else max(completed_on, state.covered)
    k, due = _first_index_after(base, every, floor)
    return due, shift(base, every, k + 1)


def due_date(schedule: CalendarSchedule, state: CalendarState, zone: ZoneInfo) -> date:
    return _due(schedule, state, zone)[0]


def calendar_times(
    schedule: CalendarSchedule, state: CalendarState, zone: ZoneInfo
) -> CalendarTimes:
    """Computed from the schedule and the stored state alone, never from "today", so that an
    evaluation after any downtime finds the same dates. Without a grace period the occurrence
    is overdue from the next due date, when a second occurrence would otherwise begin."""
    due, following = _due(schedule, state, zone)
    upcoming = None if schedule.lead is None else shift(due, schedule.lead, -1)
    overdue = following if schedule.grace is None else shift(due, schedule.grace)
    return CalendarTimes(due, upcoming, overdue)


def complete_calendar(
    schedule: CalendarSchedule, state: CalendarState, at: datetime, zone: ZoneInfo
) -> CalendarState:
    """The state after a completion at ``at``: the current occurrence is served whenever it
    was done (early, on time or late), and the next one counts from the completion (floating)
    or is the schedule's first date after both the served due date and the completion day
    (fixed: periods missed entirely collapse into the one occurrence just served)."""
    return replace(
        state,
        cycle=state.cycle + 1,
        last_completed=at,
        covered=due_date(schedule, state, zone),
    )
