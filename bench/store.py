"""Storage benchmark: the SQLite writer against a bare executemany, then load time, size on disk
and the time-series queries (latest, history, usage) on 10 million readings, SQLite and
PostgreSQL side by side.

    .venv/bin/python -m bench.store [--devices 1000 --metrics 10 --per-series 1000]
        [--backend sqlite|postgres|both] [--quick]

The data is generated deterministically and streamed, in time order as the collectors would
deliver it (every device's readings of one poll, then the next poll): ``--devices`` devices x
``--metrics`` metrics (2 counters, uint32 with raw and width, the rest gauges) x
``--per-series`` readings, each series spanning the 30 days before a fixed end (2025-06-01 UTC),
with one device (dev0000) also reporting every 10 s over the last 24 hours (``--no-dense`` to
leave that out), so that a 24-hour history has real work.

1. Writer throughput (SQLite), on the first ``--writer-rows`` readings, each run into a fresh
   file whose schema SqliteStore created: (a) a bare ``executemany("INSERT OR IGNORE INTO
   readings ...")`` per batch of ``--writer-batch`` rows in a transaction of its own, on a raw
   sqlite3 connection with the store's pragmas; (b) equipwatch's writer path, BatchWriter +
   SqliteStore as the service opens it (its own rollup task included), fed one device's poll at
   a time, from the first put to the commit of the last batch (which waits out the writer's
   flush interval, 0.2 s, once: noticeable with ``--quick`` only). Target: (b) >= 0.7 x (a).
   Besides: (a2) the store's writes per batch on a raw connection, without the writer (the
   store's own statements, with its trigger that carries each row into ``latest``), which
   tells the cost of the design from that of its implementation; and (c), in the same runs as
   (b), the rollups brought up to date too: the readings over the time to the last
   commit plus a ``maintain_rollups()`` called then, which is what the writer's work costs in
   all, whenever the store does it. Each runs ``--writer-runs`` times (5), interleaved as a
   a2 b b a2 a a a2 b (the machine may be shared), and the median counts. The input, built
   before, is frozen out of the cyclic collector's sight (``gc.freeze``) meanwhile.
2. The full data loaded through each store's ``write`` in batches of ``--load-batch`` readings,
   then its rollups brought up to date with ``maintain_rollups()``; the load time counts the
   time spent in both (not generating the data). Size on disk: the SQLite file and its WAL
   after a checkpoint; PostgreSQL's ``pg_total_relation_size`` of the schema's tables, after a
   ``VACUUM ANALYZE`` (what autovacuum would do after a load).
3. Each query ``--repeats`` times after ``--warmups`` warm-ups, median and p95 in ms, through the
   stores' own methods (what the API calls): latest values of every series, 24 h history of one
   gauge at a 60 s step (mean), usage of one counter over 30 days. Only the store's call is
   timed; the checksum of its answer that the two backends are compared by is made after.
   Targets 20, 50 and 20 ms, judged on the median. ``latest()`` keeps what it has read in the
   process and reads only the rows written since its last call, so it has three rows: the
   store's opening, which reads the whole table once so that no caller waits for it (timed
   from the open to the answer of a first call, each run on a store opened for it; no target:
   a process pays it once, at start), a repeated call with nothing new (what a dashboard's
   refresh costs), and a call after one poll of ``POLLED_DEVICES`` devices' gauges written
   since the last (the writes are not timed).

PostgreSQL is the server named by EQUIPWATCH_BENCH_POSTGRES_DSN (in a schema of its own, dropped
afterwards unless ``--keep-schema``), else a throwaway cluster started like the tests' one
(``tests.pg``: fsync and synchronous_commit off, default shared_buffers).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import math
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from collector.writer import BatchWriter, StoreTarget
from core.records import Quality, Reading
from core.store import Bucket, LatestValue, PostgresStore, SqliteStore
from core.store.sqlite import _LATEST_FROM_READINGS as LATEST_FROM_READINGS
from core.store.sqlite import _know as know
from core.store.sqlite import _write_readings as write_readings
from core.store.timeseries import TimeSeriesStore
from tests.pg import drop_schema, postgres_cluster

DSN_VARIABLE = "EQUIPWATCH_BENCH_POSTGRES_DSN"

END = datetime(2025, 6, 1, tzinfo=UTC)
"""Every series ends just before this; the queries ask about the time up to it."""
END_S = int(END.timestamp())
SPAN_S = 30 * 86_400
DENSE_S = 86_400  # dev0000's dense stretch: the last 24 hours...
DENSE_STEP_S = 10  # ...one reading every 10 s

COUNTERS = ("cycles", "runtime_s")
GAUGES = (
    "temperature_c",
    "pressure_kpa",
    "humidity_pct",
    "supply_v",
    "current_a",
    "power_w",
    "flow_lpm",
    "vibration_mm_s",
)
WIDTH = 32
GOOD = Quality.GOOD.value

# the targets
WRITER_TARGET = 0.7
LATEST_MS, HISTORY_MS, USAGE_MS = 20.0, 50.0, 20.0
POLLED_DEVICES = 100  # devices that report between two runs of "latest, all, after ..."

Opener = Callable[[], AbstractAsyncContextManager[TimeSeriesStore]]

FULL = {
    "devices": 1000,
    "metrics": 10,
    "per_series": 1000,
    "writer_rows": 1_000_000,
    "repeats": 20,
    "warmups": 2,
}
QUICK = {
    "devices": 100,
    "metrics": 10,
    "per_series": 100,
    "writer_rows": 50_000,
    "repeats": 5,
    "warmups": 1,
}

Row = tuple[str, str, int, float, str, int | None, int | None]
"""A row of the readings table as SQLite stores it: device, metric, ts_ms, value, quality, raw,
width."""

_T = TypeVar("_T")


# --- the data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    devices: int
    metrics: int
    per_series: int
    dense: bool

    @property
    def period_s(self) -> int:
        """Seconds between one series' readings: 30 days over ``per_series``, made even so
        that sparse readings fall on even seconds and dense ones (odd) never collide."""
        return SPAN_S // self.per_series // 2 * 2

    @property
    def start_s(self) -> int:
        return END_S - SPAN_S

    @property
    def dense_count(self) -> int:
        """The dense device's extra readings per metric."""
        return DENSE_S // DENSE_STEP_S if self.dense else 0

    @property
    def total(self) -> int:
        return (self.devices * self.per_series + self.dense_count) * self.metrics

    def device_ids(self) -> list[str]:
        return [f"dev{index:04d}" for index in range(self.devices)]

    def metric_names(self) -> list[str]:
        names = [*COUNTERS, *GAUGES]
        names += [f"gauge_{index}" for index in range(len(names), self.metrics)]
        return names[: self.metrics]

    def offset_s(self, device: int) -> int:
        """Devices poll in turn across the period, on even seconds, so that the stream of
        polls is in time order."""
        return device * self.period_s // self.devices // 2 * 2


def _poll(device_id: str, base: int, device: int, ts_s: int, metrics: Sequence[str]) -> list[Row]:
    """One device's readings at one time: counters as functions of time (so that the sparse and
    dense readings of one device agree, and some registers wrap), gauges as a sawtooth."""
    ts_ms = ts_s * 1000
    cycles = (base + ts_s // 600) % 2**WIDTH
    runtime = (base + ts_s) % 2**WIDTH
    rows: list[Row] = []
    for index, metric in enumerate(metrics):
        if index == 0:
            rows.append((device_id, metric, ts_ms, float(cycles), GOOD, cycles, WIDTH))
        elif index == 1:
            rows.append((device_id, metric, ts_ms, runtime / 3600, GOOD, runtime, WIDTH))
        else:
            value = 20.0 + ((ts_s // 10) * (index + 3) + device * 7) % 1000 / 100
            rows.append((device_id, metric, ts_ms, value, GOOD, None, None))
    return rows


def polls(shape: Shape) -> Iterator[list[Row]]:
    """Every poll (one device's readings at one time), in time order; dev0000's dense polls go
    in before the round of sparse polls that starts after them."""
    devices = shape.device_ids()
    metrics = shape.metric_names()
    bases = [device * 2_654_435_761 % 2**WIDTH for device in range(shape.devices)]
    offsets = [shape.offset_s(device) for device in range(shape.devices)]
    dense_start = END_S - DENSE_S + 1  # odd seconds
    dense = iter(range(dense_start, END_S, DENSE_STEP_S) if shape.dense else ())
    pending = next(dense, None)
    for round_index in range(shape.per_series):
        round_start = shape.start_s + round_index * shape.period_s
        while pending is not None and pending < round_start:
            yield _poll(devices[0], bases[0], 0, pending, metrics)
            pending = next(dense, None)
        for device, device_id in enumerate(devices):
            yield _poll(device_id, bases[device], device, round_start + offsets[device], metrics)
    while pending is not None:
        yield _poll(devices[0], bases[0], 0, pending, metrics)
        pending = next(dense, None)


def rows(shape: Shape) -> Iterator[Row]:
    return itertools.chain.from_iterable(polls(shape))


def chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def readings(batch: Sequence[Row]) -> list[Reading]:
    """Rows as the collectors' records; one datetime per poll, as a collector makes it."""
    out: list[Reading] = []
    last_ms, moment = -1, END
    good = Quality.GOOD
    for device_id, metric, ts_ms, value, _, raw, width in batch:
        if ts_ms != last_ms:
            last_ms, moment = ts_ms, datetime.fromtimestamp(ts_ms / 1000, UTC)
        out.append(Reading(device_id, metric, value, moment, good, raw, width))
    return out


# --- 1. writer throughput (SQLite) ---------------------------------------------------------------

PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA busy_timeout=5000")
BARE_INSERT = "INSERT OR IGNORE INTO readings VALUES (?, ?, ?, ?, ?, ?, ?)"


async def create_schema(path: Path) -> None:
    async with SqliteStore(path):
        pass


def count_readings(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
    finally:
        conn.close()


def _bare_batch(conn: sqlite3.Connection, batch: Sequence[Row]) -> None:
    conn.executemany(BARE_INSERT, batch)


def _same_work() -> Callable[[sqlite3.Connection, Sequence[Row]], None]:
    """The store's writes per batch on a plain connection: its own ``_write_readings`` (the
    change mark taken, new series added to ``latest``, the raw insert), with its trigger,
    made on the connection by ``bare_rate``, carrying each row into ``latest``. Imported, so
    that this baseline cannot drift from the store. The check for new series, which the
    store makes on the event loop as it builds the rows, is made here too."""
    series: dict[str, set[str]] = {}

    def write(conn: sqlite3.Connection, batch: Sequence[Row]) -> None:
        rows = list(batch)
        new = [row for row in rows if row[1] not in series.get(row[0], ())]
        know(series, write_readings(conn, rows, min(row[2] for row in rows), new))

    return write


def bare_rate(
    path: Path,
    subset: Sequence[Row],
    batch_size: int,
    write: Callable[[sqlite3.Connection, Sequence[Row]], None],
    setup: Sequence[str] = (),
) -> float:
    """Rows per second of raw sqlite3 writes into a fresh file with the store's schema and
    pragmas (and ``setup``'s statements), a transaction per batch, as the store commits."""
    asyncio.run(create_schema(path))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in (*PRAGMAS, *setup):
            conn.execute(statement)
        started = time.perf_counter()
        for index in range(0, len(subset), batch_size):
            conn.execute("BEGIN IMMEDIATE")
            write(conn, subset[index : index + batch_size])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return len(subset) / elapsed


@dataclass(frozen=True)
class WriterRun:
    written: float
    """Seconds from the first put to the commit of the last batch."""
    maintained: float
    """Seconds of the ``maintain_rollups()`` called then."""
    series: int
    """Series that call brought up to date."""


async def writer_rate(
    path: Path, subset: Sequence[Reading], metrics: int, batch_size: int
) -> WriterRun:
    """BatchWriter + SqliteStore, fed a poll at a time, as a collector puts them: the time to
    the commit of the last batch, then the time to bring the rollups up to date."""
    async with SqliteStore(path) as store:
        writer = BatchWriter(StoreTarget(store), batch_size=batch_size)
        task = asyncio.create_task(writer.run(), name="bench.writer")
        done = asyncio.Event()
        started = time.perf_counter()
        for index in range(0, len(subset), metrics):
            await writer.put(subset[index : index + metrics])
        await writer.put([], on_durable=done.set)
        await done.wait()
        written = time.perf_counter() - started
        series = await store.maintain_rollups()
        maintained = time.perf_counter() - started - written
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    return WriterRun(written, maintained, series)


def check_rollups(path: Path, expected: int) -> None:
    """The minute rollups count every stored reading once: the rollups were really made."""
    conn = sqlite3.connect(path)
    try:
        counted = conn.execute("SELECT coalesce(sum(count), 0) FROM readings_1m").fetchone()[0]
        pending = conn.execute(
            "SELECT count(*) FROM latest WHERE pending_from_ms IS NOT NULL"
        ).fetchone()[0]
    finally:
        conn.close()
    if counted != expected or pending:
        raise SystemExit(f"(b): minute rollups count {counted:,} readings, {pending} pending")


@dataclass(frozen=True)
class WriterResult:
    rows: int
    batch_size: int
    bare: list[float]
    same_work: list[float]
    ours: list[float]
    caught_up: list[float]
    """(c): the rows over the time of (b) plus the rollup maintenance after it."""

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours) / statistics.median(self.bare)

    @property
    def met(self) -> bool:
        return self.ratio >= WRITER_TARGET

    def lines(self) -> list[str]:
        def rates(label: str, runs: list[float]) -> str:
            each = ", ".join(f"{rate:,.0f}" for rate in runs)
            return f"   {label:<50} {statistics.median(runs):>9,.0f} rows/s  (runs: {each})"

        def ratio(runs: list[float], to: list[float]) -> float:
            return statistics.median(runs) / statistics.median(to)

        return [
            "   medians of the runs:",
            rates("(a)  bare executemany INSERT OR IGNORE", self.bare),
            rates("(b)  BatchWriter + SqliteStore", self.ours),
            f"   ratio (b)/(a) {self.ratio:.2f}  (target >= {WRITER_TARGET}: "
            f"{'met' if self.met else 'MISSED'})",
            "   (b) writes raw and `latest` (which carries the rollups' pending marks); the",
            "   rollups are recomputed off the write path, which (c) includes:",
            rates("(c)  (b), then maintain_rollups() to completion", self.caught_up),
            f"   ratio (c)/(a) {ratio(self.caught_up, self.bare):.2f}  (everything, no target)",
            rates("(a2) the store's statements on a raw connection", self.same_work),
            f"   ratio (b)/(a2) {ratio(self.ours, self.same_work):.2f}  (same work, no target)",
        ]


# one round of runs, then the same backwards, and so on: a a2 b b a2 a a a2 b ...
WRITER_ROUND = ("a", "a2", "b")


def writer_comparison(
    shape: Shape, directory: Path, count: int, batch_size: int, repeats: int
) -> WriterResult:
    """(a), (a2) and (b) ``repeats`` times each, interleaved as a a2 b b a2 a a a2 b ... so
    that a drift in the machine's load (it is shared) hits each alike; medians count."""
    count = min(count, shape.total)
    print(
        f"\n1. Writer throughput (SQLite): the first {count:,} readings, batches of "
        f"{batch_size}, each run into a fresh file",
        flush=True,
    )
    subset = list(itertools.islice(rows(shape), count))
    records = readings(subset)
    # the input, a million readings made before any clock starts, is the benchmark's, not
    # the writer's: out of the cyclic collector's sight, or every full collection the
    # writer's allocations set off would traverse it (some 0.3 s each), which a collector
    # process, holding a poll's readings at a time, never does
    gc.collect()
    gc.freeze()
    expected = len({(r[0], r[1], r[2]) for r in subset})
    runs: dict[str, list[float]] = {"a": [], "a2": [], "b": [], "c": []}
    order = [
        run
        for repeat in range(repeats)
        for run in (WRITER_ROUND if repeat % 2 == 0 else WRITER_ROUND[::-1])
    ]
    for run in order:
        path = directory / f"writer-{run}.db"
        if run == "b":
            timing = asyncio.run(writer_rate(path, records, shape.metrics, batch_size))
            rate = len(records) / timing.written
            runs["c"].append(len(records) / (timing.written + timing.maintained))
            check_rollups(path, expected)
            detail = (
                f"; then {timing.series:,} series' rollups in {timing.maintained:.1f}s: "
                f"(c) {runs['c'][-1]:,.0f} rows/s"
            )
        elif run == "a":
            rate, detail = bare_rate(path, subset, batch_size, _bare_batch), ""
        else:
            setup = (LATEST_FROM_READINGS,)
            rate, detail = bare_rate(path, subset, batch_size, _same_work(), setup), ""
        runs[run].append(rate)
        print(f"   ({run}) {rate:,.0f} rows/s{detail}", flush=True)
        stored = count_readings(path)
        if stored != expected:
            raise SystemExit(f"({run}): {stored:,} readings stored, expected {expected:,}")
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
    gc.unfreeze()
    result = WriterResult(count, batch_size, runs["a"], runs["a2"], runs["b"], runs["c"])
    print("\n".join(result.lines()), flush=True)
    return result


# --- 2. loading ---------------------------------------------------------------------------------


@dataclass
class Load:
    rows: int = 0
    seconds: float = 0.0
    wall: float = 0.0
    size: int = 0
    size_detail: str = ""
    notes: list[str] = field(default_factory=list)


async def load(store: TimeSeriesStore, shape: Shape, batch_size: int, label: str) -> Load:
    """Write every reading through ``store.write``, then bring the rollups up to date; time
    only those (the store's own rollup task runs meanwhile, as in service, and a write that
    waits for it counts). Prints the rate of each tenth of the load, to show it slow down as
    the indexes grow."""
    result = Load()
    started = time.perf_counter()
    tenth = max(shape.total // 10, 1)
    mark_rows, mark_seconds = 0, 0.0
    for batch in chunks(rows(shape), batch_size):
        records = readings(batch)
        before = time.perf_counter()
        await store.write(records)
        result.seconds += time.perf_counter() - before
        result.rows += len(records)
        if result.rows - mark_rows >= tenth or result.rows == shape.total:
            rate = (result.rows - mark_rows) / (result.seconds - mark_seconds)
            print(
                f"   {label}: {result.rows:>11,} rows, {result.seconds:7.1f}s in write; "
                f"last {result.rows - mark_rows:,} at {rate:,.0f} rows/s",
                flush=True,
            )
            mark_rows, mark_seconds = result.rows, result.seconds
    before = time.perf_counter()
    series = await store.maintain_rollups()
    maintained = time.perf_counter() - before
    result.seconds += maintained
    result.notes.append(f"of which {maintained:.1f}s the last maintain_rollups()")
    print(
        f"   {label}: then the rollups of {series:,} series in {maintained:.1f}s",
        flush=True,
    )
    result.wall = time.perf_counter() - started
    return result


def sqlite_size(path: Path) -> tuple[int, str]:
    """The file and its WAL after a checkpoint, and the biggest tables in it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 4"
        ).fetchall()
    finally:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    file_size = path.stat().st_size
    wal_size = wal.stat().st_size if wal.exists() else 0
    detail = f"file {_mb(file_size)} + WAL {_mb(wal_size)}; " + ", ".join(
        f"{name} {_mb(size)}" for name, size in tables
    )
    return file_size + wal_size, detail


async def postgres_size(conn: asyncpg.Connection, schema: str, hypertable: bool) -> tuple[int, str]:
    tables = await conn.fetch(
        "SELECT c.relname, pg_total_relation_size(c.oid) AS size FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY size DESC",
        schema,
    )
    sizes = {row[0]: int(row[1]) for row in tables}
    if hypertable:  # its chunks live in TimescaleDB's own schema
        sizes["readings"] = int(
            await conn.fetchval("SELECT hypertable_size($1::regclass)", f'"{schema}".readings')
        )
    total = sum(sizes.values())
    biggest = sorted(sizes.items(), key=lambda item: -item[1])[:4]
    database = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    detail = ", ".join(f"{name} {_mb(size)}" for name, size in biggest)
    return total, f"{detail} (tables with their indexes; whole database {_mb(database)})"


def _mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB" if size < 2**30 else f"{size / 2**30:,.2f} GB"


# --- 3. queries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    label: str
    target_ms: float | None
    """None: measured for what it tells, with no target."""
    run: Callable[[TimeSeriesStore], Awaitable[Any]]
    """The store's call, which alone is timed."""
    summary: Callable[[Any], tuple[float, ...]]
    """Its answer in a few numbers, to compare across backends; not timed (summing 10,000
    latest values and their times takes some 3 ms, which is the bench's, not the store's)."""
    fresh: bool = False
    """Each run on a store opened for it, the opening timed too: what a process pays once."""
    before: Callable[[TimeSeriesStore, int], Awaitable[None]] | None = None
    """Untimed work before each run (the run's number given), e.g. writes to catch up on."""


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p95_ms: float
    answer: tuple[float, ...]


def queries(shape: Shape) -> list[Query]:
    ids = shape.device_ids()
    metrics = shape.metric_names()
    gauge, counter = metrics[2], metrics[0]
    dense, sparse = ids[0], ids[min(1, len(ids) - 1)]
    day, month = END - timedelta(days=1), END - timedelta(days=30)
    series = len(ids) * len(metrics)

    async def latest_all(store: TimeSeriesStore) -> list[LatestValue]:
        return await store.latest()

    async def latest_ids(store: TimeSeriesStore) -> list[LatestValue]:
        return await store.latest(ids)

    def latest_summary(values: list[LatestValue]) -> tuple[float, ...]:
        return len(values), sum(v.value for v in values), max(v.ts.timestamp() for v in values)

    def history(device: str) -> Callable[[TimeSeriesStore], Awaitable[list[Bucket]]]:
        async def run(store: TimeSeriesStore) -> list[Bucket]:
            return await store.history(
                device, gauge, start=day, end=END, step_seconds=60, aggregate="mean"
            )

        return run

    def history_summary(buckets: list[Bucket]) -> tuple[float, ...]:
        return len(buckets), sum(b.value for b in buckets)

    def usage(device: str) -> Callable[[TimeSeriesStore], Awaitable[float]]:
        async def run(store: TimeSeriesStore) -> float:
            return await store.usage(device, counter, start=month, end=END)

        return run

    def usage_summary(used: float) -> tuple[float, ...]:
        return (used,)

    polled = min(POLLED_DEVICES, len(ids))

    async def poll(store: TimeSeriesStore, run: int) -> None:
        # the next run's devices (in turn) report every metric, newer than anything stored
        ts = END + timedelta(seconds=run + 1)
        first = run * polled % len(ids)
        devices = [ids[(first + n) % len(ids)] for n in range(polled)]
        await store.write(
            [Reading(d, m, float(run), ts) for d in devices for m in metrics if m not in COUNTERS]
        )

    gauges = polled * sum(m not in COUNTERS for m in metrics)
    dense_rows = shape.per_series + shape.dense_count
    found: list[Query] = [
        Query(
            f"open, which reads latest's {series:,} whole",
            None,
            latest_all,
            latest_summary,
            fresh=True,
        ),
        Query(f"latest, all {series:,} series: latest()", LATEST_MS, latest_all, latest_summary),
        Query(f"latest, the {len(ids):,} device ids listed", LATEST_MS, latest_ids, latest_summary),
    ]
    if shape.dense:
        label = f"history 24 h @60 s mean, {dense} (dense)"
        found.append(Query(label, HISTORY_MS, history(dense), history_summary))
    label = f"history 24 h @60 s mean, {sparse}"
    found.append(Query(label, HISTORY_MS, history(sparse), history_summary))
    if shape.dense:
        label = f"usage 30 d, {dense} ({dense_rows:,} readings)"
        found.append(Query(label, USAGE_MS, usage(dense), usage_summary))
    label = f"usage 30 d, {sparse} ({shape.per_series:,} readings)"
    found.append(Query(label, USAGE_MS, usage(sparse), usage_summary))
    # last: its writes come after END, outside every window above
    label = f"latest, all, after {gauges:,} new values"
    found.append(Query(label, LATEST_MS, latest_all, latest_summary, before=poll))
    return found


async def measure(
    store: TimeSeriesStore, opener: Opener, query: Query, warmups: int, repeats: int
) -> Timing:
    times: list[float] = []
    answer: tuple[float, ...] = ()
    for run in range(warmups + repeats):
        if query.before is not None:
            await query.before(store, run)
        async with AsyncExitStack() as stack:
            started = time.perf_counter()
            target = await stack.enter_async_context(opener()) if query.fresh else store
            result = await query.run(target)
            elapsed = (time.perf_counter() - started) * 1000
        if run >= warmups:
            times.append(elapsed)
            answer = query.summary(result)
    times.sort()
    p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
    return Timing(statistics.median(times), p95, answer)


async def run_queries(
    opener: Opener, shape: Shape, args: argparse.Namespace, label: str
) -> list[Timing]:
    timings = []
    async with opener() as store:
        for query in queries(shape):
            timings.append(await _timed(store, opener, query, args, label))
    return timings


async def _timed(
    store: TimeSeriesStore, opener: Opener, query: Query, args: argparse.Namespace, label: str
) -> Timing:
    timing = await measure(store, opener, query, args.warmups, args.repeats)
    print(
        f"   {label}: {query.label:<44} median {timing.median_ms:7.2f} ms  "
        f"p95 {timing.p95_ms:7.2f} ms",
        flush=True,
    )
    return timing


# --- the backends -------------------------------------------------------------------------------


@dataclass
class Outcome:
    load: Load
    timings: list[Timing]


async def sqlite_backend(shape: Shape, directory: Path, args: argparse.Namespace) -> Outcome:
    path = directory / "store.db"
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    print(f"\n2. SQLite {sqlite3.sqlite_version}: loading {shape.total:,} readings into {path}")
    async with SqliteStore(path) as store:
        result = await load(store, shape, args.load_batch, "SQLite")
    result.size, result.size_detail = sqlite_size(path)
    stored = count_readings(path)
    result.notes.append(f"{stored:,} readings stored")
    print(f"   size: {_mb(result.size)} ({result.size_detail}); {stored:,} readings", flush=True)
    print("\n3. SQLite queries", flush=True)
    timings = await run_queries(lambda: SqliteStore(path), shape, args, "SQLite")
    return Outcome(result, timings)


@contextmanager
def postgres_server() -> Iterator[tuple[str, str]]:
    """A DSN, and where it came from."""
    configured = os.environ.get(DSN_VARIABLE)
    if configured:
        yield configured, DSN_VARIABLE
        return
    with postgres_cluster() as cluster:
        yield cluster.dsn, "a throwaway cluster (tests.pg: fsync=off, synchronous_commit=off)"


async def postgres_backend(dsn: str, shape: Shape, args: argparse.Namespace) -> Outcome:
    schema = f"bench_store_{os.urandom(3).hex()}"
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        buffers = await conn.fetchval("SHOW shared_buffers")
        print(
            f"\n2. PostgreSQL {version} (shared_buffers {buffers}): loading {shape.total:,} "
            f"readings into schema {schema}",
            flush=True,
        )
        try:
            async with PostgresStore(dsn, schema=schema) as store:
                result = await load(store, shape, args.load_batch, "PostgreSQL")
                started = time.perf_counter()
                for table in ("readings", "readings_1m", "readings_1h", "latest"):
                    await conn.execute(f'VACUUM (ANALYZE) "{schema}".{table}')
                vacuum = time.perf_counter() - started
                result.notes.append(f"VACUUM ANALYZE afterwards {vacuum:.1f}s")
                result.size, result.size_detail = await postgres_size(
                    conn, schema, store.hypertable
                )
                stored = int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".readings'))
                result.notes.append(f"{stored:,} readings stored")
                print(
                    f"   VACUUM ANALYZE {vacuum:.1f}s; size: {_mb(result.size)} "
                    f"({result.size_detail}); {stored:,} readings",
                    flush=True,
                )
                print("\n3. PostgreSQL queries", flush=True)
                timings = await run_queries(
                    lambda: PostgresStore(dsn, schema=schema), shape, args, "PostgreSQL"
                )
        finally:
            if not args.keep_schema:
                await drop_schema(dsn, schema)
    finally:
        await conn.close()
    return Outcome(result, timings)


# --- the report ---------------------------------------------------------------------------------


def verdict(timing: Timing | None, target: float | None) -> str:
    if timing is None:
        return f"{'-':^25}"
    if target is None:
        return f"{timing.median_ms:8.2f} {timing.p95_ms:8.2f}  {'':<6}"
    mark = "met" if timing.median_ms < target else "MISSED"
    if mark == "met" and timing.p95_ms >= target:
        mark = "met*"
    return f"{timing.median_ms:8.2f} {timing.p95_ms:8.2f}  {mark:<6}"


def report(shape: Shape, writer: WriterResult | None, outcomes: dict[str, Outcome]) -> bool:
    sqlite, postgres = outcomes.get("sqlite"), outcomes.get("postgres")
    print(
        f"\n{shape.total:,} readings: {shape.devices:,} devices x {shape.metrics} metrics x "
        f"{shape.per_series:,} (one every {shape.period_s / 60:.1f} min over 30 days)"
        + (
            f" + {shape.dense_count * shape.metrics:,} of dev0000 every {DENSE_STEP_S} s "
            "over the last 24 h"
            if shape.dense
            else ""
        )
    )
    ok = True
    if writer is not None:
        print(
            f"\nWriter throughput (SQLite), the first {writer.rows:,} readings in batches of "
            f"{writer.batch_size}:"
        )
        print("\n".join(writer.lines()))
        ok = writer.met
    head = f"{'median':>8} {'p95':>8}  {'':<6}"
    print(f"\n{'':<46} {'target':>8}   {'SQLite (ms)':^25}   {'PostgreSQL (ms)':^25}")
    print(f"{'query':<46} {'':>8}   {head}   {head}")
    for index, query in enumerate(queries(shape)):
        lite = sqlite.timings[index] if sqlite else None
        pg = postgres.timings[index] if postgres else None
        target = query.target_ms
        for timing in (lite, pg):
            ok &= timing is None or target is None or timing.median_ms < target
        print(
            f"{query.label:<46} {'-' if target is None else '< ' + format(target, 'g'):>8}   "
            f"{verdict(lite, target)}   {verdict(pg, target)}"
        )
    print("(met/MISSED on the median; met* = median met, p95 over the target)")
    print(f"\n{'':<22} {'SQLite':>34}   {'PostgreSQL':>34}")
    for label, cell in (
        ("load (time in write)", _load_cell),
        ("size on disk", lambda o: _mb(o.load.size)),
    ):
        cells = [cell(o) if o else "-" for o in (sqlite, postgres)]
        print(f"{label:<22} {cells[0]:>34}   {cells[1]:>34}")
    for name, outcome in outcomes.items():
        notes = "; ".join(outcome.load.notes)
        print(f"  {name}: {outcome.load.size_detail}; wall {outcome.load.wall:.0f}s; {notes}")
    if sqlite and postgres:
        ok &= compare(shape, sqlite, postgres)
    return ok


def _load_cell(outcome: Outcome) -> str:
    result = outcome.load
    return f"{result.seconds:,.0f}s, {result.rows / result.seconds:,.0f} rows/s"


def compare(shape: Shape, sqlite: Outcome, postgres: Outcome) -> bool:
    """The two backends' answers should agree (sums of floats up to rounding)."""
    differences = [
        f"{query.label}: SQLite {a.answer}, PostgreSQL {b.answer}"
        for query, a, b in zip(queries(shape), sqlite.timings, postgres.timings, strict=True)
        if len(a.answer) != len(b.answer)
        or not all(
            math.isclose(x, y, rel_tol=1e-9) for x, y in zip(a.answer, b.answer, strict=True)
        )
    ]
    if differences:
        print("\nSQLite and PostgreSQL DISAGREE:\n  " + "\n  ".join(differences))
        return False
    print("\nSQLite and PostgreSQL gave the same answers to every query.")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int)
    parser.add_argument("--metrics", type=int, help="at least 3: two counters and a gauge")
    parser.add_argument("--per-series", type=int, help="readings per series over 30 days")
    parser.add_argument("--dense", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="a small run, for a smoke test")
    parser.add_argument("--writer-rows", type=int, help="readings in the writer comparison")
    parser.add_argument("--writer-batch", type=int, default=500, help="BatchWriter's default")
    parser.add_argument("--writer-runs", type=int, default=5, help="runs of each, for a median")
    parser.add_argument("--load-batch", type=int, default=20_000)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--warmups", type=int)
    parser.add_argument("--dir", type=Path, help="keep the SQLite files here (default: temporary)")
    parser.add_argument("--keep-schema", action="store_true", help="leave the PostgreSQL schema")
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.metrics < 3:
        parser.error("--metrics must be at least 3 (two counters and a gauge)")
    shape = Shape(args.devices, args.metrics, args.per_series, args.dense)
    load_average = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"{shape.total:,} readings; {os.cpu_count()} CPUs, load average {load_average}",
        flush=True,
    )
    outcomes: dict[str, Outcome] = {}
    writer: WriterResult | None = None
    with tempfile.TemporaryDirectory(prefix="bench-store-") as temporary:
        directory = args.dir or Path(temporary)
        directory.mkdir(parents=True, exist_ok=True)
        if args.backend in ("sqlite", "both"):
            writer = writer_comparison(
                shape, directory, args.writer_rows, args.writer_batch, args.writer_runs
            )
            outcomes["sqlite"] = asyncio.run(sqlite_backend(shape, directory, args))
        if args.backend in ("postgres", "both"):
            with postgres_server() as (dsn, source):
                print(f"\nPostgreSQL: {source}", flush=True)
                outcomes["postgres"] = asyncio.run(postgres_backend(dsn, shape, args))
    return 0 if report(shape, writer, outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
