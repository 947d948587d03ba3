"""Meter plans: usage of a counter since the last service, the due point, and a forecast.

Usage is the sum of the deltas between consecutive readings, each by ``counter_delta`` on the
raw register value (a wrap of a register of known width counts through the wrap; any other
drop is a reset, from which the new value is the usage), times the channel's scale. A gap in
the readings changes nothing: the delta across it is the same arithmetic.

The forecast divides the usage counted over the last ``RATE_WINDOW_DAYS`` days of readings by
the time those readings span (a delta across a gap counts the gap's length too, so a device
that was off for a week does not look busy), and says when the remaining units will be used
at that rate. It needs at least ``MIN_RATE_SPAN`` of readings and some usage; otherwise None.
The window is kept in buckets of ``RATE_BUCKET_DAYS`` days (UTC), so it holds between 25 and
30 days and the stored state stays small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from core.config import MeterSchedule
from core.counters import counter_delta
from core.records import Reading
from rules.states import STATE_VERSION, check_header, opt_datetime, opt_float, text

__all__ = [
    "MIN_RATE_SPAN",
    "RATE_WINDOW_DAYS",
    "MeterPoint",
    "MeterState",
    "complete_meter",
    "forecast",
    "meter_point",
    "observe_counter",
]

RATE_WINDOW_DAYS = 30
RATE_BUCKET_DAYS = 5
MIN_RATE_SPAN = timedelta(days=1)
_BUCKET_SECONDS = RATE_BUCKET_DAYS * 86_400
_BUCKETS = RATE_WINDOW_DAYS // RATE_BUCKET_DAYS

RateBucket = tuple[int, float, float]
"""(bucket number: UTC days since 1970 // RATE_BUCKET_DAYS, units counted by the deltas ending
in it, seconds those deltas span)"""


@dataclass(frozen=True, slots=True)
class MeterState:
    """What a meter schedule remembers between readings.

    ``usage`` counts units since the last completion (since the first reading before any);
    just after a completion recorded with the counter value at service it may be negative for
    a while: the readings taken between the last stored one and the service. ``first_value``
    is the first reading ever (a ``first_due`` counts from it); ``baseline`` the counter value
    at the last service.
    """

    cycle: int = 0
    usage: float = 0.0
    first_value: float | None = None
    baseline: float | None = None
    last_raw: float | None = None
    last_value: float | None = None
    last_ts: datetime | None = None
    last_completed: datetime | None = None
    rate: tuple[RateBucket, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "type": "meter",
            "cycle": self.cycle,
            "usage": self.usage,
            "first_value": self.first_value,
            "baseline": self.baseline,
            "last_raw": self.last_raw,
            "last_value": self.last_value,
            "last_ts": text(self.last_ts),
            "last_completed": text(self.last_completed),
            "rate": [list(bucket) for bucket in self.rate],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MeterState:
        check_header(data, "meter")
        return cls(
            cycle=int(data["cycle"]),
            usage=float(data["usage"]),
            first_value=opt_float(data, "first_value"),
            baseline=opt_float(data, "baseline"),
            last_raw=opt_float(data, "last_raw"),
            last_value=opt_float(data, "last_value"),
            last_ts=opt_datetime(data, "last_ts"),
            last_completed=opt_datetime(data, "last_completed"),
            rate=tuple((int(b), float(u), float(s)) for b, u, s in data.get("rate", ())),
        )


def _add_to_rate(
    rate: tuple[RateBucket, ...], bucket: int, units: float, seconds: float
) -> tuple[RateBucket, ...]:
    if rate and rate[-1][0] == bucket:
        _, bucket_units, bucket_seconds = rate[-1]
        rate = (*rate[:-1], (bucket, bucket_units + units, bucket_seconds + seconds))
    else:
        rate = (*rate, (bucket, units, seconds))
    oldest = bucket - _BUCKETS + 1
    if rate[0][0] < oldest:
        rate = tuple(kept for kept in rate if kept[0] >= oldest)
    return rate


def observe_counter(state: MeterState, reading: Reading, scale: float = 1.0) -> MeterState:
    """Fold one counter reading into ``state``. A reading not newer than the last one folded
    is a repeat (or arrived out of order) and changes nothing, so feeding a reading twice is
    harmless. ``scale`` converts raw register units into the metric's units."""
    ts = reading.ts
    last_ts = state.last_ts
    if last_ts is not None and ts <= last_ts:
        return state
    raw = reading.raw
    counter = float(raw) if raw is not None else reading.value
    if state.last_raw is None or last_ts is None:
        usage = state.usage
        if state.baseline is not None:
            # the first reading after a service recorded before any reading: count from the
            # counter value at service, or from zero if the counter has been reset since
            value = reading.value
            usage = value - state.baseline if value >= state.baseline else value
        first = reading.value if state.first_value is None else state.first_value
        return replace(
            state, usage=usage, first_value=first, last_raw=counter, last_value=reading.value,
            last_ts=ts,
        )  # fmt: skip
    delta = counter_delta(state.last_raw, counter, reading.width)
    if raw is not None:
        delta *= scale
    rate = _add_to_rate(
        state.rate, int(ts.timestamp()) // _BUCKET_SECONDS, delta, (ts - last_ts).total_seconds()
    )
    return MeterState(
        state.cycle,
        state.usage + delta,
        state.first_value,
        state.baseline,
        counter,
        reading.value,
        ts,
        state.last_completed,
        rate,
    )


@dataclass(frozen=True, slots=True)
class MeterPoint:
    """Where the current occurrence stands, in units of usage since the last service, and
    the counter value at which it falls due. ``target`` is None only before the first
    reading of a plan whose first due point depends on it."""

    target: float | None
    due_value: float | None
    upcoming_from: float | None
    overdue_from: float | None


def meter_point(schedule: MeterSchedule, state: MeterState) -> MeterPoint:
    """Without a grace the occurrence is overdue once a whole further interval has been used,
    the point where the next occurrence would otherwise fall due."""
    if state.cycle == 0 and schedule.first_due is not None:
        if state.first_value is None:
            return MeterPoint(None, schedule.first_due, None, None)
        # a counter first seen past its first due point is due at once, and overdue since
        # that point, not since it was first seen
        target = max(0.0, schedule.first_due - state.first_value)
        due_value: float | None = schedule.first_due
    else:
        target = schedule.every
        if state.last_value is not None:
            due_value = state.last_value - state.usage + target
        elif state.baseline is not None:
            due_value = state.baseline + target
        else:
            due_value = None
    grace = schedule.grace if schedule.grace is not None else schedule.every
    upcoming = None if schedule.lead is None else max(0.0, target - schedule.lead)
    return MeterPoint(target, due_value, upcoming, target + grace)


def forecast(state: MeterState, target: float | None) -> datetime | None:
    """When the usage will reach ``target`` at the recent rate; None when it already has, or
    when the readings do not tell a rate yet."""
    if target is None or state.last_ts is None or state.usage >= target:
        return None
    units = sum(bucket[1] for bucket in state.rate)
    seconds = sum(bucket[2] for bucket in state.rate)
    if seconds < MIN_RATE_SPAN.total_seconds() or units <= 0:
        return None
    return state.last_ts + timedelta(seconds=(target - state.usage) * seconds / units)


def complete_meter(
    schedule: MeterSchedule, state: MeterState, at: datetime, counters: Mapping[str, float]
) -> MeterState:
    """The state after a service at ``at``; ``counters`` holds the counter values read at the
    service (optional). Usage restarts from the counter value at service, so readings already
    stored from after the service count, and readings still to come from before it do not.
    Without a value, the service is taken to be at the last reading."""
    at_service = counters.get(schedule.metric)
    if at_service is not None and (not math.isfinite(at_service) or at_service < 0):
        raise ValueError(
            f"{schedule.metric} at service is {at_service!r}: a counter value is a finite "
            "number, 0 or more"
        )
    last_value, last_ts = state.last_value, state.last_ts
    baseline = last_value if at_service is None else at_service
    if at_service is None or last_value is None or last_ts is None:
        usage = 0.0
    elif last_value == at_service or (last_value > at_service) == (last_ts >= at):
        usage = last_value - at_service
    elif last_ts >= at:
        # a reading after the service below the value at service: reset since the service
        usage = last_value
    else:
        # a reading before the service above the value at service: the counter was reset at
        # the service (a board swapped); the next reading's delta will be its whole value
        usage = -at_service
    return replace(state, cycle=state.cycle + 1, usage=usage, baseline=baseline, last_completed=at)
