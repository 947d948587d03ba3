"""Rows the store hands back to the rules and the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from core.records import Quality

__all__ = [
    "Bucket",
    "DeviceStatus",
    "LatestValue",
    "RetentionRun",
    "Rollup",
    "StoredDeadLetter",
]


@dataclass(frozen=True, slots=True)
class LatestValue:
    device_id: str
    metric: str
    value: float
    ts: datetime
    quality: Quality


@dataclass(frozen=True, slots=True)
class Bucket:
    """One step of a metric's history: ``start`` is a multiple of the step since the epoch, and
    ``value`` the aggregate of the readings in [start, start + step)."""

    start: datetime
    value: float


@dataclass(frozen=True, slots=True)
class Rollup:
    """One series' readings in [start, start + resolution), summarised so that any coarser
    bucket's min, max, mean (sum over count), last (the value of the greatest ``last_ts``) and
    count follow exactly from the rollups inside it."""

    device_id: str
    metric: str
    start: datetime
    min_value: float
    max_value: float
    sum_value: float
    count: int
    last_ts: datetime
    last_value: float


@dataclass(frozen=True, slots=True)
class RetentionRun:
    """What one ``apply_retention`` did: each table now holds data from its ``*_from`` on (the
    horizon, which never moves back), and how many rows it deleted to get there."""

    raw_from: datetime
    minute_from: datetime
    hour_from: datetime
    raw_deleted: int
    minute_deleted: int
    hour_deleted: int


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    device_id: str
    online: bool
    since: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    id: int
    source: str
    topic: str
    payload: str
    reason: str
    detail: str
    ts: datetime
