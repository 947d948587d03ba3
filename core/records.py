"""The typed records that flow from the collectors to the store and the rules.

Plain slotted dataclasses rather than pydantic models: tens of thousands are built per second
on the ingest path, and they are only ever built from already-validated configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

__all__ = [
    "DeadLetter",
    "FaultEvent",
    "MetricKind",
    "Quality",
    "Reading",
    "Record",
    "StatusChange",
]


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class MetricKind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    STATE = "state"
    FAULT = "fault"


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one metric of one device at one time.

    ``raw`` and ``width`` are kept for counters so that the rules can tell a register wrap
    (raw went down from near ``2**width``) from a reset (device replaced, firmware reset).
    """

    device_id: str
    metric: str
    value: float
    ts: datetime
    quality: Quality = Quality.GOOD
    raw: int | None = None
    width: int | None = None


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """A fault code reported by a device; ``active`` is False when the device reports it clear."""

    device_id: str
    code: str
    ts: datetime
    active: bool = True


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A device went online or offline, and why."""

    device_id: str
    online: bool
    ts: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An incoming message that could not be turned into records, kept for inspection."""

    source: str
    topic: str
    payload: str
    reason: str
    detail: str
    ts: datetime


Record = Reading | FaultEvent | StatusChange
