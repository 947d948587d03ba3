"""The time-series contract every store backend keeps, and the small rules they share.

The rules and the API are written against :class:`TimeSeriesStore`, so the embedded SQLite file
and a PostgreSQL server are interchangeable under them; ``tests/test_store_contract.py`` runs one
suite against both. Conventions shared by every method:

- time windows are half-open, [start, end), like ``SqliteStore.readings``;
- times are stored with millisecond resolution (a finer part is truncated), and come back as
  timezone-aware UTC datetimes;
- writes are idempotent on each record's natural key, so an outbox may replay a batch after a
  crash without creating duplicates.

Rollups and retention. Besides the raw readings, every backend keeps two rollup tables,
``readings_1m`` and ``readings_1h``: per (device, metric, bucket start) the min, max, sum and
count of the bucket's readings and the value and time of its newest one, from which min, max,
mean, last and count of any coarser, aligned bucket follow exactly. They are kept on write, in
the same transaction as the raw insert, by merging in the readings that the insert actually
added: a replayed reading adds nothing to raw, so it adds nothing to the rollups either, and a
late one merges like any other (min, max, sum and count do not care about order; last compares
times). Merging rather than recomputing buckets from raw keeps the cost per batch proportional
to the batch, and stays exact under PostgreSQL's concurrent writers (an upsert's increment
applies to the row as committed, where a recomputation could overwrite a concurrent one).

``apply_retention`` deletes raw readings, minute rollups and hour rollups older than their
periods (``Retention``) and records each cutoff as that table's horizon. Horizons are whole
hours, so a rollup bucket is either wholly kept or wholly gone and never half covered by raw;
and a reading older than the raw horizon is past retention when it arrives: it goes into
``latest`` by the usual rule (a newer latest wins) but neither into raw nor into the rollups,
where merging it again would count it twice. Because raw_days <= minute_days <= hour_days, a
coarser table covers at least the time a finer one does, so ``history`` reads the coarsest
table its step allows (see ``plan_history``) and gets the same buckets raw would give, also
after raw is gone. ``latest`` is never touched by retention.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, get_args

from core.counters import counter_delta
from core.records import FaultEvent, Record, StatusChange
from core.store.models import Bucket, LatestValue, RetentionRun, Rollup

__all__ = [
    "AGGREGATES",
    "HOUR_DAYS",
    "MINUTE_DAYS",
    "RAW_DAYS",
    "RESOLUTIONS",
    "ROLLUPS",
    "Aggregate",
    "Partial",
    "Resolution",
    "Retention",
    "Segment",
    "TimeSeriesStore",
    "UsageFold",
    "check_history",
    "merge_partials",
    "plan_history",
]

Aggregate = Literal["min", "max", "mean", "last", "count"]
"""How the readings of one history bucket become one value. ``last`` is the newest reading's
value; ``count`` the number of readings (as a float, like every bucket value)."""

AGGREGATES: tuple[Aggregate, ...] = get_args(Aggregate)

Resolution = Literal["raw", "1m", "1h"]
"""A table of readings: the raw readings, or the 1-minute or 1-hour rollups."""

RESOLUTIONS: tuple[Resolution, ...] = get_args(Resolution)

ROLLUPS: dict[Resolution, int] = {"1h": 3_600_000, "1m": 60_000}
"""The rollup tables and their bucket widths in milliseconds, coarsest first."""

RAW_DAYS, MINUTE_DAYS, HOUR_DAYS = 90, 365, 730
"""The default retention periods, in days; see ``Retention`` for why."""

_HOUR_MS = ROLLUPS["1h"]
_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each table keeps its data, in whole days.

    - ``raw_days`` (90): raw readings, for the API's reading lists and counter usage.
    - ``minute_days`` (365): a year of minute resolution, so that an incident found at the
      annual service or an audit (a sterilisation cycle that went wrong, a fridge temperature
      excursion) can still be looked at minute by minute once raw is gone. A minute rollup is
      one row per series and minute whatever the sample rate: a year of them costs about as
      many rows as 12 days of raw at one reading every 2 s. It may not be shorter than raw:
      ``history`` reads a 60 s step from the minute rollups and relies on them covering every
      time raw still covers (30 days, say, would leave 60 s charts of days 31 to 90 empty).
    - ``hour_days`` (730): two years of hourly trends, 8,760 rows per series and year.
    """

    raw_days: int = RAW_DAYS
    minute_days: int = MINUTE_DAYS
    hour_days: int = HOUR_DAYS

    def __post_init__(self) -> None:
        for name in ("raw_days", "minute_days", "hour_days"):
            days = getattr(self, name)
            if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
                raise ValueError(f"{name} must be a positive whole number of days, not {days!r}")
        if not self.raw_days <= self.minute_days <= self.hour_days:
            raise ValueError(
                "retention must keep coarser data at least as long as finer: raw_days <= "
                f"minute_days <= hour_days, not {self.raw_days}, {self.minute_days}, "
                f"{self.hour_days}"
            )

    def replace(
        self,
        raw_days: int | None = None,
        minute_days: int | None = None,
        hour_days: int | None = None,
    ) -> Retention:
        """This policy with the periods given here instead (validated as a whole)."""
        return Retention(
            self.raw_days if raw_days is None else raw_days,
            self.minute_days if minute_days is None else minute_days,
            self.hour_days if hour_days is None else hour_days,
        )

    def cutoffs_ms(self, now: datetime) -> dict[Resolution, int]:
        """Each table's cutoff at ``now`` in epoch milliseconds, floored to a whole hour.

        Whole hours, so that no rollup bucket straddles a cutoff: every bucket of every table
        is either wholly kept or wholly deleted."""
        if now.utcoffset() is None:
            raise ValueError(f"now must be timezone-aware, not {now!r}")
        now_ms = int(now.timestamp() * 1000)
        periods: dict[Resolution, int] = {
            "raw": self.raw_days,
            "1m": self.minute_days,
            "1h": self.hour_days,
        }
        return {tier: _floor(now_ms - days * _DAY_MS, _HOUR_MS) for tier, days in periods.items()}


class TimeSeriesStore(Protocol):
    """What the rules and the API read and write, whatever the backend."""

    async def write(self, records: Sequence[Record]) -> None:
        """Store a batch in one transaction, rollups included.

        Idempotent: readings on (device, metric, ts), faults on (device, code, ts, active),
        status changes on (device, ts); a replayed record changes nothing, rollups included.
        A reading older than the raw horizon (see ``apply_retention``) only updates ``latest``.
        """

    async def latest(self, device_ids: Sequence[str] | None = None) -> list[LatestValue]:
        """The newest reading of every (device, metric) of ``device_ids`` (all devices when
        None), ordered by device then metric. A reading that arrives late, older than the
        stored latest one, does not replace it."""

    async def history(
        self,
        device_id: str,
        metric: str,
        *,
        start: datetime,
        end: datetime,
        step_seconds: int,
        aggregate: Aggregate,
        resolution: Resolution | None = None,
    ) -> list[Bucket]:
        """One metric's readings in [start, end) aggregated per step, oldest bucket first.

        Buckets are aligned to multiples of the step since the Unix epoch, not to ``start``,
        so that charts of overlapping windows agree; the first bucket may therefore start
        before ``start`` (it only holds readings from ``start`` on). Empty buckets are omitted.

        Read from the coarsest table the step allows (``plan_history``), or from no coarser
        one than ``resolution``; the buckets are the same whichever serves them (a mean up to
        floating-point rounding, as its sum is added up in another order).
        """

    async def rollups(
        self, device_id: str, metric: str, resolution: Resolution, *, start: datetime, end: datetime
    ) -> list[Rollup]:
        """The stored rollups (``resolution`` "1m" or "1h") of one series whose bucket starts
        in [start, end), oldest first: for checks and exports; charts use ``history``."""

    async def usage(self, device_id: str, metric: str, *, start: datetime, end: datetime) -> float:
        """Units a counter counted in [start, end), in the counter's raw units.

        The sum of ``counter_delta`` over consecutive readings (the raw register value when
        stored, else the value), including the step from the last reading before ``start`` to
        the first one inside the window: a wrap counts the wrapped distance, a reset counts
        the new value. Multiply by the channel's scale, as the rules do.

        Raw readings only: a window reaching back past the raw horizon counts from the first
        reading still kept. Rollups cannot answer it exactly: a wrap and a reset are told apart
        by consecutive raw values, and a bucket's extremes hide a reset inside it (30000, 20,
        25 looks like a reset to 25, where 35 units were counted). The rules do not depend on
        this: they fold usage into their plan state as readings arrive.
        """

    async def faults(
        self, device_id: str | None, *, start: datetime, end: datetime
    ) -> list[FaultEvent]:
        """Fault events in [start, end) of one device (of all when None), ordered by time,
        then device, code and active."""

    async def status_changes(
        self, device_id: str | None, *, start: datetime, end: datetime
    ) -> list[StatusChange]:
        """Status changes in [start, end) of one device (of all when None), ordered by time,
        then device."""

    async def apply_retention(
        self,
        now: datetime,
        *,
        raw_days: int | None = None,
        minute_days: int | None = None,
        hour_days: int | None = None,
    ) -> RetentionRun:
        """Delete what is older than each table's period (the store's ``Retention`` unless
        given here), leaving ``latest``, faults and status changes alone.

        Meant to be called on a timer (hourly, say: cutoffs move by whole hours). Safe to
        repeat and to run alongside writes: the new horizons are recorded first, in their own
        short transaction, and the deletions follow in small ones.
        """


def check_history(step_seconds: int, aggregate: str, resolution: str | None = None) -> None:
    """Refuse history arguments that no backend can answer, before any SQL is built from them.

    ``aggregate`` and ``resolution`` pick fixed SQL fragments, so unknown ones must never get
    that far; a rollup table can only serve steps that are whole multiples of its buckets.
    """
    if isinstance(step_seconds, bool) or not isinstance(step_seconds, int) or step_seconds <= 0:
        raise ValueError(f"step_seconds must be a positive whole number, not {step_seconds!r}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, not {aggregate!r}")
    if resolution is None or resolution == "raw":
        return
    if resolution not in ROLLUPS:
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}, not {resolution!r}")
    if step_seconds * 1000 % ROLLUPS[resolution]:
        raise ValueError(
            f"resolution {resolution} cannot serve a step of {step_seconds} s: "
            "the step must be a whole multiple of its buckets"
        )


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece [start_ms, end_ms) of a history window, read from one table."""

    resolution: Resolution
    start_ms: int
    end_ms: int


def plan_history(
    start_ms: int, end_ms: int, step_seconds: int, resolution: Resolution | None = None
) -> list[Segment]:
    """The pieces of [start_ms, end_ms), oldest first, and the table each is read from.

    The coarsest table whose buckets divide the step (and is no coarser than ``resolution``)
    serves the whole buckets inside the window; the ragged ends, where the window cuts a
    bucket, come from the next finer table, down to raw. A 1-hour step from 09:17:23 to 15:00
    reads raw to 09:18, minute rollups to 10:00 and hour rollups from there: the same readings
    as raw alone, in a few dozen rows rather than thousands. Each rollup bucket lies inside
    one history bucket, since both are aligned to the epoch and the step is a multiple.
    """
    step_ms = step_seconds * 1000
    tiers = [tier for tier, width in ROLLUPS.items() if step_ms % width == 0]
    if resolution is not None:
        ceiling = RESOLUTIONS.index(resolution)
        tiers = [tier for tier in tiers if RESOLUTIONS.index(tier) <= ceiling]
    return _plan(start_ms, end_ms, tiers)


def _plan(start_ms: int, end_ms: int, tiers: Sequence[Resolution]) -> list[Segment]:
    if start_ms >= end_ms:
        return []
    if not tiers:
        return [Segment("raw", start_ms, end_ms)]
    tier, finer = tiers[0], tiers[1:]
    width = ROLLUPS[tier]
    inner_start, inner_end = -(-start_ms // width) * width, _floor(end_ms, width)
    if inner_start >= inner_end:
        return _plan(start_ms, end_ms, finer)
    return [
        *_plan(start_ms, inner_start, finer),
        Segment(tier, inner_start, inner_end),
        *_plan(inner_end, end_ms, finer),
    ]


def _floor(ms: int, width: int) -> int:
    """``ms`` down to a multiple of ``width``, also before the epoch (Python's // floors)."""
    return ms // width * width


@dataclass(slots=True)
class Partial:
    """One history bucket as far as one table holds it: enough to merge with the same
    bucket's part from another table and still give every aggregate exactly."""

    start_ms: int
    min_value: float
    max_value: float
    sum_value: float
    count: int
    last_ts_ms: int
    last_value: float

    def merge(self, other: Partial) -> None:
        self.min_value = min(self.min_value, other.min_value)
        self.max_value = max(self.max_value, other.max_value)
        self.sum_value += other.sum_value
        self.count += other.count
        if other.last_ts_ms > self.last_ts_ms:
            self.last_ts_ms, self.last_value = other.last_ts_ms, other.last_value

    def value(self, aggregate: Aggregate) -> float:
        if aggregate == "min":
            return float(self.min_value)
        if aggregate == "max":
            return float(self.max_value)
        if aggregate == "mean":
            return float(self.sum_value) / self.count
        if aggregate == "last":
            return float(self.last_value)
        return float(self.count)


def merge_partials(parts: Iterable[Partial]) -> list[Partial]:
    """Partials of consecutive segments, oldest first, with each bucket's pieces merged.

    Segments are disjoint and in time order, so a bucket split between two of them shows up as
    two neighbours here, never further apart."""
    merged: list[Partial] = []
    for part in parts:
        if merged and merged[-1].start_ms == part.start_ms:
            merged[-1].merge(part)
        else:
            merged.append(part)
    return merged


class UsageFold:
    """Folds one counter's readings, oldest first, into usage with ``counter_delta``.

    The first reading is only the starting point: with the reading before the window folded in
    first, the step into the window is counted; without one, usage starts at the first reading
    inside it. A fold rather than a function over a list, so that backends can stream rows.
    """

    __slots__ = ("_previous", "usage")

    def __init__(self) -> None:
        self.usage = 0.0
        self._previous: float | None = None

    def add(self, counter: float, width: int | None) -> None:
        """The next reading: its raw register value (else its value) and register width."""
        if self._previous is not None:
            self.usage += counter_delta(self._previous, counter, width)
        self._previous = counter
