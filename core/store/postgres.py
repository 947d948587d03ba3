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
  plain table. Either way the primary key (device_id, metric, ts) serves every read.

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
from core.store.models import Bucket, LatestValue
from core.store.timeseries import Aggregate, UsageFold, check_history

__all__ = ["PostgresStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

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

# One SQL expression per aggregate, chosen from this table and never built from input.
_BUCKET_VALUE: dict[Aggregate, str] = {
    "min": "min(value)",
    "max": "max(value)",
    "mean": "avg(value)",
    "count": "count(*)",
    "last": "(array_agg(value ORDER BY ts DESC))[1]",
}


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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
        # in batch order, so that of two readings with one key the first is kept, as in SQLite
        return f"""
        INSERT INTO {self.schema}.readings
            (device_id, metric, ts, value, quality, raw, width)
        SELECT device_id, metric, ts, value, quality, raw, width
        FROM pg_temp.{_STAGING} ORDER BY n
        ON CONFLICT (device_id, metric, ts) DO NOTHING
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
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "equipwatch",
        pool_size: int = 4,
        connect_timeout: float = 10.0,
    ) -> None:
        if not schema or len(schema.encode()) > 63:
            raise ValueError(f"a PostgreSQL schema name has 1 to 63 bytes, not {schema!r}")
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
    ) -> list[Bucket]:
        """One metric aggregated per step over [start, end): one primary-key range scan.

        ``date_bin`` with the epoch as origin aligns buckets to multiples of the step, where
        TimescaleDB's ``time_bucket`` would align week-long steps to a Monday in 2000.
        """
        check_history(step_seconds, aggregate)
        sql = (
            "SELECT date_bin($3::interval, ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket, "
            f"{_BUCKET_VALUE[aggregate]} FROM {self._sql.schema}.readings "
            "WHERE device_id = $1 AND metric = $2 AND ts >= $4 AND ts < $5 "
            "GROUP BY bucket ORDER BY bucket"
        )
        step = timedelta(seconds=step_seconds)
        with self._translated("reading history"):
            rows = await self._connections.fetch(sql, device_id, metric, step, _at(start), _at(end))
        return [Bucket(r[0], float(r[1])) for r in rows]

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
