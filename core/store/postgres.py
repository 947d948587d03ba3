"""The time series in PostgreSQL, through asyncpg: the same contract as the SQLite file.

Use as ``async with PostgresStore(dsn, schema="equipwatch") as store``. Opening creates the
schema and its tables when missing, under an advisory lock so that two processes starting
together do not race on ``CREATE TABLE``. Every name is qualified with the schema, so nothing
depends on the connection's ``search_path`` and tests can isolate themselves in a schema each.

Choices, and why:
- readings go in with ``COPY`` into a per-connection temporary table, then one
  ``INSERT … SELECT … ON CONFLICT DO NOTHING``: COPY is the fastest way in (FIELD-NOTES:
  ~110k rows/s in batches of 1,000) and the conflict clause makes a replayed batch a no-op;
- ``latest`` is kept on write, as in SQLite: finding it with ``DISTINCT ON`` or ``GROUP BY``
  takes seconds at 10k series, reading this table takes well under a millisecond per device;
- text keys are ``COLLATE "C"``: byte order, as SQLite sorts, whatever the database's locale,
  and cheaper comparisons in every index;
- when the TimescaleDB extension is available a new readings table becomes a hypertable
  (chunked by time, so old data is dropped or compressed a chunk at a time); otherwise it is a
  plain table. Either way the primary key (device_id, metric, ts) serves every read;
- rollups (``readings_1m``, ``readings_1h``; see ``core.store.timeseries``) are merged in by
  the same statement that inserts the readings, from its ``RETURNING`` rows: exactly the
  readings that were new, so a replay merges nothing, and ``ON CONFLICT DO UPDATE`` adds to
  the row as committed, so concurrent writers to one bucket both count. They are plain tables
  keyed (device_id, metric, bucket), which serves the upsert, history ranges and retention;
- retention deletes series by series (their list is ``latest``), each a range of the primary
  key, so no index on time alone is needed for it. Before deleting, it records the new raw
  horizon under ``LOCK TABLE readings IN SHARE MODE``, which waits for the write transactions
  in flight and holds new ones back until it commits: every write statement then either ran
  wholly before the horizon moved or sees it, so a replayed reading can never slip in under
  the horizon while its stored twin is being deleted, and be merged twice.

Errors from asyncpg and the socket underneath are translated into ``StoreError`` here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from asyncpg.exceptions import InternalClientError
from asyncpg.pool import PoolConnectionProxy

from core.errors import StoreError
from core.records import FaultEvent, Quality, Reading, Record, StatusChange
from core.store.models import Bucket, LatestValue, RetentionRun, Rollup
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

__all__ = ["PostgresStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""2: rollup tables and retention horizons; opening a version 1 schema builds the rollups."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# What asyncpg and the network can raise at us; all of it leaves this module as StoreError.
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    InternalClientError,
    OSError,
    TimeoutError,
)

_STAGING = "equipwatch_readings_in"

# The batch's readings land here first. Created once per connection and emptied by every commit,
# so batches cause no catalog churn (ON COMMIT DROP would create and drop a table per batch).
_STAGING_TABLE = f"""
    CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGING} (
        n integer NOT NULL,
        device_id text COLLATE "C" NOT NULL,
        metric text COLLATE "C" NOT NULL,
        ts timestamptz NOT NULL,
        value double precision NOT NULL,
        quality text NOT NULL,
        raw bigint,
        width smallint
    ) ON COMMIT DELETE ROWS
    """

_MS = timedelta(milliseconds=1)

_ORIGIN = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"

# Each table, with its time column: the names that SQL is built from, never input.
_TABLES: dict[Resolution, tuple[str, str]] = {
    "raw": ("readings", "ts"),
    "1m": ("readings_1m", "bucket"),
    "1h": ("readings_1h", "bucket"),
}

_WIDTH: dict[Resolution, str] = {"1m": "INTERVAL '1 minute'", "1h": "INTERVAL '1 hour'"}


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _to_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _MS


def _at(moment: datetime) -> datetime:
    """``moment`` truncated to the millisecond, by the same rule as the SQLite store, so that
    both backends see the same key for the same reading."""
    return _EPOCH + timedelta(milliseconds=int(moment.timestamp() * 1000))


@dataclass(frozen=True, slots=True)
class _Sql:
    """Every statement, built once with the schema name quoted in."""

    schema: str

    @property
    def tables(self) -> str:
        s = self.schema
        return f"""
        CREATE TABLE IF NOT EXISTS {s}.meta (
            key text PRIMARY KEY,
            value text NOT NULL
        );
        CREATE TABLE IF NOT EXISTS {s}.latest (
            device_id text COLLATE "C" NOT NULL,
            metric text COLLATE "C" NOT NULL,
            ts timestamptz NOT NULL,
            value double precision NOT NULL,
            quality text NOT NULL,
            PRIMARY KEY (device_id, metric)
        );
        -- (device, ts) first: one device's window is a range scan of the key
        CREATE TABLE IF NOT EXISTS {s}.faults (
            device_id text COLLATE "C" NOT NULL,
            ts timestamptz NOT NULL,
            code text COLLATE "C" NOT NULL,
            active boolean NOT NULL,
            PRIMARY KEY (device_id, ts, code, active)
        );
        -- fault windows across all devices (the practice's last day) without a full scan
        CREATE INDEX IF NOT EXISTS faults_by_time ON {s}.faults (ts);
        CREATE TABLE IF NOT EXISTS {s}.status_changes (
            device_id text COLLATE "C" NOT NULL,
            ts timestamptz NOT NULL,
            online boolean NOT NULL,
            reason text NOT NULL,
            PRIMARY KEY (device_id, ts)
        );
        -- status windows across all devices; one device's window is served by the key
        CREATE INDEX IF NOT EXISTS status_changes_by_time ON {s}.status_changes (ts);
        -- where each table's retained data starts ('raw', '1m', '1h'): only ever moves forward
        CREATE TABLE IF NOT EXISTS {s}.retention (
            tier text PRIMARY KEY,
            cutoff timestamptz NOT NULL
        );
        {self._rollup_table("readings_1m")}
        {self._rollup_table("readings_1h")}
        """

    def _rollup_table(self, name: str) -> str:
        # the key serves the merge on write, history ranges and retention's per-series deletes
        return f"""
        CREATE TABLE IF NOT EXISTS {self.schema}.{name} (
            device_id text COLLATE "C" NOT NULL,
            metric text COLLATE "C" NOT NULL,
            bucket timestamptz NOT NULL,
            min_value double precision NOT NULL,
            max_value double precision NOT NULL,
            sum_value double precision NOT NULL,
            count bigint NOT NULL,
            last_ts timestamptz NOT NULL,
            last_value double precision NOT NULL,
            PRIMARY KEY (device_id, metric, bucket)
        );
        """

    @property
    def readings_table(self) -> str:
        # The key serves idempotent writes, history and usage ranges, and the backward seek
        # for the reading before a window; it includes ts, as a hypertable's unique keys must.
        return f"""
        CREATE TABLE {self.schema}.readings (
            device_id text COLLATE "C" NOT NULL,
            metric text COLLATE "C" NOT NULL,
            ts timestamptz NOT NULL,
            value double precision NOT NULL,
            quality text NOT NULL,
            raw bigint,
            width smallint,
            PRIMARY KEY (device_id, metric, ts)
        )
        """

    @property
    def insert_readings(self) -> str:
        # In key order, and of two readings with one key in batch order, so that the first is
        # kept, as in SQLite; none older than the raw horizon. Key order makes concurrent
        # batches that share readings (a replay racing its original) wait for each other
        # rather than deadlock, as they did when inserting in batch order. RETURNING yields
        # exactly the rows inserted, which both rollups merge in; the GROUP BY gives each
        # bucket one row, as ON CONFLICT DO UPDATE requires, and the ORDER BY makes
        # concurrent batches lock buckets in one order too.
        s = self.schema
        return f"""
        WITH fresh AS (
            INSERT INTO {s}.readings (device_id, metric, ts, value, quality, raw, width)
            SELECT device_id, metric, ts, value, quality, raw, width
            FROM pg_temp.{_STAGING}
            WHERE ts >= coalesce(
                (SELECT cutoff FROM {s}.retention WHERE tier = 'raw'), '-infinity')
            ORDER BY device_id, metric, ts, n
            ON CONFLICT (device_id, metric, ts) DO NOTHING
            RETURNING device_id, metric, ts, value
        ), minutes AS (
            {self._merge("readings_1m", "1m")}
        )
        {self._merge("readings_1h", "1h")}
        """

    def _merge(self, table: str, resolution: Resolution) -> str:
        # SET expressions see the row as it was, so last_value compares with the old last_ts
        return f"""
        INSERT INTO {self.schema}.{table} AS cur
            (device_id, metric, bucket, min_value, max_value, sum_value, count, last_ts,
             last_value)
        SELECT device_id, metric, date_bin({_WIDTH[resolution]}, ts, {_ORIGIN}) AS bucket,
            min(value), max(value), sum(value), count(*), max(ts),
            (array_agg(value ORDER BY ts DESC))[1]
        FROM fresh GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
            min_value = least(cur.min_value, excluded.min_value),
            max_value = greatest(cur.max_value, excluded.max_value),
            sum_value = cur.sum_value + excluded.sum_value,
            count = cur.count + excluded.count,
            last_value = CASE WHEN excluded.last_ts > cur.last_ts
                THEN excluded.last_value ELSE cur.last_value END,
            last_ts = greatest(cur.last_ts, excluded.last_ts)
        """

    @property
    def backfill(self) -> str:
        """A version 1 schema's readings summarised into the new rollups, hours from minutes."""
        s = self.schema
        return f"""
        INSERT INTO {s}.readings_1m
        SELECT device_id, metric, date_bin(INTERVAL '1 minute', ts, {_ORIGIN}) AS bucket,
            min(value), max(value), sum(value), count(*), max(ts),
            (array_agg(value ORDER BY ts DESC))[1]
        FROM {s}.readings GROUP BY 1, 2, 3;
        INSERT INTO {s}.readings_1h
        SELECT device_id, metric, date_bin(INTERVAL '1 hour', bucket, {_ORIGIN}) AS bucket,
            min(min_value), max(max_value), sum(sum_value), sum(count), max(last_ts),
            (array_agg(last_value ORDER BY last_ts DESC))[1]
        FROM {s}.readings_1m GROUP BY 1, 2, 3;
        """

    def partials(self, resolution: Resolution) -> str:
        """One table's part of a history: per history bucket ($3) the merge-able summary of one
        series' rows in [$4, $5), the newest value joined back by key (the reading at the
        greatest time, or the rollup row holding it)."""
        table, column = _TABLES[resolution]
        if resolution == "raw":
            summary = "min(value), max(value), sum(value), count(*), max(ts)"
            newest, match = "r.value", "r.ts = g.last_ts"
        else:
            summary = (
                "min(min_value), max(max_value), sum(sum_value), sum(count)::bigint, max(last_ts)"
            )
            newest = "r.last_value"
            match = f"r.bucket = date_bin({_WIDTH[resolution]}, g.last_ts, {_ORIGIN})"
        return f"""
        SELECT g.bucket, g.lo, g.hi, g.total, g.n, g.last_ts, {newest} FROM (
            SELECT date_bin($3::interval, {column}, {_ORIGIN}) AS bucket, {summary}
            FROM {self.schema}.{table}
            WHERE device_id = $1 AND metric = $2 AND {column} >= $4 AND {column} < $5
            GROUP BY 1
        ) AS g (bucket, lo, hi, total, n, last_ts)
        JOIN {self.schema}.{table} AS r ON r.device_id = $1 AND r.metric = $2 AND {match}
        ORDER BY g.bucket
        """

    @property
    def update_latest(self) -> str:
        # One row per key (ON CONFLICT DO UPDATE may touch a row once per statement): the
        # newest, and of equal times the last in the batch, as SQLite's row-by-row upsert
        # does. Sorting by key also makes concurrent batches lock rows in one order.
        return f"""
        INSERT INTO {self.schema}.latest AS cur (device_id, metric, ts, value, quality)
        SELECT DISTINCT ON (device_id, metric) device_id, metric, ts, value, quality
        FROM pg_temp.{_STAGING} ORDER BY device_id, metric, ts DESC, n DESC
        ON CONFLICT (device_id, metric) DO UPDATE
            SET ts = excluded.ts, value = excluded.value, quality = excluded.quality
            WHERE excluded.ts >= cur.ts
        """

    @property
    def insert_fault(self) -> str:
        return (
            f"INSERT INTO {self.schema}.faults (device_id, code, ts, active) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
        )

    @property
    def insert_status(self) -> str:
        return (
            f"INSERT INTO {self.schema}.status_changes (device_id, ts, online, reason) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
        )


class PostgresStore:
    """The time series in a PostgreSQL schema. Use as ``async with PostgresStore(dsn)``.

    ``schema`` names the schema the tables live in (created when missing); ``pool_size``
    bounds the connections, enough for the writer, the rules and the API to overlap.
    ``raw_days``, ``minute_days`` and ``hour_days`` are the retention periods that
    ``apply_retention`` applies unless told otherwise (see ``Retention``).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "equipwatch",
        pool_size: int = 4,
        connect_timeout: float = 10.0,
        raw_days: int = RAW_DAYS,
        minute_days: int = MINUTE_DAYS,
        hour_days: int = HOUR_DAYS,
    ) -> None:
        if not schema or len(schema.encode()) > 63:
            raise ValueError(f"a PostgreSQL schema name has 1 to 63 bytes, not {schema!r}")
        self.retention = Retention(raw_days, minute_days, hour_days)
        self.schema = schema
        self.hypertable = False
        """True when readings live in a TimescaleDB hypertable (known once open)."""
        self._dsn = dsn
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._sql = _Sql(_quote_ident(schema))

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        with self._translated("connecting"):
            try:
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=self._pool_size,
                    timeout=self._connect_timeout,
                )
            except ValueError as exc:  # a DSN that does not parse
                raise StoreError(f"PostgreSQL DSN: {exc}") from exc
        try:
            with self._translated("creating the schema"):
                async with pool.acquire() as conn, conn.transaction():
                    await self._create_schema(conn)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def close(self) -> None:
        """Close the pool. Never raises for a server that went away: the caller is leaving,
        and an error here would hide the one that made it leave."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self._connect_timeout)
        except _DRIVER_ERRORS as exc:
            log.warning("PostgreSQL store %r: closing failed (%s); terminating", self.schema, exc)
            pool.terminate()

    # --- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except _DRIVER_ERRORS as exc:
            # the DSN stays out of the message: it may hold a password
            message = f"PostgreSQL store {self.schema!r}: {action} failed: {exc}"
            raise StoreError(message) from exc

    @property
    def _connections(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the store is not open")
        return self._pool

    async def _create_schema(self, conn: PoolConnectionProxy) -> None:
        s = self._sql.schema
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('equipwatch schema ' || $1))", self.schema
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        await conn.execute(self._sql.tables)
        version = await conn.fetchval(f"SELECT value FROM {s}.meta WHERE key = 'schema_version'")
        if version is not None and int(version) > SCHEMA_VERSION:
            raise StoreError(
                f"PostgreSQL schema {self.schema!r} was written by a newer equipwatch "
                f"(schema {version} > {SCHEMA_VERSION})"
            )
        await conn.execute(
            f"INSERT INTO {s}.meta VALUES ('schema_version', $1) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            str(SCHEMA_VERSION),
        )
        readings = f"{s}.readings"
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", readings)
        if exists and version is not None and int(version) < 2:
            # version 1 had no rollups: build them, so that history read from rollups shows
            # what was written before the upgrade too (the tables are new and empty)
            log.info("PostgreSQL store %r: building rollups from the readings", self.schema)
            await conn.execute(self._sql.backfill)
        timescale = await _timescaledb(conn)
        if not exists:
            await conn.execute(self._sql.readings_table)
            if timescale:
                # no default index on ts alone: every query names a device and a metric
                await conn.execute(
                    "SELECT create_hypertable($1::regclass, 'ts', if_not_exists => TRUE, "
                    "create_default_indexes => FALSE)",
                    readings,
                )
        self.hypertable = timescale and bool(
            await conn.fetchval(
                "SELECT 1 FROM timescaledb_information.hypertables "
                "WHERE hypertable_schema = $1 AND hypertable_name = 'readings'",
                self.schema,
            )
        )
        if self.hypertable:
            log.info("PostgreSQL store %r: readings in a TimescaleDB hypertable", self.schema)
        elif timescale:
            log.info(
                "PostgreSQL store %r: readings stay in their existing plain table; converting "
                "it is an operator's call (create_hypertable(..., migrate_data => true))",
                self.schema,
            )
        else:
            log.info(
                "PostgreSQL store %r: readings in a plain indexed table "
                "(TimescaleDB is not available on this server)",
                self.schema,
            )

    # --- writes ----------------------------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> None:
        """Write a batch in one transaction. Idempotent on each record's natural key."""
        readings: list[tuple[object, ...]] = []
        faults: list[tuple[object, ...]] = []
        statuses: list[tuple[object, ...]] = []
        for record in records:
            if isinstance(record, Reading):
                readings.append(
                    (
                        len(readings),
                        record.device_id,
                        record.metric,
                        _at(record.ts),
                        record.value,
                        record.quality.value,
                        record.raw,
                        record.width,
                    )
                )
            elif isinstance(record, FaultEvent):
                faults.append((record.device_id, record.code, _at(record.ts), record.active))
            elif isinstance(record, StatusChange):
                statuses.append((record.device_id, _at(record.ts), record.online, record.reason))
        if not (readings or faults or statuses):
            return
        with self._translated("write"):
            async with self._connections.acquire() as conn, conn.transaction():
                if readings:
                    await conn.execute(_STAGING_TABLE)
                    await conn.copy_records_to_table(
                        _STAGING,
                        schema_name="pg_temp",
                        columns=(
                            "n",
                            "device_id",
                            "metric",
                            "ts",
                            "value",
                            "quality",
                            "raw",
                            "width",
                        ),
                        records=readings,
                    )
                    await conn.execute(self._sql.insert_readings)
                    await conn.execute(self._sql.update_latest)
                if faults:
                    await conn.executemany(self._sql.insert_fault, faults)
                if statuses:
                    await conn.executemany(self._sql.insert_status, statuses)

    # --- reads -----------------------------------------------------------------------------

    async def latest(self, device_ids: Sequence[str] | None = None) -> list[LatestValue]:
        """The newest value of every (device, metric): one primary-key seek per device."""
        sql = f"SELECT device_id, metric, value, ts, quality FROM {self._sql.schema}.latest"
        args: list[object] = []
        if device_ids is not None:
            sql += " WHERE device_id = ANY($1::text[])"
            args.append(list(device_ids))
        with self._translated("reading latest values"):
            rows = await self._connections.fetch(sql + " ORDER BY device_id, metric", *args)
        return [LatestValue(r[0], r[1], r[2], r[3], Quality(r[4])) for r in rows]

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

        Each piece of ``plan_history`` is one primary-key range scan of its table, on one
        connection; the pieces' summaries are merged here. ``date_bin`` with the epoch as
        origin aligns buckets to multiples of the step, where TimescaleDB's ``time_bucket``
        would align week-long steps to a Monday in 2000.
        """
        check_history(step_seconds, aggregate, resolution)
        segments = plan_history(_to_ms(_at(start)), _to_ms(_at(end)), step_seconds, resolution)
        step = timedelta(seconds=step_seconds)
        parts: list[Partial] = []
        with self._translated("reading history"):
            async with self._connections.acquire() as conn:
                for segment in segments:
                    rows = await conn.fetch(
                        self._sql.partials(segment.resolution),
                        device_id,
                        metric,
                        step,
                        _from_ms(segment.start_ms),
                        _from_ms(segment.end_ms),
                    )
                    parts.extend(
                        Partial(_to_ms(r[0]), r[1], r[2], r[3], r[4], _to_ms(r[5]), r[6])
                        for r in rows
                    )
        return [Bucket(_from_ms(p.start_ms), p.value(aggregate)) for p in merge_partials(parts)]

    async def rollups(
        self, device_id: str, metric: str, resolution: Resolution, *, start: datetime, end: datetime
    ) -> list[Rollup]:
        """Stored rollups of one series starting in [start, end); see the contract."""
        if resolution not in ROLLUPS:
            raise ValueError(f"resolution must be 1m or 1h, not {resolution!r}")
        sql = (
            "SELECT bucket, min_value, max_value, sum_value, count, last_ts, last_value "
            f"FROM {self._sql.schema}.{_TABLES[resolution][0]} "
            "WHERE device_id = $1 AND metric = $2 AND bucket >= $3 AND bucket < $4 "
            "ORDER BY bucket"
        )
        with self._translated("reading rollups"):
            rows = await self._connections.fetch(sql, device_id, metric, _at(start), _at(end))
        return [Rollup(device_id, metric, *r) for r in rows]

    async def usage(self, device_id: str, metric: str, *, start: datetime, end: datetime) -> float:
        """Counter usage over [start, end): the reading before the window (one backward seek
        of the primary key) and the window's readings, streamed through a cursor so that a
        year of readings is never held in memory at once."""
        table = f"{self._sql.schema}.readings"
        sql = (
            "SELECT raw, value, width FROM ("
            f"  (SELECT ts, raw, value, width FROM {table}"
            "    WHERE device_id = $1 AND metric = $2 AND ts < $3 ORDER BY ts DESC LIMIT 1)"
            "  UNION ALL"
            f"  (SELECT ts, raw, value, width FROM {table}"
            "    WHERE device_id = $1 AND metric = $2 AND ts >= $3 AND ts < $4)"
            ") AS window_readings ORDER BY ts"
        )
        fold = UsageFold()
        with self._translated("reading usage"):
            async with self._connections.acquire() as conn, conn.transaction(readonly=True):
                cursor = conn.cursor(sql, device_id, metric, _at(start), _at(end), prefetch=5000)
                async for raw, value, width in cursor:
                    fold.add(float(raw) if raw is not None else value, width)
        return fold.usage

    async def faults(
        self, device_id: str | None, *, start: datetime, end: datetime
    ) -> list[FaultEvent]:
        """Fault events in [start, end), by time."""
        sql = f"SELECT device_id, code, ts, active FROM {self._sql.schema}.faults "
        sql += "WHERE ts >= $1 AND ts < $2"
        args: list[object] = [_at(start), _at(end)]
        if device_id is not None:
            sql += " AND device_id = $3"
            args.append(device_id)
        with self._translated("reading faults"):
            rows = await self._connections.fetch(
                sql + " ORDER BY ts, device_id, code, active", *args
            )
        return [FaultEvent(r[0], r[1], r[2], r[3]) for r in rows]

    async def status_changes(
        self, device_id: str | None, *, start: datetime, end: datetime
    ) -> list[StatusChange]:
        """Status changes in [start, end), by time."""
        sql = f"SELECT device_id, online, ts, reason FROM {self._sql.schema}.status_changes "
        sql += "WHERE ts >= $1 AND ts < $2"
        args: list[object] = [_at(start), _at(end)]
        if device_id is not None:
            sql += " AND device_id = $3"
            args.append(device_id)
        with self._translated("reading status changes"):
            rows = await self._connections.fetch(sql + " ORDER BY ts, device_id", *args)
        return [StatusChange(r[0], r[1], r[2], r[3]) for r in rows]

    # --- retention -------------------------------------------------------------------------

    async def apply_retention(
        self,
        now: datetime,
        *,
        raw_days: int | None = None,
        minute_days: int | None = None,
        hour_days: int | None = None,
    ) -> RetentionRun:
        """Delete what is older than each table's period; see ``TimeSeriesStore``.

        The horizons move first, in a transaction holding ``readings`` in SHARE mode (see the
        module's notes); then each series' old rows go, a statement per series and table,
        each its own transaction, which never blocks writers (they add newer rows only).
        ``latest`` is never touched. Autovacuum reclaims the space for new rows.
        """
        wanted = self.retention.replace(raw_days, minute_days, hour_days).cutoffs_ms(now)
        s = self._sql.schema
        deleted: dict[Resolution, int] = {}
        with self._translated("applying retention"):
            async with self._connections.acquire() as conn:
                async with conn.transaction():
                    await conn.execute(f"LOCK TABLE {s}.readings IN SHARE MODE")
                    rows = await conn.fetch(
                        f"INSERT INTO {s}.retention AS cur "
                        "SELECT * FROM unnest($1::text[], $2::timestamptz[]) "
                        "ON CONFLICT (tier) DO UPDATE "
                        "SET cutoff = greatest(cur.cutoff, excluded.cutoff) "
                        "RETURNING tier, cutoff",
                        list(wanted),
                        [_from_ms(ms) for ms in wanted.values()],
                    )
                    cutoffs: dict[str, datetime] = {r[0]: r[1] for r in rows}
                    series = await conn.fetch(f"SELECT device_id, metric FROM {s}.latest")
                for resolution, (table, column) in _TABLES.items():
                    deleted[resolution] = 0
                    sql = (
                        f"DELETE FROM {s}.{table} "
                        f"WHERE device_id = $1 AND metric = $2 AND {column} < $3"
                    )
                    for device_id, metric in series:
                        status = await conn.execute(sql, device_id, metric, cutoffs[resolution])
                        deleted[resolution] += int(status.rsplit(" ", 1)[1])
        return RetentionRun(
            raw_from=cutoffs["raw"],
            minute_from=cutoffs["1m"],
            hour_from=cutoffs["1h"],
            raw_deleted=deleted["raw"],
            minute_deleted=deleted["1m"],
            hour_deleted=deleted["1h"],
        )


async def _timescaledb(conn: PoolConnectionProxy) -> bool:
    """Whether TimescaleDB is usable in this database, enabling it when merely available."""
    if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        return True
    if not await conn.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"):
        return False
    try:
        # a savepoint: a refusal (not preloaded, not privileged) must not abort the schema
        async with conn.transaction():
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as exc:
        log.warning("TimescaleDB is available but could not be enabled (%s)", exc)
        return False
    return True
