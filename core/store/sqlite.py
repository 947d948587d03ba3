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

Indexes: every time-series table is keyed (device_id, metric, time) and ``WITHOUT ROWID``, and
has no other index. That key serves the idempotent insert, the rollup upserts, history ranges
and retention, which deletes series by series (their list is ``latest``) with a range of the
key each. An index on time alone would let retention delete with one statement, at the price
of a second B-tree on every reading written; retention runs hourly, writes all the time.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from core.errors import StoreError
from core.records import DeadLetter, FaultEvent, Quality, Reading, Record, StatusChange
from core.store.models import (
    Alarm,
    Bucket,
    DeviceStatus,
    LatestValue,
    MaintenanceDue,
    Notice,
    PlanState,
    RetentionRun,
    Rollup,
    StoredDeadLetter,
)
from core.store.timeseries import (
    HOUR_DAYS,
    MINUTE_DAYS,
    RAW_DAYS,
    ROLLUPS,
    Aggregate,
    Partial,
    Resolution,
    Retention,
    UsageFold,
    check_history,
    merge_partials,
    plan_history,
)

__all__ = ["SqliteStore"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

SCHEMA_VERSION = 2
"""2: rollup tables and retention horizons; opening a version 1 file builds the rollups."""

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

CREATE TABLE IF NOT EXISTS latest (
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    quality TEXT NOT NULL,
    PRIMARY KEY (device_id, metric)
) WITHOUT ROWID;

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

CREATE TABLE IF NOT EXISTS plan_state (
    plan_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    cycle INTEGER NOT NULL,
    usage REAL NOT NULL,
    first_value REAL,
    last_raw REAL,
    last_ts_ms INTEGER,
    last_completed_ms INTEGER
);

CREATE TABLE IF NOT EXISTS maintenance_due (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plan_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    cycle INTEGER NOT NULL,
    basis TEXT NOT NULL,
    detail TEXT NOT NULL,
    due_at_ms INTEGER,
    due_value REAL,
    detected_ms INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    UNIQUE (plan_id, cycle)
);

CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    type TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    active INTEGER NOT NULL,
    acknowledged INTEGER NOT NULL DEFAULT 0,
    count INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS alarms_one_active
    ON alarms (device_id, type) WHERE active = 1;

CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    device_id TEXT NOT NULL,
    event_key TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
"""
)


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
    """

    def __init__(
        self,
        path: Path | str,
        *,
        raw_days: int = RAW_DAYS,
        minute_days: int = MINUTE_DAYS,
        hour_days: int = HOUR_DAYS,
    ) -> None:
        self.retention = Retention(raw_days, minute_days, hour_days)
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        try:
            await self._run(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    # --- plumbing ------------------------------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA temp_store=MEMORY")  # the per-batch scratch table never hits disk
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
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Bring an older file (or a new one) to this version in one transaction.

        Version 1 had no rollups: build them from its readings, so that history read from
        rollups shows what was written before the upgrade too. The version is read again under
        the write lock, in case another process upgraded the file meanwhile."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if 0 < version < SCHEMA_VERSION:
                log.info("%s: building rollups from the readings of schema %d", self.path, version)
                for statement in _BACKFILL.split(";"):
                    if statement.strip():
                        conn.execute(statement)
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

    # --- writes from the collectors ---------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> None:
        """Write a batch in one transaction, rollups included; see ``TimeSeriesStore.write``.

        Idempotent on (device, metric, time): a reading the insert ignores (already stored, or
        repeated in the batch) is not merged into the rollups either."""
        if records:
            await self._run(self._transaction, lambda db: self._write(db, records))

    @staticmethod
    def _write(db: sqlite3.Connection, records: Sequence[Record]) -> None:
        readings = []
        faults = []
        statuses = []
        for record in records:
            if isinstance(record, Reading):
                readings.append(
                    (
                        record.device_id,
                        record.metric,
                        _ms(record.ts),
                        record.value,
                        record.quality.value,
                        record.raw,
                        record.width,
                    )
                )
            elif isinstance(record, FaultEvent):
                faults.append((record.device_id, record.code, _ms(record.ts), int(record.active)))
            elif isinstance(record, StatusChange):
                statuses.append(
                    (record.device_id, _ms(record.ts), int(record.online), record.reason)
                )
        if readings:
            _insert_readings(db, readings)
            db.executemany(
                "INSERT INTO latest VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (device_id, metric) DO UPDATE SET "
                "ts_ms = excluded.ts_ms, value = excluded.value, quality = excluded.quality "
                "WHERE excluded.ts_ms >= latest.ts_ms",
                [r[:5] for r in readings],
            )
        if faults:
            db.executemany(
                "INSERT OR IGNORE INTO faults (device_id, code, ts_ms, active) VALUES (?, ?, ?, ?)",
                faults,
            )
        if statuses:
            db.executemany("INSERT OR IGNORE INTO status_changes VALUES (?, ?, ?, ?)", statuses)
            db.executemany(
                "INSERT INTO device_status VALUES (?, ?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET online = excluded.online, "
                "ts_ms = excluded.ts_ms, reason = excluded.reason "
                "WHERE excluded.ts_ms >= device_status.ts_ms",
                [(device, online, ts, reason) for device, ts, online, reason in statuses],
            )

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
        def query() -> list[LatestValue]:
            sql = "SELECT device_id, metric, value, ts_ms, quality FROM latest"
            params: list[str] = []
            if device_ids is not None:
                sql += f" WHERE device_id IN ({','.join('?' * len(device_ids))})"
                params = list(device_ids)
            rows = self._db.execute(sql + " ORDER BY device_id, metric", params).fetchall()
            return [LatestValue(d, m, v, _dt(t), Quality(q)) for d, m, v, t, q in rows]

        return await self._run(query)

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
        in order; the pieces' summaries are merged here.
        """
        check_history(step_seconds, aggregate, resolution)
        segments = plan_history(_ms(start), _ms(end), step_seconds, resolution)
        step = step_seconds * 1000

        def query() -> list[Bucket]:
            parts = (
                Partial(*row)
                for segment in segments
                for row in self._db.execute(
                    _PARTIALS_SQL[segment.resolution],
                    (step, device_id, metric, segment.start_ms, segment.end_ms),
                )
            )
            return [Bucket(_dt(p.start_ms), p.value(aggregate)) for p in merge_partials(parts)]

        return await self._run(query)

    async def rollups(
        self, device_id: str, metric: str, resolution: Resolution, *, start: datetime, end: datetime
    ) -> list[Rollup]:
        """Stored rollups of one series starting in [start, end); see the contract."""
        if resolution not in ROLLUPS:
            raise ValueError(f"resolution must be 1m or 1h, not {resolution!r}")
        table = _TABLES[resolution][0]

        def query() -> list[Rollup]:
            rows = self._db.execute(
                "SELECT bucket_ms, min_value, max_value, sum_value, count, last_ts_ms, "
                f"last_value FROM {table} WHERE device_id = ? AND metric = ? "
                "AND bucket_ms >= ? AND bucket_ms < ? ORDER BY bucket_ms",
                (device_id, metric, _ms(start), _ms(end)),
            )
            return [
                Rollup(device_id, metric, _dt(b), lo, hi, total, n, _dt(last_ts), last)
                for b, lo, hi, total, n, last_ts, last in rows
            ]

        return await self._run(query)

    async def usage(self, device_id: str, metric: str, *, start: datetime, end: datetime) -> float:
        """Counter usage over [start, end); see ``TimeSeriesStore.usage``.

        Both halves are primary-key range scans: the newest reading before ``start`` (one
        seek backwards) and the readings inside the window, folded without loading them all.
        """
        params = (device_id, metric, _ms(start), device_id, metric, _ms(start), _ms(end))

        def query() -> float:
            rows = self._db.execute(
                "SELECT counter, width FROM ("
                "  SELECT * FROM ("
                "    SELECT ts_ms, coalesce(raw, value) AS counter, width FROM readings"
                "    WHERE device_id = ? AND metric = ? AND ts_ms < ?"
                "    ORDER BY ts_ms DESC LIMIT 1)"
                "  UNION ALL"
                "  SELECT ts_ms, coalesce(raw, value), width FROM readings"
                "  WHERE device_id = ? AND metric = ? AND ts_ms >= ? AND ts_ms < ?"
                ") ORDER BY ts_ms",
                params,
            )
            fold = UsageFold()
            for counter, width in rows:
                fold.add(float(counter), width)
            return fold.usage

        return await self._run(query)

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

        First the horizons move, in one short transaction: from its commit on, writes leave
        older readings out of raw and rollups. Then each series' old rows go, by primary-key
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

    # --- records kept by the rules ---------------------------------------------------------

    async def cursor(self, name: str) -> int:
        def query() -> int:
            row = self._db.execute(
                "SELECT position FROM cursors WHERE name = ?", (name,)
            ).fetchone()
            return 0 if row is None else int(row[0])

        return await self._run(query)

    async def set_cursor(self, name: str, position: int) -> None:
        def update() -> None:
            self._db.execute(
                "INSERT INTO cursors VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (name, position),
            )

        await self._run(update)

    async def plan_states(self) -> dict[str, PlanState]:
        def query() -> dict[str, PlanState]:
            rows = self._db.execute(
                "SELECT plan_id, device_id, started_ms, cycle, usage, first_value, last_raw, "
                "last_ts_ms, last_completed_ms FROM plan_state"
            )
            return {
                p: PlanState(p, d, _dt(s), c, u, f, r, _opt_dt(lt), _opt_dt(lc))
                for p, d, s, c, u, f, r, lt, lc in rows
            }

        return await self._run(query)

    async def save_plan_state(self, state: PlanState) -> None:
        row = (
            state.plan_id,
            state.device_id,
            _ms(state.started),
            state.cycle,
            state.usage,
            state.first_value,
            state.last_raw,
            None if state.last_ts is None else _ms(state.last_ts),
            None if state.last_completed is None else _ms(state.last_completed),
        )

        def upsert() -> None:
            self._db.execute(
                "INSERT OR REPLACE INTO plan_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row
            )

        await self._run(upsert)

    async def open_due(
        self,
        *,
        plan_id: str,
        device_id: str,
        cycle: int,
        basis: str,
        detail: str,
        due_at: datetime | None,
        due_value: float | None,
        detected: datetime,
        notice_subject: str,
    ) -> bool:
        """Record that a plan's ``cycle``-th occurrence is due, with its notice, once.

        Returns True when this call recorded it, False when it was already recorded: the
        (plan, cycle) key makes re-evaluation and catch-up idempotent.
        """

        def insert(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO maintenance_due (plan_id, device_id, cycle, basis, detail, "
                "due_at_ms, due_value, detected_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    plan_id,
                    device_id,
                    cycle,
                    basis,
                    detail,
                    None if due_at is None else _ms(due_at),
                    due_value,
                    _ms(detected),
                ),
            )
            if cursor.rowcount == 0:
                return False
            db.execute(
                "INSERT OR IGNORE INTO notices (kind, device_id, event_key, subject, created_ms) "
                "VALUES ('maintenance_due', ?, ?, ?, ?)",
                (device_id, f"due:{plan_id}:{cycle}", notice_subject, _ms(detected)),
            )
            return True

        return await self._run(self._transaction, insert)

    async def maintenance_due(self) -> list[MaintenanceDue]:
        def query() -> list[MaintenanceDue]:
            rows = self._db.execute(
                "SELECT id, plan_id, device_id, cycle, basis, detail, due_at_ms, due_value, "
                "detected_ms FROM maintenance_due WHERE done = 0 ORDER BY detected_ms, id"
            )
            return [
                MaintenanceDue(i, p, d, c, b, det, _opt_dt(at), v, _dt(found))
                for i, p, d, c, b, det, at, v, found in rows
            ]

        return await self._run(query)

    async def raise_alarm(
        self, *, device_id: str, type: str, severity: str, message: str, ts: datetime
    ) -> None:
        """Open an alarm, or count a repeat on the one already active for (device, type)."""

        def upsert() -> None:
            self._db.execute(
                "INSERT INTO alarms (device_id, type, severity, message, active, count, "
                "first_seen_ms, last_seen_ms) VALUES (?, ?, ?, ?, 1, 1, ?, ?) "
                "ON CONFLICT (device_id, type) WHERE active = 1 DO UPDATE SET "
                "count = count + 1, last_seen_ms = max(last_seen_ms, excluded.last_seen_ms), "
                "message = excluded.message",
                (device_id, type, severity, message, _ms(ts), _ms(ts)),
            )

        await self._run(upsert)

    async def clear_alarm(self, *, device_id: str, type: str, ts: datetime) -> None:
        def update() -> None:
            self._db.execute(
                "UPDATE alarms SET active = 0, last_seen_ms = max(last_seen_ms, ?) "
                "WHERE device_id = ? AND type = ? AND active = 1",
                (_ms(ts), device_id, type),
            )

        await self._run(update)

    async def alarms(self, *, active_only: bool = False) -> list[Alarm]:
        def query() -> list[Alarm]:
            sql = (
                "SELECT id, device_id, type, severity, message, active, acknowledged, count, "
                "first_seen_ms, last_seen_ms FROM alarms"
            )
            if active_only:
                sql += " WHERE active = 1"
            rows = self._db.execute(sql + " ORDER BY last_seen_ms DESC, id DESC")
            return [
                Alarm(i, d, t, s, m, bool(a), bool(k), c, _dt(f), _dt(last))
                for i, d, t, s, m, a, k, c, f, last in rows
            ]

        return await self._run(query)

    async def notices(self) -> list[Notice]:
        def query() -> list[Notice]:
            rows = self._db.execute(
                "SELECT id, kind, device_id, subject, created_ms FROM notices ORDER BY id"
            )
            return [Notice(i, k, d, s, _dt(c)) for i, k, d, s, c in rows]

        return await self._run(query)


# The batch being written, deduplicated by key (the first of a key wins, as in readings): a
# temporary table, so that finding the new readings and merging them into the rollups are each
# one set-based statement rather than Python work per reading.
_BATCH_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS batch_readings (
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    quality TEXT NOT NULL,
    raw INTEGER,
    width INTEGER,
    PRIMARY KEY (device_id, metric, ts_ms)
) WITHOUT ROWID
"""


def _merge_batch_sql(table: str, width: str) -> str:
    """Merge the new readings of the batch into one rollup table, bucket by bucket. The newest
    value is joined back by key: with several min()/max() in one query, SQLite's bare-column
    rule would pick an arbitrary row. ``WHERE true`` keeps ON CONFLICT from parsing as a join."""
    return f"""
INSERT INTO {table}
SELECT g.device_id, g.metric, g.bucket, g.lo, g.hi, g.total, g.n, g.last_ts, b.value
FROM (
    SELECT device_id, metric, {_floor_sql("ts_ms", width)} AS bucket, min(value) AS lo,
        max(value) AS hi, sum(value) AS total, count(*) AS n, max(ts_ms) AS last_ts
    FROM batch_readings GROUP BY device_id, metric, bucket
) AS g
JOIN batch_readings AS b ON b.device_id = g.device_id AND b.metric = g.metric
    AND b.ts_ms = g.last_ts
WHERE true
ON CONFLICT (device_id, metric, bucket_ms) DO UPDATE SET
    min_value = min(min_value, excluded.min_value),
    max_value = max(max_value, excluded.max_value),
    sum_value = sum_value + excluded.sum_value,
    count = count + excluded.count,
    last_value = CASE WHEN excluded.last_ts_ms > last_ts_ms
        THEN excluded.last_value ELSE last_value END,
    last_ts_ms = max(last_ts_ms, excluded.last_ts_ms)
"""


_MERGE_BATCH_SQL = {"1m": _merge_batch_sql("readings_1m", "60000"),
                    "1h": _merge_batch_sql("readings_1h", "3600000")}  # fmt: skip


def _insert_readings(db: sqlite3.Connection, readings: Sequence[tuple[Any, ...]]) -> None:
    """Insert readings (rows of the readings table) and merge those actually inserted into
    the rollups; leave out those older than the raw horizon (see ``core.store.timeseries``).

    Only new readings may be merged, or a replay would count twice: the batch goes into a
    temporary table, the keys already stored are removed from it, and what is left is both
    inserted and merged, each in one statement.
    """
    horizon_row = db.execute("SELECT cutoff_ms FROM retention WHERE tier = 'raw'").fetchone()
    horizon = None if horizon_row is None else horizon_row[0]
    rows = readings if horizon is None else [row for row in readings if row[2] >= horizon]
    if not rows:
        return
    db.execute(_BATCH_TABLE)
    db.execute("DELETE FROM batch_readings")
    db.executemany("INSERT OR IGNORE INTO batch_readings VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute(
        "DELETE FROM batch_readings WHERE EXISTS (SELECT 1 FROM readings AS r "
        "WHERE r.device_id = batch_readings.device_id AND r.metric = batch_readings.metric "
        "AND r.ts_ms = batch_readings.ts_ms)"
    )
    if db.execute("INSERT INTO readings SELECT * FROM batch_readings").rowcount == 0:
        return
    db.execute(_MERGE_BATCH_SQL["1m"])
    db.execute(_MERGE_BATCH_SQL["1h"])


def _advance_horizons(
    db: sqlite3.Connection, wanted: dict[Resolution, int]
) -> dict[Resolution, int]:
    """Move each table's horizon forward to its wanted cutoff (never back: what is deleted
    stays deleted, and a reading from there must stay out); the horizons now in force."""
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


def _reading(row: tuple[Any, ...]) -> Reading:
    device_id, metric, value, ts_ms, quality, raw, width = row
    return Reading(device_id, metric, value, _dt(ts_ms), Quality(quality), raw, width)
