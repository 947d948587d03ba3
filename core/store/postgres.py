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
  takes seconds at 10k series, reading this table takes well under a millisecond per device.
  Every batch rewrites its series' rows, so the table is built for updates: ``fillfactor`` 50
  leaves room on each page for the new versions, so that updates are HOT (no new index entry)
  and pages prune their dead versions as they go; without it, 10M readings left a table of
  tens of thousands of mostly dead pages that every ``latest()`` scanned. Autovacuum is told
  to visit it after a few thousand updates rather than after a fifth of the table;
- text keys are ``COLLATE "C"``: byte order, as SQLite sorts, whatever the database's locale,
  and cheaper comparisons in every index;
- when the TimescaleDB extension is available a new readings table becomes a hypertable
  (chunked by time, so old data is dropped or compressed a chunk at a time); otherwise it is a
  plain table. Either way the primary key (device_id, metric, ts) serves every read;
- rollups (``readings_1m``, ``readings_1h``; see ``core.store.timeseries``) are recomputed
  off the write path by ``maintain_rollups``, from the pending marks that writes leave on
  ``latest``. One maintenance runs at a time (an advisory lock), and it locks the ``latest``
  rows of the series it takes (``FOR UPDATE``, in key order, as writers lock them): a writer
  that marked one of them before commits first, so its readings are recomputed; one that
  comes after waits, and marks the series again once the maintenance has cleared it. They
  are plain tables keyed (device_id, metric, bucket), which serves the recomputation,
  history ranges and retention;
- retention deletes series by series (their list is ``latest``), each a range of the primary
  key, so no index on time alone is needed for it. Before deleting, it records the new raw
  horizon under ``LOCK TABLE readings IN SHARE MODE``, which waits for the write transactions
  in flight and holds new ones back until it commits: every write transaction then either ran
  wholly before the horizon moved or sees it, so no reading can slip in under the horizon
  while the raw readings there are deleted. In the same transaction it brings up to date the
  rollups still pending below the new horizon, from the raw readings about to go.

Errors from asyncpg and the socket underneath are translated into ``StoreError`` here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from asyncpg.exceptions import InternalClientError
from asyncpg.pool import PoolConnectionProxy

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

__all__ = ["PostgresStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5
"""2: rollup tables and retention horizons; opening a version 1 schema builds the rollups.
3: rollups maintained off the write path, from ``latest.pending_from``.
4: the rules' feeds (faults, statuses) and dead letters.
5: ``latest.changed``, the change marks ``LatestCache`` reads by."""
FEED_SETTLE = 2.0  # seconds a stored fault waits before the rules' feed hands it out
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# ``latest`` storage: room for HOT updates, and vacuum after this many dead versions.
_LATEST_STORAGE = "fillfactor = 50, autovacuum_vacuum_scale_factor = 0, "
_LATEST_STORAGE += "autovacuum_vacuum_threshold = 5000"

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
        -- pending_from: the oldest time written since the series' rollups were last
        -- recomputed (NULL: none), see core.store.timeseries
        CREATE TABLE IF NOT EXISTS {s}.latest (
            device_id text COLLATE "C" NOT NULL,
            metric text COLLATE "C" NOT NULL,
            ts timestamptz NOT NULL,
            value double precision NOT NULL,
            quality text NOT NULL,
            pending_from timestamptz,
            changed xid8 NOT NULL DEFAULT pg_current_xact_id(),
            PRIMARY KEY (device_id, metric)
        ) WITH ({_LATEST_STORAGE});
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

    @property
    def usage(self) -> str:
        """A counter's usage over [$3, $4): ``counter_delta`` (``core.counters``) summed over
        consecutive readings by the server, from the newest before the window on. The same
        float arithmetic in the same order, so the same answer to the bit, as the contract
        tests check; a wrap's modulus is computed for a drop only. One row back rather than
        every reading: for 9,640 readings, 5 to 8 ms against 10 to 15 through a cursor."""
        s = self.schema
        wrapped = "(counter + 2 ^ width - previous)"
        return f"""
        SELECT coalesce(sum(CASE
                WHEN counter >= previous THEN counter - previous
                WHEN width IS NOT NULL AND {wrapped} > 0 AND {wrapped} < 2 ^ width / 2
                    THEN {wrapped}
                ELSE counter
            END), 0.0)
        FROM (
            SELECT counter, width, lag(counter) OVER (ORDER BY ts) AS previous
            FROM (
                (SELECT ts, coalesce(raw::float8, value) AS counter, width FROM {s}.readings
                    WHERE device_id = $1 AND metric = $2 AND ts < $3 ORDER BY ts DESC LIMIT 1)
                UNION ALL
                (SELECT ts, coalesce(raw::float8, value), width FROM {s}.readings
                    WHERE device_id = $1 AND metric = $2 AND ts >= $3 AND ts < $4)
            ) AS window_readings
        ) AS steps
        WHERE previous IS NOT NULL
        """

    @property
    def feeds(self) -> str:
        # Added in schema 4, idempotent so that they also upgrade an older schema: an
        # insertion order for the rules' fault feed (see faults_after), and dead letters.
        s = self.schema
        return f"""
        ALTER TABLE {s}.faults ADD COLUMN IF NOT EXISTS id bigint GENERATED BY DEFAULT AS IDENTITY;
        ALTER TABLE {s}.faults ADD COLUMN IF NOT EXISTS stored_at timestamptz NOT NULL
            DEFAULT clock_timestamp();
        CREATE UNIQUE INDEX IF NOT EXISTS faults_by_id ON {s}.faults (id);
        CREATE TABLE IF NOT EXISTS {s}.dead_letters (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            source text NOT NULL,
            topic text NOT NULL,
            payload text NOT NULL,
            reason text NOT NULL,
            detail text NOT NULL,
            ts timestamptz NOT NULL
        );
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
    def upgrade_latest(self) -> str:
        """``latest`` of a schema from before version 3: its rollups were kept on write, so
        nothing is pending. The new storage parameters apply to pages filled from now on."""
        return f"""
        ALTER TABLE {self.schema}.latest ADD COLUMN IF NOT EXISTS pending_from timestamptz,
            SET ({_LATEST_STORAGE})
        """

    @property
    def upgrade_latest_changed(self) -> str:
        """``latest`` of a schema from before version 5: every row counts as just changed."""
        return f"""
        ALTER TABLE {self.schema}.latest
            ADD COLUMN IF NOT EXISTS changed xid8 NOT NULL DEFAULT pg_current_xact_id()
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
        # rather than deadlock, as they did when inserting in batch order.
        s = self.schema
        return f"""
        INSERT INTO {s}.readings (device_id, metric, ts, value, quality, raw, width)
        SELECT device_id, metric, ts, value, quality, raw, width
        FROM pg_temp.{_STAGING}
        WHERE ts >= {self._raw_horizon}
        ORDER BY device_id, metric, ts, n
        ON CONFLICT (device_id, metric, ts) DO NOTHING
        """

    @property
    def _raw_horizon(self) -> str:
        return (
            f"coalesce((SELECT cutoff FROM {self.schema}.retention WHERE tier = 'raw'), "
            "'-infinity')"
        )

    def recompute(self, resolution: Resolution) -> str:
        """One rollup table's buckets of the pending series $1, $2 (arrays) from their
        pending times $3 on: minutes from raw, hours from the minutes (all kept: the minute
        horizon is never above the raw one), each replaced whole. Key order, as ever."""
        s = self.schema
        width = _WIDTH[resolution]
        if resolution == "1m":
            source, column = f"{s}.readings", "ts"
            summary = "min(r.value), max(r.value), sum(r.value), count(*), max(r.ts)"
            newest = "(array_agg(r.value ORDER BY r.ts DESC))[1]"
        else:
            source, column = f"{s}.readings_1m", "bucket"
            summary = (
                "min(r.min_value), max(r.max_value), sum(r.sum_value), sum(r.count)::bigint, "
                "max(r.last_ts)"
            )
            newest = "(array_agg(r.last_value ORDER BY r.last_ts DESC))[1]"
        return f"""
        INSERT INTO {s}.readings_{resolution} AS cur
            (device_id, metric, bucket, min_value, max_value, sum_value, count, last_ts,
             last_value)
        SELECT r.device_id, r.metric, date_bin({width}, r.{column}, {_ORIGIN}) AS bucket,
            {summary}, {newest}
        FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS p (device_id, metric, since)
        JOIN {source} AS r ON r.device_id = p.device_id AND r.metric = p.metric
            AND r.{column} >= date_bin({width}, p.since, {_ORIGIN})
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
            min_value = excluded.min_value, max_value = excluded.max_value,
            sum_value = excluded.sum_value, count = excluded.count,
            last_ts = excluded.last_ts, last_value = excluded.last_value
        """

    def pending_chunk(self, *, after: bool, below: bool) -> str:
        """The next pending series in key order, locked, at most $1: pending below $2 when
        ``below``, after the key in the next two parameters when ``after``."""
        sql = (
            f"SELECT device_id, metric, pending_from FROM {self.schema}.latest "
            "WHERE pending_from IS NOT NULL"
        )
        if below:
            sql += " AND pending_from < $2"
        if after:
            first = 3 if below else 2
            sql += f" AND (device_id, metric) > (${first}, ${first + 1})"
        return sql + " ORDER BY device_id, metric LIMIT $1 FOR UPDATE"

    @property
    def clear_pending(self) -> str:
        return (
            f"UPDATE {self.schema}.latest AS l SET pending_from = NULL "
            "FROM unnest($1::text[], $2::text[]) AS p (device_id, metric) "
            "WHERE l.device_id = p.device_id AND l.metric = p.metric"
        )

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
        # does, with the oldest time the batch wrote to raw as the pending mark. Sorting by
        # key also makes concurrent batches lock rows in one order. A row that nothing would
        # change (a late reading of a series pending from before it) is left alone.
        return f"""
        INSERT INTO {self.schema}.latest AS cur
            (device_id, metric, ts, value, quality, pending_from)
        SELECT DISTINCT ON (device_id, metric) device_id, metric, ts, value, quality,
            min(ts) FILTER (WHERE ts >= h.cutoff) OVER (PARTITION BY device_id, metric)
        FROM pg_temp.{_STAGING}, (SELECT {self._raw_horizon} AS cutoff) AS h
        ORDER BY device_id, metric, ts DESC, n DESC
        ON CONFLICT (device_id, metric) DO UPDATE SET
            ts = greatest(cur.ts, excluded.ts),
            value = CASE WHEN excluded.ts >= cur.ts THEN excluded.value ELSE cur.value END,
            quality = CASE WHEN excluded.ts >= cur.ts
                THEN excluded.quality ELSE cur.quality END,
            pending_from = least(cur.pending_from, excluded.pending_from),
            changed = pg_current_xact_id()
        WHERE excluded.ts >= cur.ts
            OR excluded.pending_from < coalesce(cur.pending_from, 'infinity')
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
    ``rollup_interval`` is how long after a write the store's own task runs
    ``maintain_rollups`` (seconds; None: never, for a caller that runs it itself).
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
        rollup_interval: float | None = ROLLUP_INTERVAL,
    ) -> None:
        if not schema or len(schema.encode()) > 63:
            raise ValueError(f"a PostgreSQL schema name has 1 to 63 bytes, not {schema!r}")
        if rollup_interval is not None and not rollup_interval > 0:
            raise ValueError(f"rollup_interval must be positive seconds, not {rollup_interval!r}")
        self.rollup_interval = rollup_interval
        self._written = asyncio.Event()
        self._latest_cache = LatestCache()
        self._latest_lock = asyncio.Lock()
        self._maintenance: asyncio.Task[None] | None = None
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
                    reset=_keep_session,
                )
            except ValueError as exc:  # a DSN that does not parse
                raise StoreError(f"PostgreSQL DSN: {exc}") from exc
        self._pool = pool
        try:
            with self._translated("creating the schema"):
                async with pool.acquire() as conn, conn.transaction():
                    await self._create_schema(conn)
            # latest read whole now, not by the first caller (see SqliteStore.open)
            await self.latest()
        except BaseException:
            self._pool = None
            pool.terminate()
            raise
        if self.rollup_interval is not None and self._maintenance is None:
            self._written = asyncio.Event()  # bound to the loop that opened the store
            self._maintenance = start_maintenance(
                self, self._written, self.rollup_interval, f"postgres-store[{self.schema}].rollups"
            )

    async def close(self) -> None:
        """Stop the rollup task and close the pool. Rollups still pending stay marked and are
        brought up to date by the next maintenance, here or in another process. Never raises
        for a server that went away: the caller is leaving, and an error here would hide the
        one that made it leave."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.wait([self._maintenance])
            self._maintenance = None
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
        await conn.execute(self._sql.feeds)
        readings = f"{s}.readings"
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", readings)
        if exists and version is not None and int(version) < 2:
            # version 1 had no rollups: build them, so that history read from rollups shows
            # what was written before the upgrade too (the tables are new and empty)
            log.info("PostgreSQL store %r: building rollups from the readings", self.schema)
            await conn.execute(self._sql.backfill)
        if version is not None and int(version) < 3:
            await conn.execute(self._sql.upgrade_latest)
        if version is not None and int(version) < 5:
            await conn.execute(self._sql.upgrade_latest_changed)
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
        if readings:
            self._written.set()

    async def maintain_rollups(self) -> int:
        """Recompute the rollups of every pending series; see ``TimeSeriesStore``.

        A transaction per chunk of series (``ChunkSize``: about 0.1 s each), under the
        maintenance's advisory lock and the ``latest`` rows' locks (see the module's notes);
        a series marked again meanwhile is pending again, for the next run."""
        done = 0
        after: tuple[str, str] | None = None
        size = ChunkSize()
        with self._translated("maintaining rollups"):
            async with self._connections.acquire() as conn:
                while True:
                    started = time.perf_counter()
                    async with conn.transaction():
                        count, after = await self._maintain_chunk(
                            conn, after=after, limit=size.size
                        )
                    size.took(time.perf_counter() - started)
                    done += count
                    if after is None:
                        return done

    async def _maintain_chunk(
        self,
        conn: PoolConnectionProxy,
        *,
        after: tuple[str, str] | None,
        limit: int,
        below: datetime | None = None,
    ) -> tuple[int, tuple[str, str] | None]:
        """In the caller's transaction: recompute the next ``limit`` pending series after
        ``after`` (pending below ``below`` only, when given) and clear their marks; how many,
        and the key to go on after (None: that was the last chunk)."""
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._maintenance_lock)
        sql = self._sql.pending_chunk(after=after is not None, below=below is not None)
        args = [limit, *([] if below is None else [below]), *([] if after is None else after)]
        rows = await conn.fetch(sql, *args)
        if not rows:
            return 0, None
        devices = [r[0] for r in rows]
        metrics = [r[1] for r in rows]
        # each series one index range scan from its pending time, whatever the statistics
        # say: right after a bulk load they still describe empty tables, and a plan from them
        # (a hash join over a sequential scan) would read every reading of every series
        await conn.execute(
            "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; "
            "SET LOCAL enable_seqscan = off"
        )
        for resolution in ("1m", "1h"):
            await conn.execute(
                self._sql.recompute(resolution), devices, metrics, [r[2] for r in rows]
            )
        await conn.execute(self._sql.clear_pending, devices, metrics)
        last = (rows[-1][0], rows[-1][1])
        return len(rows), last if len(rows) == limit else None

    @property
    def _maintenance_lock(self) -> str:
        return f"equipwatch rollups {self.schema}"

    # --- reads -----------------------------------------------------------------------------

    async def latest(self, device_ids: Sequence[str] | None = None) -> list[LatestValue]:
        """The newest value of every (device, metric), kept by ``LatestCache``: a call reads
        the rows of ``latest`` written by transactions that may not have been visible to the
        call before.

        The mark is the oldest transaction still running when a call starts (its snapshot's
        xmin): every transaction before it had ended, so its rows were read then; the rows of
        one still running, or one that started later, carry its id, which is at least the
        mark, and are read by the next call (rows read twice are only replaced by
        themselves). The mark is taken before the rows are read, in a statement of its own,
        so that it is never newer than the snapshot the rows come from.

        Times come as epoch milliseconds (whole ones, as stored, which double precision holds
        exactly; ``date_part`` rather than ``extract``, whose numeric is slower) and become
        datetimes here, once per distinct time: asyncpg decodes a timestamptz through Python
        datetime arithmetic."""
        sql = (
            "SELECT device_id, metric, value, (date_part('epoch', ts) * 1000)::int8, quality "
            f"FROM {self._sql.schema}.latest"
        )
        cache = self._latest_cache
        with self._translated("reading latest values"):
            async with self._latest_lock, self._connections.acquire() as conn:
                mark = await conn.fetchval(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8"
                )
                args = [] if cache.mark is None else [str(cache.mark)]
                if args:
                    sql += " WHERE changed >= $1::text::xid8"
                with collector_paused():
                    rows = await conn.fetch(sql, *args)
                    cache.update(latest_values(rows, _from_ms), mark)
        return cache.answer(device_ids)

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
        connection and in one snapshot with the series' pending mark; the pieces' summaries
        are merged here. ``date_bin`` with the epoch as origin aligns buckets to multiples of
        the step, where TimescaleDB's ``time_bucket`` would align week-long steps to a Monday
        in 2000.
        """
        check_history(step_seconds, aggregate, resolution)
        start_ms, end_ms = _to_ms(_at(start)), _to_ms(_at(end))
        step = timedelta(seconds=step_seconds)
        parts: list[Partial] = []
        with self._translated("reading history"):
            async with self._connections.acquire() as conn, self._snapshot(conn):
                pending = await self._pending_from(conn, device_id, metric)
                segments = plan_history(start_ms, end_ms, step_seconds, resolution, pending)
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
        """Rollups of one series starting in [start, end); see the contract. Stored rows up
        to the series' pending bucket, and from there raw summarised per bucket."""
        if resolution not in ROLLUPS:
            raise ValueError(f"resolution must be 1m or 1h, not {resolution!r}")
        width = ROLLUPS[resolution]
        start_ms, end_ms = _to_ms(_at(start)), _to_ms(_at(end))
        sql = (
            "SELECT bucket, min_value, max_value, sum_value, count, last_ts, last_value "
            f"FROM {self._sql.schema}.{_TABLES[resolution][0]} "
            "WHERE device_id = $1 AND metric = $2 AND bucket >= $3 AND bucket < $4 "
            "ORDER BY bucket"
        )
        with self._translated("reading rollups"):
            async with self._connections.acquire() as conn, self._snapshot(conn):
                pending = await self._pending_from(conn, device_id, metric)
                first_pending = None if pending is None else pending // width * width
                if first_pending is None or first_pending >= end_ms:
                    stored_end, raw = end_ms, None
                else:
                    # the readings of the buckets from the pending one that start in range
                    stored_end = first_pending
                    raw = (
                        max(first_pending, -(-start_ms // width) * width),
                        -(-end_ms // width) * width,
                    )
                rows = list(
                    await conn.fetch(
                        sql, device_id, metric, _from_ms(start_ms), _from_ms(stored_end)
                    )
                )
                if raw is not None:
                    rows += await conn.fetch(
                        self._sql.partials("raw"),
                        device_id,
                        metric,
                        timedelta(milliseconds=width),
                        _from_ms(raw[0]),
                        _from_ms(raw[1]),
                    )
        return [Rollup(device_id, metric, *r) for r in rows]

    async def _pending_from(
        self, conn: PoolConnectionProxy, device_id: str, metric: str
    ) -> int | None:
        """Where the series' rollups stop being exact, in epoch ms (None: nowhere)."""
        pending = await conn.fetchval(
            f"SELECT pending_from FROM {self._sql.schema}.latest "
            "WHERE device_id = $1 AND metric = $2",
            device_id,
            metric,
        )
        return None if pending is None else _to_ms(pending)

    @staticmethod
    def _snapshot(conn: PoolConnectionProxy) -> asyncpg.transaction.Transaction:
        """A read-only transaction whose statements all see one snapshot: the pending mark
        and the rollups it vouches for, as of one moment."""
        return conn.transaction(isolation="repeatable_read", readonly=True)

    async def usage(self, device_id: str, metric: str, *, start: datetime, end: datetime) -> float:
        """Counter usage over [start, end): the reading before the window (one backward seek
        of the primary key) and the window's readings, summed by the server (``_Sql.usage``)."""
        with self._translated("reading usage"):
            used = await self._connections.fetchval(
                self._sql.usage, device_id, metric, _at(start), _at(end)
            )
        return float(used)

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
        sql = (
            f"SELECT device_id, metric, value, ts, quality, raw, width FROM {self._sql.schema}"
            ".readings WHERE device_id = $1 AND ts >= $2 AND ts < $3"
        )
        args: list[object] = [device_id, _at(start), _at(end)]
        if metric is not None:
            sql += " AND metric = $4"
            args.append(metric)
        sql += f" ORDER BY ts, metric LIMIT ${len(args) + 1}"
        args.append(limit)
        with self._translated("reading readings"):
            rows = await self._connections.fetch(sql, *args)
        return [_reading(row) for row in rows]

    async def readings_after(
        self, device_id: str, metric: str, after: datetime | None, limit: int = 10_000
    ) -> list[Reading]:
        """Readings of one metric strictly after ``after``, oldest first: the rules' feed."""
        sql = (
            f"SELECT device_id, metric, value, ts, quality, raw, width FROM {self._sql.schema}"
            ".readings WHERE device_id = $1 AND metric = $2 AND ts > $3 ORDER BY ts LIMIT $4"
        )
        since = _EPOCH if after is None else _at(after)
        with self._translated("reading new readings"):
            rows = await self._connections.fetch(sql, device_id, metric, since, limit)
        return [_reading(row) for row in rows]

    async def statuses(self) -> dict[str, DeviceStatus]:
        """The most recent status change of every device that has one."""
        sql = (
            f"SELECT DISTINCT ON (device_id) device_id, online, ts, reason "
            f"FROM {self._sql.schema}.status_changes ORDER BY device_id, ts DESC"
        )
        with self._translated("reading device statuses"):
            rows = await self._connections.fetch(sql)
        return {r[0]: DeviceStatus(r[0], r[1], r[2], r[3]) for r in rows}

    async def faults_after(self, position: int, limit: int = 1000) -> list[tuple[int, FaultEvent]]:
        """Fault events with an id above ``position``, in the order they were stored.

        Identity values are taken when a row is inserted but become visible when its
        transaction commits, so with several writers a lower id can appear after a higher one
        was read, and a cursor past it would skip it for good. Rows are therefore handed out
        only once ``FEED_SETTLE`` has passed since they were stored, far longer than a write
        transaction takes; fault alarms wait that long on PostgreSQL."""
        sql = (
            f"SELECT id, device_id, code, ts, active FROM {self._sql.schema}.faults "
            "WHERE id > $1 AND stored_at < clock_timestamp() - make_interval(secs => $2) "
            "ORDER BY id LIMIT $3"
        )
        with self._translated("reading new faults"):
            rows = await self._connections.fetch(sql, position, FEED_SETTLE, limit)
        return [(r[0], FaultEvent(r[1], r[2], r[3], r[4])) for r in rows]

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        rows = [(d.source, d.topic, d.payload, d.reason, d.detail, _at(d.ts)) for d in letters]
        if not rows:
            return
        sql = (
            f"INSERT INTO {self._sql.schema}.dead_letters "
            "(source, topic, payload, reason, detail, ts) VALUES ($1, $2, $3, $4, $5, $6)"
        )
        with self._translated("writing dead letters"):
            await self._connections.executemany(sql, rows)

    async def dead_letters(self, limit: int = 100) -> list[StoredDeadLetter]:
        """The newest ``limit`` dead letters, newest first."""
        sql = (
            f"SELECT id, source, topic, payload, reason, detail, ts "
            f"FROM {self._sql.schema}.dead_letters ORDER BY id DESC LIMIT $1"
        )
        with self._translated("reading dead letters"):
            rows = await self._connections.fetch(sql, limit)
        return [StoredDeadLetter(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

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

        The horizons move first, in a transaction holding ``readings`` in SHARE mode, with the
        rollups still pending below the new raw horizon brought up to date (see the module's
        notes); then each series' old rows go, a statement per series and table,
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
                    # what is pending below the new raw horizon, while its raw readings last
                    below = _from_ms(wanted["raw"])
                    after: tuple[str, str] | None = None
                    while True:
                        _, after = await self._maintain_chunk(
                            conn, after=after, limit=1000, below=below
                        )
                        if after is None:
                            break
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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool does to a connection given back, besides rolling back a transaction left
    open (which asyncpg does anyway): nothing. The default reset (``RESET ALL``, ``UNLISTEN``,
    ``CLOSE ALL``, releasing advisory locks) is a round trip to the server on every call of the
    store, and undoes nothing the store does: its settings are ``SET LOCAL``, its advisory locks
    transaction-level, it never listens, and its cursors live in transactions. Its one piece of
    session state, the staging table, is meant to outlive the call."""


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


def _reading(row: asyncpg.Record) -> Reading:
    device_id, metric, value, ts, quality, raw, width = row
    return Reading(device_id, metric, value, ts, Quality(quality), raw, width)
