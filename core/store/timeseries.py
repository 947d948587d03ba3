"""The time-series contract every store backend keeps, and the small rules they share.

The rules and the API are written against :class:`TimeSeriesStore`, so the embedded SQLite file
and a PostgreSQL server are interchangeable under them; ``tests/test_store_contract.py`` runs one
suite against both. Conventions shared by every method:

- time windows are half-open, [start, end), like ``SqliteStore.readings``;
- times are stored with millisecond resolution (a finer part is truncated), and come back as
  timezone-aware UTC datetimes;
- writes are idempotent on each record's natural key, so an outbox may replay a batch after a
  crash without creating duplicates.

Rollups. Besides the raw readings, every backend keeps two rollup tables, ``readings_1m`` and
``readings_1h``: per (device, metric, bucket start) the min, max, sum and count of the bucket's
readings and the value and time of its newest one, from which min, max, mean, last and count of
any coarser, aligned bucket follow exactly.

They are kept off the write path. A write inserts the raw readings and upserts ``latest``, and
keeps on each series' ``latest`` row the oldest time written to the series since its rollups
were last recomputed (``pending_from``, NULL when none): the rollups are exact for every bucket
that ends before that time, and may be stale from there on.
``maintain_rollups`` then recomputes, series by series, the minute buckets from the pending
time's minute on from raw, and the hour buckets from that hour on from the minutes, and clears
the mark, all in one transaction per group of series. Recomputing rather than merging is what
keeps them exact whatever arrives: a replayed reading changes nothing in raw, so recomputing
gives the same bucket again; a late one moves the mark back to its own time, and its bucket is
recomputed with it. Each store runs ``maintain_rollups`` itself, ``rollup_interval`` seconds
after a write (60 by default, so that a minute bucket is mostly computed once, when it has
closed); a caller may run it at any time.

Reads never see the lag: ``history`` reads rollups only for buckets that end before the series'
``pending_from`` and raw from there (see ``plan_history``), and ``rollups`` computes the pending
buckets from raw in the same way; both read in one snapshot.

Retention. ``apply_retention`` deletes raw readings, minute rollups and hour rollups older than
their periods (``Retention``) and records each cutoff as that table's horizon. Horizons are whole
hours, so a rollup bucket is either wholly kept or wholly gone and never half covered by raw.
Before the raw horizon moves, the rollups of every series pending below it are brought up to
date, in the same transaction, since the raw readings they need are about to go. A reading older
than the raw horizon is past retention when it arrives: it goes into ``latest`` by the usual rule
(a newer latest wins) but neither into raw nor into the rollups, and it marks nothing pending.
Because raw_days <= minute_days <= hour_days, a coarser table covers at least the time a finer
one does, so ``history`` reads the coarsest table its step allows and gets the same buckets raw
would give, also after raw is gone; and the minute rows an hour is recomputed from are always
still there. ``latest`` is never touched by retention.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal, Protocol, get_args

from core.errors import StoreError
from core.records import FaultEvent, Quality, Record, StatusChange
from core.store.models import Bucket, LatestValue, RetentionRun, Rollup

__all__ = [
    "AGGREGATES",
    "HOUR_DAYS",
    "MINUTE_DAYS",
    "RAW_DAYS",
    "RESOLUTIONS",
    "ROLLUPS",
    "ROLLUP_INTERVAL",
    "Aggregate",
    "ChunkSize",
    "LatestCache",
    "Partial",
    "Resolution",
    "Retention",
    "Segment",
    "TimeSeriesStore",
    "check_history",
    "collector_paused",
    "latest_values",
    "merge_partials",
    "plan_history",
    "start_maintenance",
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

ROLLUP_INTERVAL = 60.0
"""Seconds from a write to the store's own ``maintain_rollups``: long enough that most minute
buckets have closed and are computed once, short enough that history rarely reads more than a
minute of raw per series for the part the rollups do not cover yet."""

log = logging.getLogger(__name__)

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


_QUALITIES = {quality.value: quality for quality in Quality}


def latest_values(
    rows: Iterable[Any], to_datetime: Callable[[Any], datetime] | None = None
) -> list[LatestValue]:
    """``LatestValue`` of each row (device_id, metric, value, ts, quality as stored), for
    ``latest()``, which builds one per series: 10,000 in a large practice, against a 20 ms
    budget. ``to_datetime`` turns a stored time into a datetime, once per distinct time (a
    device's metrics mostly share one); None when the driver already gives datetimes.

    Some 2.5 times as fast as calling the class: the dataclass is frozen, so its generated
    ``__init__`` sets every field through ``object.__setattr__``; this sets the slots
    directly, which is what that ends up doing. The quality is looked up in a table rather
    than by calling the enum."""
    set_device, set_metric, set_value, set_ts, set_quality = _LATEST_SETTERS
    new, qualities = object.__new__, _QUALITIES
    times: dict[Any, datetime] = {}
    values = []
    for device_id, metric, value, stored, quality in rows:
        if to_datetime is None:
            ts = stored
        else:
            ts = times.get(stored)
            if ts is None:
                ts = times[stored] = to_datetime(stored)
        latest = new(LatestValue)
        set_device(latest, device_id)
        set_metric(latest, metric)
        set_value(latest, value)
        set_ts(latest, ts)
        set_quality(latest, qualities[quality])
        values.append(latest)
    return values


class LatestCache:
    """The newest value of every series, kept in the process between calls of ``latest()``.

    Both stores stamp each ``latest`` row with a change mark as they write it (SQLite: a
    counter taken in the write transaction; PostgreSQL: the writing transaction's id), so a
    call reads only the rows written since the mark it last read to; the first call reads
    them all. Rows of ``latest`` are never deleted, which this relies on. Writes by other
    processes are seen as soon as they commit, since the marks live in the database.

    10,000 series take some 15 ms to read and turn into values, and the rules engine, the
    device list and the page ask for them all the time; between two calls a site writes a
    few of them. The answer is built from the values kept, in the store's order (device,
    then metric, by code point: the byte order of SQLite's BINARY and PostgreSQL's "C")."""

    __slots__ = ("_all", "_devices", "mark")

    def __init__(self) -> None:
        self.mark: Any = None
        """The store's change mark the values are current to; None: nothing read yet."""
        self._devices: dict[str, dict[str, LatestValue]] = {}
        self._all: list[LatestValue] | None = None

    def update(self, values: Iterable[LatestValue], mark: Any) -> None:
        """Take the values of rows written since ``mark``'s predecessor, and ``mark``."""
        devices = self._devices
        for value in values:
            metrics = devices.get(value.device_id)
            if metrics is None:
                metrics = devices[value.device_id] = {}
            metrics[value.metric] = value
            self._all = None
        self.mark = mark

    def answer(self, device_ids: Sequence[str] | None) -> list[LatestValue]:
        """``latest(device_ids)`` from the values kept."""
        if device_ids is not None:
            return self._collect(sorted(set(device_ids)))
        if self._all is None:
            self._all = self._collect(sorted(self._devices))
        return list(self._all)

    def _collect(self, device_ids: Iterable[str]) -> list[LatestValue]:
        answer: list[LatestValue] = []
        devices = self._devices
        for device_id in device_ids:
            metrics = devices.get(device_id)
            if metrics is not None:
                answer += [metrics[metric] for metric in sorted(metrics)]
        return answer


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused for a ``latest()``, which makes some 10,000 records
    and as many values at once, none of them in a cycle, all freed by reference counting once
    the caller is done. Left running, it would run a dozen times meanwhile and move them all
    into the oldest generation, whose full collections (every few calls, traversing every
    object of the process: some 100 ms in a process of 200,000) they would then set off. It
    stays paused across the query's await too, some milliseconds: the event loop's other work
    meanwhile only collects later. A collector already paused by the application stays so."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _latest_setters() -> tuple[Callable[[LatestValue, Any], None], ...]:
    names = [field.name for field in fields(LatestValue)]
    if names != ["device_id", "metric", "value", "ts", "quality"]:
        raise TypeError(f"LatestValue's fields are now {names}: update latest_values")
    return tuple(getattr(LatestValue, name).__set__ for name in names)


_LATEST_SETTERS = _latest_setters()


class TimeSeriesStore(Protocol):
    """What the rules and the API read and write, whatever the backend."""

    async def write(self, records: Sequence[Record]) -> None:
        """Store a batch in one transaction: raw readings, ``latest`` and the pending marks
        that ``maintain_rollups`` works from (the rollups themselves follow there).

        Idempotent: readings on (device, metric, ts), faults on (device, code, ts, active),
        status changes on (device, ts); a replayed record changes nothing, rollups included.
        A reading older than the raw horizon (see ``apply_retention``) only updates ``latest``.
        """

    async def maintain_rollups(self) -> int:
        """Bring the rollups of every series with readings written since its last maintenance
        up to date; how many series that was.

        The store runs this itself ``rollup_interval`` seconds after a write; reads are exact
        without it (see the module's notes), so calling it is only ever about when the work is
        done. Safe to run alongside writes and retention, and to repeat.
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
        one than ``resolution``, and from raw where the series' rollups are pending; the
        buckets are the same whichever serves them (a mean up to floating-point rounding, as
        its sum is added up in another order).
        """

    async def rollups(
        self, device_id: str, metric: str, resolution: Resolution, *, start: datetime, end: datetime
    ) -> list[Rollup]:
        """The rollups (``resolution`` "1m" or "1h") of one series whose bucket starts in
        [start, end), oldest first: for checks and exports; charts use ``history``. Buckets
        whose rollups are pending are computed from raw, so the answer is what
        ``maintain_rollups`` will store."""

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
        short transaction together with the rollups still pending below the raw one, and the
        deletions follow in small ones.
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
    start_ms: int,
    end_ms: int,
    step_seconds: int,
    resolution: Resolution | None = None,
    pending_from_ms: int | None = None,
) -> list[Segment]:
    """The pieces of [start_ms, end_ms), oldest first, and the table each is read from.

    The coarsest table whose buckets divide the step (and is no coarser than ``resolution``)
    serves the whole buckets inside the window; the ragged ends, where the window cuts a
    bucket, come from the next finer table, down to raw. A 1-hour step from 09:17:23 to 15:00
    reads raw to 09:18, minute rollups to 10:00 and hour rollups from there: the same readings
    as raw alone, in a few dozen rows rather than thousands. Each rollup bucket lies inside
    one history bucket, since both are aligned to the epoch and the step is a multiple.

    ``pending_from_ms`` is where the series' rollups stop being exact (its ``latest`` row's
    mark, None when nothing is pending): from there on raw serves, and the rollups only up to
    it, a bucket that straddles it going to the finer tables like a ragged end.
    """
    step_ms = step_seconds * 1000
    tiers = [tier for tier, width in ROLLUPS.items() if step_ms % width == 0]
    if resolution is not None:
        ceiling = RESOLUTIONS.index(resolution)
        tiers = [tier for tier in tiers if RESOLUTIONS.index(tier) <= ceiling]
    if pending_from_ms is None or pending_from_ms >= end_ms:
        return _plan(start_ms, end_ms, tiers)
    if pending_from_ms <= start_ms:
        return [Segment("raw", start_ms, end_ms)]
    exact = _plan(start_ms, pending_from_ms, tiers)
    if exact[-1].resolution == "raw":  # one range scan rather than two that meet
        return [*exact[:-1], Segment("raw", exact[-1].start_ms, end_ms)]
    return [*exact, Segment("raw", pending_from_ms, end_ms)]


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


class ChunkSize:
    """How many series the next rollup maintenance transaction takes.

    A maintenance transaction holds up writes while it runs (SQLite's one connection; on
    PostgreSQL the ``latest`` rows of its series), and how long one series takes depends on how
    much was written since its last maintenance: a minute of readings in service, far more
    while a backlog is loaded. So the size adapts, aiming at ``target`` seconds a transaction:
    scaled by target over the time the last one took, at most doubling a step.
    """

    __slots__ = ("most", "size", "target")

    def __init__(self, *, first: int = 100, most: int = 1000, target: float = 0.1) -> None:
        self.size = first
        self.most = most
        self.target = target

    def took(self, seconds: float) -> None:
        """The last transaction, of ``size`` series, took ``seconds``."""
        scaled = self.size * self.target / max(seconds, 1e-6)
        self.size = max(1, min(self.most, 2 * self.size, round(scaled)))


def start_maintenance(
    store: TimeSeriesStore, written: asyncio.Event, delay: float, name: str
) -> asyncio.Task[None]:
    """Start a store's own rollup task (``name``): ``delay`` seconds after a write (which sets
    ``written``), maintain the rollups. The store starts it on opening and cancels it on
    closing; a failure other than a ``StoreError`` (which is retried) is a bug, logged with
    its traceback as soon as it ends the task."""
    task = asyncio.create_task(_maintain_after_writes(store, written, delay), name=name)
    task.add_done_callback(_report_failure)
    return task


async def _maintain_after_writes(
    store: TimeSeriesStore, written: asyncio.Event, delay: float
) -> None:
    """The delay is a schedule, not a wait for something: it gathers the writes of a while,
    so that a minute bucket is mostly computed once, when it has closed, rather than after
    every batch. A failure is logged and retried after the same delay: reads stay exact
    meanwhile, only slower."""
    while True:
        await written.wait()
        await asyncio.sleep(delay)
        written.clear()
        try:
            await store.maintain_rollups()
        except StoreError as exc:
            log.warning("rollups: %s; trying again in %gs", exc, delay)
            written.set()


def _report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s stopped: rollups are no longer maintained", task.get_name(), exc_info=exc)
