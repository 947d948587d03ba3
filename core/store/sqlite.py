"""The embedded store: one SQLite file in WAL mode.

All statements run on one dedicated thread that owns the connection, so the event loop never
blocks on disk and SQLite never sees two writers. Time is stored as integer milliseconds UTC.

PRAGMAs, and why:
- ``journal_mode=WAL``: readers (API, exports, sqlite3 shell) never block the writer.
- ``synchronous=NORMAL``: in WAL mode a commit survives a process crash; only an OS crash or
  power loss can roll back the last commits, for a large gain in write throughput.
- ``busy_timeout``: another process holding the lock briefly (a backup) waits, not fails.

The time-series reads (``latest``, ``history``, ``usage``, ``faults``, ``status_changes``) keep
the contract in ``core.store.timeseries``, which the PostgreSQL store keeps too.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
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
    StoredDeadLetter,
)
from core.store.timeseries import Aggregate, UsageFold, check_history

__all__ = ["SqliteStore"]

_T = TypeVar("_T")

# One SQL expression per aggregate, chosen from this table and never built from input. For
# ``last``, SQLite documents that a bare column next to max() comes from the row holding the max.
_BUCKET_VALUE: dict[Aggregate, str] = {
    "min": "min(value)",
    "max": "max(value)",
    "mean": "avg(value)",
    "count": "count(*)",
    "last": "value, max(ts_ms)",
}

SCHEMA_VERSION = 1

_SCHEMA = """
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


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _opt_dt(ms: int | None) -> datetime | None:
    return None if ms is None else _dt(ms)


class SqliteStore:
    """Time series and records in one SQLite file. Use as ``async with SqliteStore(path)``."""

    def __init__(self, path: Path | str) -> None:
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
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{self.path} was written by a newer equipwatch "
                f"(schema {version} > {SCHEMA_VERSION})"
            )
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._conn = conn

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
        """Write a batch in one transaction. Idempotent on (device, metric, time)."""
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
            db.executemany("INSERT OR IGNORE INTO readings VALUES (?, ?, ?, ?, ?, ?, ?)", readings)
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
    ) -> list[Bucket]:
        """One metric aggregated per step over [start, end); see ``TimeSeriesStore.history``.

        Served by the primary key (device_id, metric, ts_ms): one range scan, grouped in order.
        """
        check_history(step_seconds, aggregate)
        step = step_seconds * 1000
        # ((ts % step) + step) % step floors before the epoch too: SQLite's % truncates
        sql = (
            f"SELECT ts_ms - ((ts_ms % ?) + ?) % ? AS bucket, {_BUCKET_VALUE[aggregate]} "
            "FROM readings WHERE device_id = ? AND metric = ? AND ts_ms >= ? AND ts_ms < ? "
            "GROUP BY bucket ORDER BY bucket"
        )
        params = (step, step, step, device_id, metric, _ms(start), _ms(end))

        def query() -> list[Bucket]:
            rows = self._db.execute(sql, params)
            return [Bucket(_dt(row[0]), float(row[1])) for row in rows]

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


def _reading(row: tuple[Any, ...]) -> Reading:
    device_id, metric, value, ts_ms, quality, raw, width = row
    return Reading(device_id, metric, value, _dt(ts_ms), Quality(quality), raw, width)
