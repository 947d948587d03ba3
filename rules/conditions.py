"""Plans driven by events rather than schedules: conditions on a gauge, supplies running
low, and faults.

Each keeps ``cycle``, the number of occurrences closed so far, and ``open``: whether occurrence
``cycle`` has fired and awaits completion, so (plan, cycle) names one occurrence for good.
Firing again while an occurrence is open counts a repeat on it instead of opening another, so
a flapping sensor or a repeating fault never floods anyone with work orders.

- Condition: a gauge beyond its threshold (strictly above or below) for at least the plan's
  duration, judged from readings: the breach starts at the first reading beyond the
  threshold and must still hold at a reading ``for`` later (a steady value is still reported at
  its heartbeat). Having fired, it re-arms only when a reading is back past the threshold by
  the hysteresis (``<= above - hysteresis``, ``>= below + hysteresis``); until then it cannot
  fire again, however the value flaps. Re-arming does not close the occurrence: an excursion
  needs someone to look at it.
- Supplies: the same with no duration, and the refill that re-arms it also closes the
  occurrence (the reorder has been served), so the next low level raises a new notice.
- Fault: an activation of a matching code; with ``count`` N, N activations within ``within``
  (the activations that fire are used up, so the next firing needs N new ones).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from core.records import FaultEvent, Reading
from rules.states import STATE_VERSION, check_header, opt_datetime, opt_float, text

__all__ = ["FaultState", "ThresholdState", "observe_fault", "observe_threshold"]


@dataclass(frozen=True, slots=True)
class ThresholdState:
    """A condition's or a supplies plan's memory. ``armed`` is False from a firing until the
    value comes back past the hysteresis band; ``breach_since`` is when the current breach
    began, while armed."""

    type: str
    cycle: int = 0
    open: bool = False
    armed: bool = True
    repeats: int = 0
    breach_since: datetime | None = None
    fired_at: datetime | None = None
    rearmed_at: datetime | None = None
    last_value: float | None = None
    last_ts: datetime | None = None
    last_completed: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "type": self.type,
            "cycle": self.cycle,
            "open": self.open,
            "armed": self.armed,
            "repeats": self.repeats,
            "breach_since": text(self.breach_since),
            "fired_at": text(self.fired_at),
            "rearmed_at": text(self.rearmed_at),
            "last_value": self.last_value,
            "last_ts": text(self.last_ts),
            "last_completed": text(self.last_completed),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], plan_type: str) -> ThresholdState:
        check_header(data, plan_type)
        return cls(
            type=plan_type,
            cycle=int(data["cycle"]),
            open=bool(data["open"]),
            armed=bool(data["armed"]),
            repeats=int(data["repeats"]),
            breach_since=opt_datetime(data, "breach_since"),
            fired_at=opt_datetime(data, "fired_at"),
            rearmed_at=opt_datetime(data, "rearmed_at"),
            last_value=opt_float(data, "last_value"),
            last_ts=opt_datetime(data, "last_ts"),
            last_completed=opt_datetime(data, "last_completed"),
        )


def _fire(state: ThresholdState, at: datetime) -> ThresholdState:
    if state.open:
        return replace(state, armed=False, breach_since=None, repeats=state.repeats + 1)
    return replace(state, open=True, armed=False, breach_since=None, repeats=0, fired_at=at)


def observe_threshold(
    state: ThresholdState,
    reading: Reading,
    *,
    threshold: float,
    rising: bool,
    duration: float,
    hysteresis: float,
    close_on_rearm: bool,
) -> ThresholdState:
    """Fold one gauge reading in. ``rising``: the breach is above ``threshold`` (else below).
    A reading not newer than the last one folded changes nothing."""
    ts, value = reading.ts, reading.value
    if state.last_ts is not None and ts <= state.last_ts:
        return state
    state = replace(state, last_value=value, last_ts=ts)
    if not state.armed:
        back = value <= threshold - hysteresis if rising else value >= threshold + hysteresis
        if not back:
            return state
        if close_on_rearm and state.open:
            return replace(
                state, armed=True, rearmed_at=ts, open=False, cycle=state.cycle + 1, repeats=0
            )
        return replace(state, armed=True, rearmed_at=ts)
    beyond = value > threshold if rising else value < threshold
    if not beyond:
        return state if state.breach_since is None else replace(state, breach_since=None)
    since = state.breach_since or ts
    fires_at = since + timedelta(seconds=duration)
    if ts >= fires_at:
        return _fire(state, fires_at)
    return state if state.breach_since is not None else replace(state, breach_since=since)


@dataclass(frozen=True, slots=True)
class FaultState:
    """A fault plan's memory: the matching activations inside the window that have not fired
    yet, and the last event folded (its time and codes) so a repeated event is ignored."""

    cycle: int = 0
    open: bool = False
    repeats: int = 0
    recent: tuple[datetime, ...] = ()
    fired_at: datetime | None = None
    last_ts: datetime | None = None
    last_codes: tuple[str, ...] = ()
    last_completed: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "type": "fault",
            "cycle": self.cycle,
            "open": self.open,
            "repeats": self.repeats,
            "recent": [moment.isoformat() for moment in self.recent],
            "fired_at": text(self.fired_at),
            "last_ts": text(self.last_ts),
            "last_codes": list(self.last_codes),
            "last_completed": text(self.last_completed),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultState:
        check_header(data, "fault")
        recent = tuple(datetime.fromisoformat(moment) for moment in data.get("recent", ()))
        if any(moment.tzinfo is None for moment in recent):
            raise ValueError("recent holds a time without a UTC offset")
        return cls(
            cycle=int(data["cycle"]),
            open=bool(data["open"]),
            repeats=int(data["repeats"]),
            recent=recent,
            fired_at=opt_datetime(data, "fired_at"),
            last_ts=opt_datetime(data, "last_ts"),
            last_codes=tuple(str(code) for code in data.get("last_codes", ())),
            last_completed=opt_datetime(data, "last_completed"),
        )


def observe_fault(
    state: FaultState,
    event: FaultEvent,
    *,
    codes: frozenset[str] | None,
    count: int,
    within: float | None,
) -> FaultState:
    """Fold one fault event in: only activations of a matching code (``codes`` None: any)
    count. An event older than the last one folded, or the same code at the same time again,
    is a repeat and changes nothing."""
    if not event.active or (codes is not None and event.code not in codes):
        return state
    ts = event.ts
    last_ts = state.last_ts
    if last_ts is not None and (ts < last_ts or (ts == last_ts and event.code in state.last_codes)):
        return state
    seen = (*state.last_codes, event.code) if ts == state.last_ts else (event.code,)
    window = timedelta(seconds=within or 0.0)
    recent = (*(moment for moment in state.recent if ts - moment <= window), ts)
    if len(recent) < count:
        return replace(state, recent=recent, last_ts=ts, last_codes=seen)
    if state.open:
        return replace(state, recent=(), repeats=state.repeats + 1, last_ts=ts, last_codes=seen)
    return replace(state, open=True, repeats=0, recent=(), fired_at=ts, last_ts=ts, last_codes=seen)
