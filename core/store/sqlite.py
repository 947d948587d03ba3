"""The embedded store: one SQLite file in WAL mode.

All statements run on one dedicated thread that owns the connection, so the event loop never
blocks on disk and SQLite never sees two writers. Time is stored as integer milliseconds UTC.

PRAGMAs, and why:
- ``journal_mode=WAL``: readers (API, exports, sqlite3 shell) never block the writer.
- ``synchronous=NORMAL``: in WAL mode a commit survives a process crash; only an OS crash or
  power loss can roll back the last commits, for a large gain in write throughput.
- ``busy_timeout``: another process holding the lock briefly (a backup) waits, not fails.

The time-series reads (``latest``, ``history``, ``usage``, ``faults``, ``status_changes``) keep
the contract in ``core.store.timeseries``, which the PostgreSQL store keeps too, including its
rollups (``readings_1m``, ``readings_1h``) and retention.

Writes: a batch of readings is one ``executemany`` of ``INSERT OR IGNORE`` into ``readings``,
which a trigger carries into ``latest`` (each series' newest reading and its pending mark). The
rollups are recomputed from raw by ``maintain_rollups``, which the store's own task runs
``rollup_interval`` seconds after a write (see ``core.store.timeseries``): a reading costs two
B-tree writes on the write path rather than four, and a minute bucket that many batches add to
is computed once rather than merged batch by batch.

Indexes: every time-series table is keyed (device_id, metric, time) and ``WITHOUT ROWID``, and
has no other index. That key serves the idempotent insert, the rollup recomputation (a range
of the key from the pending time on, per series), history ranges and retention, which deletes
series by series (their list is ``latest``) with a range of the key each. An index on time
alone would let retention delete with one statement, at the price of a second B-tree on every
reading written; retention runs hourly, writes all the time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from core.counters import counter_usage
from core.errors import StoreError
from core.records import DeadLetter, FaultEvent, Quality, Reading, Record, StatusChange
from core.store.models import (
    Bucket,
    DeviceStatus,
    LatestValue,
    RetentionRun,
    Rollup,
    StoredDeadLetter,
)
from core.store.timeseries import (
    HOUR_DAYS,
    MINUTE_DAYS,
    RAW_DAYS,
    ROLLUP_INTERVAL,
    ROLLUPS,
    Aggregate,
    ChunkSize,
    LatestCache,
    Partial,
    Resolution,
    Retention,
    check_history,
    collector_paused,
    latest_values,
    merge_partials,
    plan_history,
    start_maintenance,
)
from core.wal import use_wal

__all__ = ["SqliteStore"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

SCHEMA_VERSION = 4
"""2: rollup tables and retention horizons; opening a version 1 file builds the rollups.
3: rollups maintained off the write path, from ``latest.pending_from_ms``.
4: ``latest.seq`` and ``latest_seq``, the change marks ``LatestCache`` reads by."""

# Each table, with its time column: the names that SQL is built from, never input.
_TABLES: dict[Resolution, tuple[str, str]] = {
    "raw": ("readings", "ts_ms"),
    "1m": ("readings_1m", "bucket_ms"),
    "1h": ("readings_1h", "bucket_ms"),
}

# Rows per retention transaction: a few tens of milliseconds, so the writer never waits long.
_RETENTION_CHUNK = 10_000


def _floor_sql(column: str, width: str) -> str:
    """SQL for ``column`` floored to a multiple of ``width``; ((x % w) + w) % w floors before
    the epoch too, where SQLite's % truncates."""
    return f"{column} - (({column} % {width}) + {width}) % {width}"


def _partials_sql(resolution: Resolution) -> str:
    """One table's part of a history: per history bucket the merge-able summary of the rows
    in a range. The newest value is joined back by key (the raw reading at the bucket's
    greatest time, or the rollup row that holds that time), as min() and max() next to each
    other leave SQLite's bare-column rule undefined."""
    table, column = _TABLES[resolution]
    if resolution == "raw":
        summary = (
            "min(value) AS lo, max(value) AS hi, sum(value) AS total, count(*) AS n, "
            "max(ts_ms) AS last_ts"
        )
        newest, match = "r.value", "r.ts_ms = g.last_ts"
    else:
        summary = (
            "min(min_value) AS lo, max(max_value) AS hi, sum(sum_value) AS total, "
            "sum(count) AS n, max(last_ts_ms) AS last_ts"
        )
        width = str(ROLLUPS[resolution])
        newest, match = "r.last_value", f"r.bucket_ms = {_floor_sql('g.last_ts', width)}"
    return (
        f"SELECT g.bucket, g.lo, g.hi, g.total, g.n, g.last_ts, {newest} FROM ("
        f"SELECT {_floor_sql(column, '?1')} AS bucket, {summary} "
        f"FROM {table} WHERE device_id = ?2 AND metric = ?3 AND {column} >= ?4 "
        f"AND {column} < ?5 GROUP BY bucket) AS g "
        f"JOIN {table} AS r ON r.device_id = ?2 AND r.metric = ?3 AND {match} "
        "ORDER BY g.bucket"
    )


_PARTIALS_SQL = {resolution: _partials_sql(resolution) for resolution in _TABLES}


def _rollup_table(name: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {name} (
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    bucket_ms INTEGER NOT NULL,
    min_value REAL NOT NULL,
    max_value REAL NOT NULL,
    sum_value REAL NOT NULL,
    count INTEGER NOT NULL,
    last_ts_ms INTEGER NOT NULL,
    last_value REAL NOT NULL,
    PRIMARY KEY (device_id, metric, bucket_ms)
) WITHOUT ROWID;
"""


# A version 1 file's readings summarised into the new rollup tables, hours from minutes. The
# newest value comes from the reading (or minute row) holding the greatest time, by key.
_BACKFILL = f"""
INSERT INTO readings_1m
SELECT g.device_id, g.metric, g.bucket, g.lo, g.hi, g.total, g.n, g.last_ts, r.value
FROM (
    SELECT device_id, metric, {_floor_sql("ts_ms", "60000")} AS bucket, min(value) AS lo,
        max(value) AS hi, sum(value) AS total, count(*) AS n, max(ts_ms) AS last_ts
    FROM readings GROUP BY device_id, metric, bucket
) AS g
JOIN readings AS r ON r.device_id = g.device_id AND r.metric = g.metric AND r.ts_ms = g.last_ts;

INSERT INTO readings_1h
SELECT g.device_id, g.metric, g.bucket, g.lo, g.hi, g.total, g.n, g.last_ts, r.last_value
FROM (
    SELECT device_id, metric, {_floor_sql("bucket_ms", "3600000")} AS bucket,
        min(min_value) AS lo, max(max_value) AS hi, sum(sum_value) AS total, sum(count) AS n,
        max(last_ts_ms) AS last_ts
    FROM readings_1m GROUP BY device_id, metric, bucket
) AS g
JOIN readings_1m AS r ON r.device_id = g.device_id AND r.metric = g.metric
    AND r.bucket_ms = {_floor_sql("g.last_ts", "60000")};
"""

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS readings (
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    quality TEXT NOT NULL,
    raw INTEGER,
    width INTEGER,
    PRIMARY KEY (device_id, metric, ts_ms)
) WITHOUT ROWID;

-- rollups of readings (see core.store.timeseries), merged on write, read by history
"""
    + _rollup_table("readings_1m")
    + _rollup_table("readings_1h")
    + """
-- where each table's retained data starts ('raw', '1m', '1h'): only ever moves forward
CREATE TABLE IF NOT EXISTS retention (
    tier TEXT PRIMARY KEY,
    cutoff_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- the newest reading of each series; pending_from_ms is the oldest time written since the
-- series' rollups were last recomputed (NULL: none), see core.store.timeseries
CREATE TABLE IF NOT EXISTS latest (
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    quality TEXT NOT NULL,
    pending_from_ms INTEGER,
    seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, metric)
) WITHOUT ROWID;

-- the number of the last transaction that wrote to latest; each such transaction stamps the
-- rows it writes with its own (latest.seq), so that a reader can ask what changed since. No
-- index on seq: a scan of latest's 10,000 rows takes some 0.6 ms, an index would cost every
-- upsert a second B-tree write.
CREATE TABLE IF NOT EXISTS latest_seq (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO latest_seq VALUES (1, 0);

CREATE TABLE IF NOT EXISTS faults (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    code TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    active INTEGER NOT NULL,
    UNIQUE (device_id, code, ts_ms, active)
);
-- fault windows across all devices (the practice's last day) without scanning every device
CREATE INDEX IF NOT EXISTS faults_by_time ON faults (ts_ms);

CREATE TABLE IF NOT EXISTS status_changes (
    device_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    online INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (device_id, ts_ms)
) WITHOUT ROWID;
-- status windows across all devices; one device's window is served by the primary key
CREATE INDEX IF NOT EXISTS status_changes_by_time ON status_changes (ts_ms);

-- each device's newest status change, kept on write so that reading it costs one row per device
CREATE TABLE IF NOT EXISTS device_status (
    device_id TEXT PRIMARY KEY,
    online INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    reason TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    ts_ms INTEGER NOT NULL
);

"""
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _opt_dt(ms: int | None) -> datetime | None:
    return None if ms is None else _dt(ms)


class SqliteStore:
    """Time series and records in one SQLite file. Use as ``async with SqliteStore(path)``.

    ``raw_days``, ``minute_days`` and ``hour_days`` are the retention periods that
    ``apply_retention`` applies unless told otherwise (see ``Retention``).
    ``rollup_interval`` is how long after a write the store's own task runs
    ``maintain_rollups`` (seconds; None: never, for a caller that runs it itself).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        raw_days: int = RAW_DAYS,
        minute_days: int = MINUTE_DAYS,
        hour_days: int = HOUR_DAYS,
        rollup_interval: float | None = ROLLUP_INTERVAL,
    ) -> None:
        if rollup_interval is not None and not rollup_interval > 0:
            raise ValueError(f"rollup_interval must be positive seconds, not {rollup_interval!r}")
        self.retention = Retention(raw_days, minute_days, hour_days)
        self.path = Path(path)
        self.rollup_interval = rollup_interval
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None
        self._written = asyncio.Event()
        self._maintenance: asyncio.Task[None] | None = None
        self._latest_cache = LatestCache()
        self._series: dict[str, set[str]] = {}
        """The series with a row in ``latest`` as far as this store knows, metrics by device:
        read on opening, added to by the store's thread once a write commits. A batch is
        checked against it on the event loop, off the store's busy thread; a series the
        check misses for being a moment late is only offered to ``latest`` once more."""

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        try:
            await self._run(self._open)
            # latest read whole now (some 35 ms for 10,000 series), not by the first caller: a
            # process's first page or rules pass then waits only for what changed since; its
            # series are the ones the writes start out knowing
            values = await self._run(self._latest, None)
            _know(self._series, ((value.device_id, value.metric) for value in values))
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        if self.rollup_interval is not None:
            self._written = asyncio.Event()  # bound to the loop that opened the store
            self._maintenance = start_maintenance(
                self, self._written, self.rollup_interval, f"sqlite-store[{self.path.name}].rollups"
            )

    async def close(self) -> None:
        """Stop the rollup task and close the file. Rollups still pending stay marked in the
        file and are brought up to date by the next maintenance, here or in another process."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.wait([self._maintenance])
            self._maintenance = None
        if self._conn is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    # --- plumbing ------------------------------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        use_wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA temp_store=MEMORY")  # rollup recomputation sorts in memory
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{self.path} was written by a newer equipwatch "
                f"(schema {version} > {SCHEMA_VERSION})"
            )
        try:
            conn.executescript(_SCHEMA)
            if version < SCHEMA_VERSION:
                self._upgrade(conn)
            conn.execute(_LATEST_FROM_READINGS)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Bring an older file (or a new one) to this version in one transaction.

        Version 1 had no rollups: build them from its readings, so that history read from
        rollups shows what was written before the upgrade too. Before version 3, ``latest``
        had no pending marks: its rollups were kept on write, so nothing is pending. The
        version is read again under the write lock, in case another process upgraded the file
        meanwhile."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if 0 < version < 2:
                log.info("%s: building rollups from the readings of schema %d", self.path, version)
                for statement in _BACKFILL.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(latest)")}
            if "pending_from_ms" not in columns:
                conn.execute("ALTER TABLE latest ADD COLUMN pending_from_ms INTEGER")
            if "seq" not in columns:
                conn.execute("ALTER TABLE latest ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is not open")
        return self._conn

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, func, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    def _transaction(self, func: Callable[[sqlite3.Connection], _T]) -> _T:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = func(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    def _write(self, batch: _Batch) -> None:
        # known once committed: a batch rolled back added nothing
        _know(self._series, self._transaction(batch.write))

    def _snapshot(self, func: Callable[[sqlite3.Connection], _T]) -> _T:
        """``func``'s reads in one read transaction: one snapshot of the file, even while
        another process writes to it."""
        db = self._db
        db.execute("BEGIN")
        try:
            return func(db)
        finally:
            db.execute("COMMIT")

    # --- writes from the collectors ---------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> None:
        """Write a batch in one transaction; see ``TimeSeriesStore.write``.

        Idempotent on (device, metric, time): ``INSERT OR IGNORE`` keeps the first reading of
        a key, and the rollups, recomputed from raw, see only what raw keeps."""
        if not records:
            return
        # rows are built here, on the event loop, while the store's thread may still be busy
        # with the previous batch: SQLite releases the GIL while it works
        batch = _Batch(records, self._series)
        await self._run(self._write, batch)
        if batch.readings:
            self._written.set()

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        rows = [(d.source, d.topic, d.payload, d.reason, d.detail, _ms(d.ts)) for d in letters]

        def insert(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO dead_letters (source, topic, payload, reason, detail, ts_ms) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

        if rows:
            await self._run(self._transaction, insert)

    # --- time-series reads -----------------------------------------------------------------

    async def latest(self, device_ids: Sequence[str] | None = None) -> list[LatestValue]:
        """The newest reading of every series; see ``TimeSeriesStore.latest``. Kept by
        ``LatestCache``: a call reads the rows of ``latest`` written since the last one."""
        return await self._run(self._latest, device_ids)

    def _latest(self, device_ids: Sequence[str] | None) -> list[LatestValue]:
        # on the store's one thread, so that calls bring the cache up to date one at a time
        cache = self._latest_cache

        def catch_up(db: sqlite3.Connection) -> None:
            (seq,) = db.execute("SELECT seq FROM latest_seq").fetchone()
            if seq == cache.mark:
                return
            with collector_paused():
                rows = db.execute(
                    "SELECT device_id, metric, value, ts_ms, quality FROM latest WHERE seq > ?",
                    (-1 if cache.mark is None else cache.mark,),
                )
                cache.update(latest_values(rows, _dt), seq)

        self._snapshot(catch_up)
        return cache.answer(device_ids)

    async def readings(
        self,
        device_id: str,
        *,
        start: datetime,
        end: datetime,
        metric: str | None = None,
        limit: int = 1000,
    ) -> list[Reading]:
        """Readings of one device in [start, end), oldest first."""

        def query() -> list[Reading]:
            sql = (
                "SELECT device_id, metric, value, ts_ms, quality, raw, width FROM readings "
                "WHERE device_id = ? AND ts_ms >= ? AND ts_ms < ?"
            )
            params: list[object] = [device_id, _ms(start), _ms(end)]
            if metric is not None:
                sql += " AND metric = ?"
                params.append(metric)
            sql += " ORDER BY ts_ms, metric LIMIT ?"
            params.append(limit)
            return [_reading(row) for row in self._db.execute(sql, params)]

        return await self._run(query)

    async def readings_after(
        self, device_id: str, metric: str, after: datetime | None, limit: int = 10_000
    ) -> list[Reading]:
        """Readings of one metric strictly after ``after``, oldest first: the rules' feed."""

        def query() -> list[Reading]:
            rows = self._db.execute(
                "SELECT device_id, metric, value, ts_ms, quality, raw, width FROM readings "
                "WHERE device_id = ? AND metric = ? AND ts_ms > ? ORDER BY ts_ms LIMIT ?",
                (device_id, metric, -1 if after is None else _ms(after), limit),
            )
            return [_reading(row) for row in rows]

        return await self._run(query)

    async def statuses(self) -> dict[str, DeviceStatus]:
        """The most recent status change of every device that has one."""

        def query() -> dict[str, DeviceStatus]:
            rows = self._db.execute("SELECT device_id, online, ts_ms, reason FROM device_status")
            return {d: DeviceStatus(d, bool(o), _dt(t), r) for d, o, t, r in rows}

        return await self._run(query)

    async def faults_after(self, position: int, limit: int = 1000) -> list[tuple[int, FaultEvent]]:
        """Fault events with an id above ``position``, in the order they were stored."""

        def query() -> list[tuple[int, FaultEvent]]:
            rows = self._db.execute(
                "SELECT id, device_id, code, ts_ms, active FROM faults WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (position, limit),
            )
            return [(i, FaultEvent(d, c, _dt(t), bool(a))) for i, d, c, t, a in rows]

        return await self._run(query)

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
        """One metric aggregated per step over [start, end); see ``TimeSeriesStore.history``.

        Each piece of ``plan_history`` is one range scan of its table's primary key, grouped
        in order, read in one snapshot with the series' pending mark (one key lookup in
        ``latest``); the pieces' summaries are merged here.
        """
        check_history(step_seconds, aggregate, resolution)
        start_ms, end_ms = _ms(start), _ms(end)
        step = step_seconds * 1000

        def query(db: sqlite3.Connection) -> list[Bucket]:
            pending = _pending_from(db, device_id, metric)
            segments = plan_history(start_ms, end_ms, step_seconds, resolution, pending)
            parts = [
                Partial(*row)
                for segment in segments
                for row in db.execute(
                    _PARTIALS_SQL[segment.resolution],
                    (step, device_id, metric, segment.start_ms, segment.end_ms),
                )
            ]
            return [Bucket(_dt(p.start_ms), p.value(aggregate)) for p in merge_partials(parts)]

        return await self._run(self._snapshot, query)

    async def rollups(
        self, device_id: str, metric: str, resolution: Resolution, *, start: datetime, end: datetime
    ) -> list[Rollup]:
        """Rollups of one series starting in [start, end); see the contract. Stored rows up
        to the series' pending bucket, and from there raw summarised per bucket."""
        if resolution not in ROLLUPS:
            raise ValueError(f"resolution must be 1m or 1h, not {resolution!r}")
        table = _TABLES[resolution][0]
        width = ROLLUPS[resolution]
        start_ms, end_ms = _ms(start), _ms(end)

        def query(db: sqlite3.Connection) -> list[Rollup]:
            # stored rows for the buckets before the pending one; from there, raw summarised
            # per bucket, over the readings of the buckets that start in [start, end)
            pending = _pending_from(db, device_id, metric)
            first_pending = None if pending is None else pending // width * width
            stale = first_pending is not None and first_pending < end_ms
            stored_end = first_pending if stale and first_pending is not None else end_ms
            rows = db.execute(
                "SELECT bucket_ms, min_value, max_value, sum_value, count, last_ts_ms, "
                f"last_value FROM {table} WHERE device_id = ? AND metric = ? "
                "AND bucket_ms >= ? AND bucket_ms < ? ORDER BY bucket_ms",
                (device_id, metric, start_ms, stored_end),
            ).fetchall()
            if stale:
                raw_start = max(stored_end, -(-start_ms // width) * width)
                raw_end = -(-end_ms // width) * width
                rows += db.execute(
                    _PARTIALS_SQL["raw"], (width, device_id, metric, raw_start, raw_end)
                ).fetchall()
            return [
                Rollup(device_id, metric, _dt(b), lo, hi, total, n, _dt(last_ts), last)
                for b, lo, hi, total, n, last_ts, last in rows
            ]

        return await self._run(self._snapshot, query)

    async def maintain_rollups(self) -> int:
        """Recompute the rollups of every pending series; see ``TimeSeriesStore``.

        A transaction per chunk of series (``ChunkSize``: about 0.1 s each), each a call on
        the store's thread, so that batches being written slip in between; a series marked
        again meanwhile is pending again, for the next run."""
        done = 0
        after: tuple[str, str] | None = None
        size = ChunkSize()

        def chunk(db: sqlite3.Connection) -> tuple[int, tuple[str, str] | None]:
            # timed here, on the store's thread: not the wait behind the batches queued there
            started = time.perf_counter()
            result = _maintain_chunk(db, after=after, limit=size.size)
            size.took(time.perf_counter() - started)
            return result

        while True:
            result: tuple[int, tuple[str, str] | None] = await self._run(self._transaction, chunk)
            count, after = result
            done += count
            if after is None:
                return done

    async def usage(self, device_id: str, metric: str, *, start: datetime, end: datetime) -> float:
        """Counter usage over [start, end); see ``TimeSeriesStore.usage``.

        Both halves are primary-key range scans: the newest reading before ``start`` (one
        seek backwards) and the readings inside the window, streamed through
        ``counter_usage`` without loading them all. Summing in SQL with ``lag()`` took longer
        (SQLite's window functions: 7 to 10 ms for 9,640 readings, against 4 to 5 for this)."""
        key = (device_id, metric)

        def query(db: sqlite3.Connection) -> float:
            before = db.execute(_USAGE_BEFORE, (*key, _ms(start))).fetchall()
            window = db.execute(_USAGE_WINDOW, (*key, _ms(start), _ms(end)))
            return counter_usage(itertools.chain(before, window))

        # one snapshot for both halves, so that a write between them cannot come in twice
        return await self._run(self._snapshot, query)

    async def faults(
        self, device_id: str | None, *, start: datetime, end: datetime
    ) -> list[FaultEvent]:
        """Fault events in [start, end), by time; see ``TimeSeriesStore.faults``."""
        sql = "SELECT device_id, code, ts_ms, active FROM faults WHERE ts_ms >= ? AND ts_ms < ?"
        params: list[object] = [_ms(start), _ms(end)]
        if device_id is not None:
            sql += " AND device_id = ?"
            params.append(device_id)
        sql += " ORDER BY ts_ms, device_id, code, active"

        def query() -> list[FaultEvent]:
            rows = self._db.execute(sql, params)
            return [FaultEvent(d, c, _dt(t), bool(a)) for d, c, t, a in rows]

        return await self._run(query)

    async def status_changes(
        self, device_id: str | None, *, start: datetime, end: datetime
    ) -> list[StatusChange]:
        """Status changes in [start, end), by time; see ``TimeSeriesStore.status_changes``."""
        sql = (
            "SELECT device_id, online, ts_ms, reason FROM status_changes "
            "WHERE ts_ms >= ? AND ts_ms < ?"
        )
        params: list[object] = [_ms(start), _ms(end)]
        if device_id is not None:
            sql += " AND device_id = ?"
            params.append(device_id)
        sql += " ORDER BY ts_ms, device_id"

        def query() -> list[StatusChange]:
            rows = self._db.execute(sql, params)
            return [StatusChange(d, bool(o), _dt(t), r) for d, o, t, r in rows]

        return await self._run(query)

    async def dead_letters(self, limit: int = 100) -> list[StoredDeadLetter]:
        def query() -> list[StoredDeadLetter]:
            rows = self._db.execute(
                "SELECT id, source, topic, payload, reason, detail, ts_ms FROM dead_letters "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            return [StoredDeadLetter(i, s, t, p, r, d, _dt(ms)) for i, s, t, p, r, d, ms in rows]

        return await self._run(query)

    # --- retention ---------------------------------------------------------------------------

    async def apply_retention(
        self,
        now: datetime,
        *,
        raw_days: int | None = None,
        minute_days: int | None = None,
        hour_days: int | None = None,
    ) -> RetentionRun:
        """Delete what is older than each table's period; see ``TimeSeriesStore``.

        First the horizons move, in one short transaction, with the rollups still pending
        below the new raw horizon brought up to date: from its commit on, writes leave older
        readings out of raw and rollups. Then each series' old rows go, by primary-key
        range, at most ``_RETENTION_CHUNK`` rows per transaction and per call on the store's
        thread, so that batches being written slip in between. ``latest`` is never touched.
        SQLite reuses the freed pages; the file does not shrink (that takes a VACUUM).
        """
        wanted = self.retention.replace(raw_days, minute_days, hour_days).cutoffs_ms(now)
        cutoffs = await self._run(self._transaction, partial(_advance_horizons, wanted=wanted))
        series = await self._run(
            lambda: self._db.execute("SELECT device_id, metric FROM latest").fetchall()
        )
        deleted: dict[Resolution, int] = {}
        for resolution, (table, column) in _TABLES.items():
            deleted[resolution] = 0
            for device_id, metric in series:
                while True:
                    chunk = partial(
                        _delete_chunk,
                        table=table,
                        column=column,
                        key=(device_id, metric),
                        cutoff=cutoffs[resolution],
                    )
                    count, done = await self._run(self._transaction, chunk)
                    deleted[resolution] += count
                    if done:
                        break
        return RetentionRun(
            raw_from=_dt(cutoffs["raw"]),
            minute_from=_dt(cutoffs["1m"]),
            hour_from=_dt(cutoffs["1h"]),
            raw_deleted=deleted["raw"],
            minute_deleted=deleted["1m"],
            hour_deleted=deleted["1h"],
        )


_Row = tuple[str, str, int, float, str, int | None, int | None]
"""A row of ``readings``: device_id, metric, ts_ms, value, quality, raw, width."""

_INSERT_READINGS = "INSERT OR IGNORE INTO readings VALUES (?, ?, ?, ?, ?, ?, ?)"

# Every row offered to raw is also offered to ``latest``, by a trigger rather than a second
# executemany: no row's values are bound twice, and no second statement is stepped for each.
# BEFORE, so that it sees the rows that raw ignores too: the newest reading wins (of equal
# times the later one, as the batch goes row by row), and the reading's time moves the series'
# pending mark back when older. Every SET expression sees the row as it was. The WHERE clause
# leaves alone a row that nothing would change (a late reading of a series already pending
# from before it). The rows are stamped with the transaction's change mark, which
# ``_write_readings`` has just taken in ``latest_seq``.
#
# An UPDATE, not an upsert: a series' first reading is inserted into ``latest`` before, by
# ``_ADD_SERIES``, for the few series the store has not seen. Run from this trigger, the upsert
# cost some 2.5 to 3 us a row, the UPDATE 0.6, against 2.3 for the raw insert itself (SQLite
# 3.40, in memory); a trigger that may insert at all, even behind a WHEN that never holds,
# cost the same 2 us more. In the benchmark's writer runs (1M rows, 500 a transaction), the
# store's statements went from 0.73 to a median of 0.82 x a bare raw insert (0.72 to 0.90).
#
# A TEMP trigger, made by each connection the store opens, not a part of the file's schema:
# the file stays readable and writable by any SQLite, and a tool that writes raw readings
# straight into the file (as the benchmark's baseline does) writes only those.
_LATEST_FROM_READINGS = """
CREATE TEMP TRIGGER IF NOT EXISTS latest_from_readings BEFORE INSERT ON main.readings
BEGIN
UPDATE latest SET
    seq = (SELECT seq FROM latest_seq),
    ts_ms = max(ts_ms, new.ts_ms),
    value = CASE WHEN new.ts_ms >= ts_ms THEN new.value ELSE value END,
    quality = CASE WHEN new.ts_ms >= ts_ms THEN new.quality ELSE quality END,
    pending_from_ms = min(coalesce(pending_from_ms, new.ts_ms), new.ts_ms)
WHERE device_id = new.device_id AND metric = new.metric
    AND (new.ts_ms >= ts_ms OR pending_from_ms IS NULL OR new.ts_ms < pending_from_ms);
END
"""

# A series' first row in ``latest``, from its first reading in the batch; the trigger then
# carries every reading of the batch into it, that one included, as for any other series.
# IGNORE: another process may have written the series since this one last looked.
_ADD_SERIES = (
    "INSERT OR IGNORE INTO latest VALUES (?1, ?2, ?3, ?4, ?5, ?3, (SELECT seq FROM latest_seq))"
)

# A reading older than the raw horizon: latest only, and nothing pending (see timeseries).
_UPSERT_LATEST_ONLY = """
INSERT INTO latest VALUES (?1, ?2, ?3, ?4, ?5, NULL, (SELECT seq FROM latest_seq))
ON CONFLICT (device_id, metric) DO UPDATE SET
    seq = excluded.seq, ts_ms = excluded.ts_ms, value = excluded.value, quality = excluded.quality
WHERE excluded.ts_ms >= latest.ts_ms
"""


class _Batch:
    """One ``write``'s records as rows, and the transaction that stores them."""

    __slots__ = ("faults", "new_series", "oldest_ms", "readings", "statuses")

    def __init__(self, records: Sequence[Record], series: dict[str, set[str]]) -> None:
        self.readings: list[_Row] = []
        self.new_series: list[_Row] = []
        """The readings of series not in ``series`` (see ``_write_readings``)."""
        self.faults: list[tuple[str, str, int, int]] = []
        self.statuses: list[tuple[str, int, int, str]] = []
        # a collector stamps every reading of a poll with one datetime, and most readings are
        # good: convert each once (the enum's value is a property, not a plain attribute)
        last_ts: datetime | None = None
        last_ms = oldest_ms = 2**63
        last_quality, quality_value = Quality.GOOD, Quality.GOOD.value
        no_metrics: set[str] = set()
        for record in records:
            if isinstance(record, Reading):
                if record.ts is not last_ts:
                    last_ts = record.ts
                    last_ms = _ms(last_ts)
                    oldest_ms = min(oldest_ms, last_ms)
                if record.quality is not last_quality:
                    last_quality = record.quality
                    quality_value = last_quality.value
                row = (
                    record.device_id,
                    record.metric,
                    last_ms,
                    record.value,
                    quality_value,
                    record.raw,
                    record.width,
                )
                self.readings.append(row)
                if record.metric not in series.get(record.device_id, no_metrics):
                    self.new_series.append(row)
            elif isinstance(record, FaultEvent):
                self.faults.append(
                    (record.device_id, record.code, _ms(record.ts), int(record.active))
                )
            elif isinstance(record, StatusChange):
                self.statuses.append(
                    (record.device_id, _ms(record.ts), int(record.online), record.reason)
                )

        self.oldest_ms = oldest_ms
        """The oldest reading's time (2**63 without readings)."""

    def write(self, db: sqlite3.Connection) -> set[tuple[str, str]]:
        """Store the batch; returns the series it added to ``latest`` (see ``_write_readings``)."""
        added: set[tuple[str, str]] = set()
        if self.readings:
            added = _write_readings(db, self.readings, self.oldest_ms, self.new_series)
        if self.faults:
            db.executemany(
                "INSERT OR IGNORE INTO faults (device_id, code, ts_ms, active) VALUES (?, ?, ?, ?)",
                self.faults,
            )
        if self.statuses:
            db.executemany(
                "INSERT OR IGNORE INTO status_changes VALUES (?, ?, ?, ?)", self.statuses
            )
            db.executemany(
                "INSERT INTO device_status VALUES (?, ?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET online = excluded.online, "
                "ts_ms = excluded.ts_ms, reason = excluded.reason "
                "WHERE excluded.ts_ms >= device_status.ts_ms",
                [(device, online, ts, reason) for device, ts, online, reason in self.statuses],
            )
        return added


def _know(series: dict[str, set[str]], keys: Iterable[tuple[str, str]]) -> None:
    """Count (device, metric) ``keys`` among the ``series`` known to have a row in ``latest``."""
    for device_id, metric in keys:
        series.setdefault(device_id, set()).add(metric)


def _write_readings(
    db: sqlite3.Connection, readings: list[_Row], oldest_ms: int, new_series: list[_Row]
) -> set[tuple[str, str]]:
    """Insert readings into raw and ``latest``, marking their series pending; those older
    than the raw horizon go into ``latest`` only (see ``core.store.timeseries``).

    ``new_series`` are the readings whose series may have no row in ``latest`` yet: every
    other series must have one (rows of ``latest`` are never deleted). Their series get one
    first, from their first reading. Returns the series so offered, for the caller to count
    as known once the transaction commits."""
    horizon_row = db.execute("SELECT cutoff_ms FROM retention WHERE tier = 'raw'").fetchone()
    if horizon_row is None or oldest_ms >= horizon_row[0]:
        kept, past = readings, []
    else:
        horizon = horizon_row[0]
        kept = [row for row in readings if row[2] >= horizon]
        past = [row for row in readings if row[2] < horizon]
        new_series = [row for row in new_series if row[2] >= horizon]
    # the transaction's change mark, which every statement stamps its latest rows with
    db.execute("UPDATE latest_seq SET seq = seq + 1")
    first: dict[tuple[str, str], _Row] = {}
    for row in new_series:
        first.setdefault((row[0], row[1]), row)
    if first:
        db.executemany(_ADD_SERIES, [row[:5] for row in first.values()])
    if kept:
        db.executemany(_INSERT_READINGS, kept)  # and into latest: _LATEST_FROM_READINGS
    if past:
        db.executemany(_UPSERT_LATEST_ONLY, [row[:5] for row in past])
    return set(first)


# A counter's readings for ``usage`` (raw as a float, as ``counter_delta`` takes it): the newest
# before the window, then the window's, oldest first. Two statements rather than one UNION:
# ordering the union costs a sort of the window's readings (some 5 ms for 9,640); each half
# alone comes in key order.
_USAGE_BEFORE = """
SELECT CAST(coalesce(raw, value) AS REAL), width FROM readings
WHERE device_id = ? AND metric = ? AND ts_ms < ? ORDER BY ts_ms DESC LIMIT 1
"""
_USAGE_WINDOW = """
SELECT CAST(coalesce(raw, value) AS REAL), width FROM readings
WHERE device_id = ? AND metric = ? AND ts_ms >= ? AND ts_ms < ? ORDER BY ts_ms
"""


# --- rollup maintenance ---------------------------------------------------------------------

# The pending series of one maintenance chunk: a range of latest's key, bounds ?1 to ?4.
_CHUNK = (
    "l.pending_from_ms IS NOT NULL AND (l.device_id, l.metric) >= (?1, ?2) "
    "AND (l.device_id, l.metric) <= (?3, ?4)"
)

# Minute buckets from the pending time's minute on, recomputed from raw and replaced whole.
# CROSS JOIN makes the pending series the outer loop (SQLite keeps the order as written), so
# each is one seek into raw at its pending minute; the planner might otherwise scan whole
# devices of raw. The newest value is joined back by key: with several min()/max() in one
# query, SQLite's bare-column rule would pick an arbitrary row.
_RECOMPUTE_MINUTES = f"""
INSERT OR REPLACE INTO readings_1m
SELECT g.device_id, g.metric, g.bucket, g.lo, g.hi, g.total, g.n, g.last_ts, r.value
FROM (
    SELECT r.device_id, r.metric, {_floor_sql("r.ts_ms", "60000")} AS bucket,
        min(r.value) AS lo, max(r.value) AS hi, sum(r.value) AS total, count(*) AS n,
        max(r.ts_ms) AS last_ts
    FROM latest AS l
    CROSS JOIN readings AS r ON r.device_id = l.device_id AND r.metric = l.metric
        AND r.ts_ms >= {_floor_sql("l.pending_from_ms", "60000")}
    WHERE {_CHUNK}
    GROUP BY r.device_id, r.metric, bucket
) AS g
JOIN readings AS r ON r.device_id = g.device_id AND r.metric = g.metric AND r.ts_ms = g.last_ts
"""

# Hour buckets from the pending time's hour on, from the (just recomputed) minutes. The minutes
# of those hours are all kept: the minute horizon is never above the raw one.
_RECOMPUTE_HOURS = f"""
INSERT OR REPLACE INTO readings_1h
SELECT g.device_id, g.metric, g.bucket, g.lo, g.hi, g.total, g.n, g.last_ts, m.last_value
FROM (
    SELECT m.device_id, m.metric, {_floor_sql("m.bucket_ms", "3600000")} AS bucket,
        min(m.min_value) AS lo, max(m.max_value) AS hi, sum(m.sum_value) AS total,
        sum(m.count) AS n, max(m.last_ts_ms) AS last_ts
    FROM latest AS l
    CROSS JOIN readings_1m AS m ON m.device_id = l.device_id AND m.metric = l.metric
        AND m.bucket_ms >= {_floor_sql("l.pending_from_ms", "3600000")}
    WHERE {_CHUNK}
    GROUP BY m.device_id, m.metric, bucket
) AS g
JOIN readings_1m AS m ON m.device_id = g.device_id AND m.metric = g.metric
    AND m.bucket_ms = {_floor_sql("g.last_ts", "60000")}
"""

_CLEAR_PENDING = f"UPDATE latest AS l SET pending_from_ms = NULL WHERE {_CHUNK}"


def _maintain_chunk(
    db: sqlite3.Connection,
    *,
    after: tuple[str, str] | None,
    limit: int,
    below: int | None = None,
) -> tuple[int, tuple[str, str] | None]:
    """Recompute the rollups of the next ``limit`` pending series after ``after`` in key
    order (of those pending below ``below``, when given, and any pending in between) and clear
    their marks; how many there were, and the key to go on after (None: that was the last
    chunk)."""
    sql = "SELECT device_id, metric FROM latest WHERE pending_from_ms IS NOT NULL"
    params: list[object] = []
    if below is not None:
        sql += " AND pending_from_ms < ?"
        params.append(below)
    if after is not None:
        sql += " AND (device_id, metric) > (?, ?)"
        params += after
    series = db.execute(sql + " ORDER BY device_id, metric LIMIT ?", [*params, limit])
    keys: list[tuple[str, str]] = series.fetchall()
    if not keys:
        return 0, None
    bounds = (*keys[0], *keys[-1])
    db.execute(_RECOMPUTE_MINUTES, bounds)
    db.execute(_RECOMPUTE_HOURS, bounds)
    done = db.execute(_CLEAR_PENDING, bounds).rowcount
    return done, keys[-1] if len(keys) == limit else None


def _maintain_below(db: sqlite3.Connection, below: int) -> None:
    """Bring up to date, in the caller's transaction, every series pending below ``below``."""
    after: tuple[str, str] | None = None
    while True:
        _, after = _maintain_chunk(db, after=after, limit=1000, below=below)
        if after is None:
            return


def _advance_horizons(
    db: sqlite3.Connection, wanted: dict[Resolution, int]
) -> dict[Resolution, int]:
    """Move each table's horizon forward to its wanted cutoff (never back: what is deleted
    stays deleted, and a reading from there must stay out); the horizons now in force.
    The rollups pending below the new raw horizon are brought up to date first, while the
    raw readings they are computed from are still there."""
    _maintain_below(db, wanted["raw"])
    db.executemany(
        "INSERT INTO retention VALUES (?, ?) ON CONFLICT (tier) DO UPDATE SET "
        "cutoff_ms = max(cutoff_ms, excluded.cutoff_ms)",
        list(wanted.items()),
    )
    rows = db.execute("SELECT tier, cutoff_ms FROM retention").fetchall()
    return {tier: cutoff for tier, cutoff in rows if tier in wanted}


def _delete_chunk(
    db: sqlite3.Connection, *, table: str, column: str, key: tuple[str, str], cutoff: int
) -> tuple[int, bool]:
    """Delete one series' oldest rows before ``cutoff``, at most ``_RETENTION_CHUNK`` of them
    (everything before the time of the row past the chunk); how many, and whether that was all.
    ``table`` and ``column`` come from ``_TABLES``, never from input."""
    beyond = db.execute(
        f"SELECT {column} FROM {table} WHERE device_id = ? AND metric = ? AND {column} < ? "
        f"ORDER BY {column} LIMIT 1 OFFSET ?",
        (*key, cutoff, _RETENTION_CHUNK),
    ).fetchone()
    bound = cutoff if beyond is None else beyond[0]
    cursor = db.execute(
        f"DELETE FROM {table} WHERE device_id = ? AND metric = ? AND {column} < ?",
        (*key, bound),
    )
    return cursor.rowcount, beyond is None


def _pending_from(db: sqlite3.Connection, device_id: str, metric: str) -> int | None:
    """Where the series' rollups stop being exact (None: nowhere); one key lookup."""
    row = db.execute(
        "SELECT pending_from_ms FROM latest WHERE device_id = ? AND metric = ?",
        (device_id, metric),
    ).fetchone()
    return None if row is None else row[0]


def _reading(row: tuple[Any, ...]) -> Reading:
    device_id, metric, value, ts_ms, quality, raw, width = row
    return Reading(device_id, metric, value, _dt(ts_ms), Quality(quality), raw, width)
