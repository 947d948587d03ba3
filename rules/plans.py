"""When a plan falls due. Pure functions of a plan, its stored state and the time."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from core.config import CalendarPlan, UsagePlan
from core.records import Reading
from core.store import PlanState
from rules.counters import counter_delta

__all__ = ["Due", "accumulate_usage", "calendar_due", "usage_due"]


@dataclass(frozen=True, slots=True)
class Due:
    basis: str
    detail: str
    due_at: datetime | None = None
    due_value: float | None = None


def accumulate_usage(state: PlanState, readings: Iterable[Reading], scale: float) -> bool:
    """Fold new counter readings into ``state``; True when anything changed."""
    changed = False
    for reading in readings:
        raw = float(reading.raw) if reading.raw is not None else reading.value
        if state.last_raw is None:
            state.first_value = reading.value
        else:
            state.usage += counter_delta(state.last_raw, raw, reading.width) * scale
        state.last_raw = raw
        state.last_ts = reading.ts
        changed = True
    return changed


def usage_due(plan: UsagePlan, state: PlanState) -> Due | None:
    if state.last_raw is None:
        return None
    target = plan.every
    baseline = state.first_value if state.first_value is not None else 0.0
    due_value = baseline + target
    if state.cycle == 0 and plan.first_due is not None and state.first_value is not None:
        # a counter first seen past its first-due point is overdue since that point
        target = max(0.0, plan.first_due - state.first_value)
        due_value = plan.first_due
    if state.usage < target:
        return None
    return Due(
        basis="usage",
        detail=f"{state.usage:g} {plan.metric} since last service (due every {plan.every:g})",
        due_value=due_value,
    )


def calendar_due(plan: CalendarPlan, state: PlanState, now: datetime, zone: ZoneInfo) -> Due | None:
    if state.last_completed is not None:
        anchor = state.last_completed
    elif plan.start is not None:
        anchor = datetime.combine(plan.start, time(), zone)
    else:
        anchor = state.started
    # days are counted on the site's calendar, so a due time keeps its local hour across DST
    due_at = anchor.astimezone(zone) + timedelta(days=plan.every_days)
    if now < due_at:
        return None
    return Due(
        basis="calendar",
        detail=f"due every {plan.every_days} days; due since {due_at.date().isoformat()}",
        due_at=due_at,
    )
