"""One time-series contract, two backends: every case runs against SQLite and PostgreSQL.

PostgreSQL is real: EQUIPWATCH_TEST_POSTGRES_DSN, or a throwaway cluster for the session (see
tests/pg.py); each test works in a schema of its own. Expectations are computed by hand, except
for rollups, which are checked against a recomputation from the readings the test wrote (the
first of each key, as the store keeps). Their values are multiples of 0.25, so that every sum
is exact in binary floating point whatever the order of addition, and means compare exactly.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import asyncpg
import pytest

from core.counters import counter_delta
from core.errors import StoreError
from core.net import free_port
from core.records import FaultEvent, Quality, Reading, Record, StatusChange
from core.store import (
    AGGREGATES,
    Aggregate,
    Bucket,
    LatestValue,
    PostgresStore,
    SqliteStore,
    TimeSeriesStore,
)
from core.store.timeseries import Resolution, collector_paused, latest_values, plan_history
from tests.pg import drop_schema, postgres_cluster, postgres_dsn, schema_name
from tests.support import wait_for

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday, on a whole minute


class Opener(Protocol):
    """Opens the test's store; ``options`` go to the constructor (retention periods, the
    rollup interval)."""

    def __call__(self, **options: float | None) -> AbstractAsyncContextManager[TimeSeriesStore]: ...


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def minutes(value: float) -> datetime:
    return T0 + timedelta(minutes=value)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    with postgres_dsn() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens the same store (file or schema) each time it is called, so reopening is testable."""
    if request.param == "sqlite":
        path = tmp_path / "store.sqlite"

        def open_sqlite(**options: Any) -> AbstractAsyncContextManager[TimeSeriesStore]:
            return SqliteStore(path, **options)

        yield open_sqlite
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    schema = schema_name(request.node.name)

    def open_postgres(**options: Any) -> AbstractAsyncContextManager[TimeSeriesStore]:
        return PostgresStore(dsn, schema=schema, **options)

    yield open_postgres
    await drop_schema(dsn, schema)


@pytest.fixture
async def store(opener: Opener) -> AsyncIterator[TimeSeriesStore]:
    async with opener() as opened:
        yield opened


async def count(store: TimeSeriesStore, device_id: str, metric: str) -> float:
    """How many readings one series holds, through the contract itself (one bucket a year)."""
    buckets = await store.history(
        device_id,
        metric,
        start=T0 - timedelta(days=1),
        end=T0 + timedelta(days=1),
        step_seconds=366 * 86400,
        aggregate="count",
    )
    return sum(bucket.value for bucket in buckets)


# --- writes ---------------------------------------------------------------------------------


async def test_a_replayed_batch_creates_no_duplicates(store: TimeSeriesStore) -> None:
    batch: list[Record] = [
        Reading(f"dev-{n % 50}", "cycles", float(n), at(n), raw=n, width=32) for n in range(2000)
    ]
    batch += [
        FaultEvent("dev-1", "E12", at(5)),
        FaultEvent("dev-1", "E12", at(9), active=False),
        StatusChange("dev-1", False, at(7), "timeout"),
    ]
    await store.write(batch)
    await store.write(batch)
    await store.write(batch[1000:])  # a partial replay, as an outbox may resend a tail
    assert await count(store, "dev-0", "cycles") == 40
    assert len(await store.latest()) == 50
    window = {"start": T0, "end": at(3600)}
    assert len(await store.faults("dev-1", **window)) == 2
    assert len(await store.status_changes("dev-1", **window)) == 1


async def test_a_replayed_reading_keeps_its_first_value_in_history(
    store: TimeSeriesStore,
) -> None:
    await store.write([Reading("ups", "load", 40.0, T0)])
    await store.write([Reading("ups", "load", 40.0, T0), Reading("ups", "load", 41.0, at(1))])
    buckets = await store.history(
        "ups", "load", start=T0, end=at(60), step_seconds=60, aggregate="mean"
    )
    assert [b.value for b in buckets] == [40.5]


async def test_an_empty_batch_is_a_no_op(store: TimeSeriesStore) -> None:
    await store.write([])
    assert await store.latest() == []


async def test_a_reopened_store_keeps_its_data(opener: Opener) -> None:
    async with opener() as store:
        await store.write([Reading("ups", "load", 40.0, T0)])
    async with opener() as store:
        [latest] = await store.latest()
        await store.write([Reading("ups", "load", 40.0, T0)])
        assert (latest.value, await count(store, "ups", "load")) == (40.0, 1)


async def test_times_are_kept_to_the_millisecond(store: TimeSeriesStore) -> None:
    await store.write([Reading("ups", "load", 1.0, T0 + timedelta(microseconds=123_456))])
    [latest] = await store.latest()
    assert latest.ts == T0 + timedelta(milliseconds=123)
    assert latest.ts.utcoffset() == timedelta(0)


# --- latest ---------------------------------------------------------------------------------


async def test_latest_for_many_devices_at_once(store: TimeSeriesStore) -> None:
    await store.write(
        [Reading(f"dev-{n:03}", "load", float(n), at(n)) for n in range(300)]
        + [Reading(f"dev-{n:03}", "temp", 20.0 + n, at(n)) for n in range(0, 300, 100)]
    )
    got = await store.latest(["dev-200", "dev-007", "dev-100", "dev-999"])
    assert [(v.device_id, v.metric, v.value, v.ts) for v in got] == [
        ("dev-007", "load", 7.0, at(7)),
        ("dev-100", "load", 100.0, at(100)),
        ("dev-100", "temp", 120.0, at(100)),
        ("dev-200", "load", 200.0, at(200)),
        ("dev-200", "temp", 220.0, at(200)),
    ]
    assert len(await store.latest()) == 303
    assert await store.latest([]) == []


async def test_an_older_reading_does_not_replace_a_newer_latest(store: TimeSeriesStore) -> None:
    await store.write([Reading("ac-1", "temp", 134.0, minutes(5), Quality.GOOD)])
    await store.write([Reading("ac-1", "temp", 20.0, T0, Quality.BAD)])  # arrives late
    # and within one batch: the newer first, the older after it
    await store.write([Reading("ac-1", "door", 1.0, minutes(9)), Reading("ac-1", "door", 0.0, T0)])
    got = await store.latest(["ac-1"])
    assert [(v.metric, v.value, v.ts, v.quality) for v in got] == [
        ("door", 1.0, minutes(9), Quality.GOOD),
        ("temp", 134.0, minutes(5), Quality.GOOD),
    ]


async def test_a_newer_reading_replaces_the_latest(store: TimeSeriesStore) -> None:
    await store.write([Reading("ac-1", "temp", 20.0, T0)])
    await store.write([Reading("ac-1", "temp", 134.0, minutes(5), Quality.UNCERTAIN)])
    [latest] = await store.latest(["ac-1"])
    assert (latest.value, latest.ts, latest.quality) == (134.0, minutes(5), Quality.UNCERTAIN)


async def test_latest_is_in_byte_order_of_device_then_metric(store: TimeSeriesStore) -> None:
    # byte order, as SQLite sorts: upper case before lower, "dev-10" before "dev-2"
    names = ["dev-2", "dev-10", "Dev-3", "dev_1"]
    await store.write([Reading(name, metric, 1.0, T0) for name in names for metric in "ba"])
    got = [(v.device_id, v.metric) for v in await store.latest()]
    assert got == [(name, metric) for name in sorted(names) for metric in "ab"]
    assert sorted(names) == ["Dev-3", "dev-10", "dev-2", "dev_1"]


def _latest_key(value: LatestValue) -> tuple[str, str, float, datetime, Quality]:
    return (value.device_id, value.metric, value.value, value.ts, value.quality)


async def test_latest_kept_between_calls_follows_every_kind_of_write(opener: Opener) -> None:
    """A store that answered ``latest`` before answers after writes from itself and from a
    second store on the same data (another process) exactly as a store opened afresh."""
    rng = random.Random(7)
    devices = [f"dev-{n}" for n in range(12)]
    async with opener(rollup_interval=None) as reader, opener(rollup_interval=None) as other:
        assert await reader.latest() == []
        for round_ in range(8):
            for writer in (reader, other):
                batch = [
                    Reading(
                        rng.choice(devices),
                        rng.choice(["load", "temp", "cycles"]),
                        float(rng.randrange(1000)),
                        # now and then older than what is stored: must not replace it
                        at(rng.randrange(round_ * 40, round_ * 40 + 60)),
                        rng.choice(list(Quality)),
                    )
                    for _ in range(rng.randrange(1, 15))
                ]
                await writer.write(batch)
            some = rng.sample(devices, 4)
            async with opener(rollup_interval=None) as fresh:
                assert [_latest_key(v) for v in await reader.latest()] == [
                    _latest_key(v) for v in await fresh.latest()
                ]
                assert [_latest_key(v) for v in await reader.latest(some)] == [
                    _latest_key(v) for v in await fresh.latest(some)
                ]


async def test_latest_answers_are_the_callers_to_keep(store: TimeSeriesStore) -> None:
    await store.write([Reading("ups", "load", 40.0, T0)])
    first = await store.latest()
    first.clear()
    assert [v.value for v in await store.latest()] == [40.0]


async def test_latest_sees_a_transaction_that_commits_after_a_call_began_before_it(
    pg_dsn: str, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL assigns transaction ids as transactions start, and they commit in any
    order: a row written by a transaction still open when ``latest`` was called is read by
    the next call, though transactions after it committed and were read meanwhile."""
    schema = schema_name(request.node.name)
    try:
        async with PostgresStore(pg_dsn, schema=schema, rollup_interval=None) as store:
            await store.write([Reading("slow", "load", 1.0, T0)])
            assert [v.value for v in await store.latest()] == [1.0]
            slow = await asyncpg.connect(pg_dsn)
            try:
                transaction = slow.transaction()
                await transaction.start()
                await slow.execute(
                    f'UPDATE "{schema}".latest SET value = 2.0, '
                    "changed = pg_current_xact_id() WHERE device_id = 'slow'"
                )
                await store.write([Reading("fast", "load", 3.0, T0)])
                assert [(v.device_id, v.value) for v in await store.latest()] == [
                    ("fast", 3.0),
                    ("slow", 1.0),
                ]
                await transaction.commit()
            finally:
                await slow.close()
            assert [(v.device_id, v.value) for v in await store.latest()] == [
                ("fast", 3.0),
                ("slow", 2.0),
            ]
    finally:
        await drop_schema(pg_dsn, schema)


def test_latest_values_are_the_values_the_class_makes() -> None:
    # built without the dataclass's __init__, for speed: they must be indistinguishable
    rows = [("ups", "load", 1.5, 0, "good"), ("ups", "temp", -2.0, 1_500, "bad")]
    built = latest_values(rows, lambda ms: T0 + timedelta(milliseconds=ms))
    expected = [
        LatestValue("ups", "load", 1.5, T0, Quality.GOOD),
        LatestValue("ups", "temp", -2.0, T0 + timedelta(seconds=1.5), Quality.BAD),
    ]
    assert built == expected
    assert [hash(v) for v in built] == [hash(v) for v in expected]
    assert [repr(v) for v in built] == [repr(v) for v in expected]
    with pytest.raises(AttributeError):
        built[0].value = 2.0  # type: ignore[misc]


def test_the_collector_is_paused_and_then_left_as_it_was() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the application's choice stands
    finally:
        gc.enable()


# --- history ----------------------------------------------------------------------------------

# ups/load in a window [T0+10s, T0+300s) with 60 s steps; buckets start at T0, T0+120s, T0+240s
# (T0+60s and T0+180s hold nothing and are omitted):
#   T0+0s    10    before the window
#   T0+40s   20  ┐ bucket T0 (it starts before the window: alignment is to the epoch)
#   T0+20s   30  ┘ written after T0+40s, so "last" must go by time, not by arrival
#   T0+130s   5  ┐ bucket T0+120s
#   T0+170s   7  ┘
#   T0+250s   4    bucket T0+240s
#   T0+300s 1000   at the end of the window: excluded
HISTORY = [(0, 10.0), (40, 20.0), (20, 30.0), (130, 5.0), (170, 7.0), (250, 4.0), (300, 1000.0)]
BUCKETS = [T0, at(120), at(240)]
EXPECTED: dict[Aggregate, list[float]] = {
    "min": [20.0, 5.0, 4.0],
    "max": [30.0, 7.0, 4.0],
    "mean": [25.0, 6.0, 4.0],
    "last": [20.0, 7.0, 4.0],
    "count": [2.0, 2.0, 1.0],
}


def test_every_aggregate_has_an_expectation() -> None:
    assert set(EXPECTED) == set(AGGREGATES)


@pytest.mark.parametrize("aggregate", AGGREGATES)
async def test_history_buckets(store: TimeSeriesStore, aggregate: Aggregate) -> None:
    await store.write(
        [Reading("ups", "load", value, at(s)) for s, value in HISTORY]
        # neighbours that must not leak in: another metric, another device
        + [Reading("ups", "temp", 500.0, at(s)) for s, _ in HISTORY]
        + [Reading("ups-2", "load", 500.0, at(s)) for s, _ in HISTORY]
    )
    buckets = await store.history(
        "ups", "load", start=at(10), end=at(300), step_seconds=60, aggregate=aggregate
    )
    assert [(b.start, b.value) for b in buckets] == list(
        zip(BUCKETS, EXPECTED[aggregate], strict=True)
    )


async def test_history_buckets_align_to_the_epoch_not_to_the_window(
    store: TimeSeriesStore,
) -> None:
    # the epoch was a Thursday, so week-long buckets start on Thursdays 00:00 UTC
    await store.write(
        [Reading("ups", "load", 1.0, T0), Reading("ups", "load", 3.0, T0 + timedelta(days=4))]
    )
    week = 7 * 86400
    end = T0 + timedelta(days=14)
    buckets = await store.history(
        "ups", "load", start=T0, end=end, step_seconds=week, aggregate="mean"
    )
    assert [(b.start, b.value) for b in buckets] == [
        (datetime(2026, 2, 26, tzinfo=UTC), 1.0),
        (datetime(2026, 3, 5, tzinfo=UTC), 3.0),
    ]


async def test_history_of_an_unknown_series_is_empty(store: TimeSeriesStore) -> None:
    buckets = await store.history(
        "nobody", "load", start=T0, end=at(60), step_seconds=60, aggregate="max"
    )
    assert buckets == []


@pytest.mark.parametrize(
    ("step", "aggregate"),
    [
        pytest.param(0, "mean", id="zero-step"),
        pytest.param(-60, "mean", id="negative-step"),
        pytest.param(1.5, "mean", id="fractional-step"),
        pytest.param(60, "median", id="unknown-aggregate"),
        pytest.param(60, "min(value)); DROP TABLE readings; --", id="sql-as-aggregate"),
    ],
)
async def test_history_refuses_bad_arguments(
    store: TimeSeriesStore, step: int, aggregate: Aggregate
) -> None:
    with pytest.raises(ValueError, match=r"^(step_seconds|aggregate) must be"):
        await store.history(
            "ups", "load", start=T0, end=at(60), step_seconds=step, aggregate=aggregate
        )


# --- usage ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageCase:
    """Counter readings as (minute, raw, width), a window in minutes, the usage expected."""

    readings: list[tuple[float, int | None, int | None]]
    start: float
    end: float
    expected: float


USAGE = {
    # 65530 -> 65535: 5; -> 3 wraps: 4; -> 10: 7
    "across-a-uint16-wrap": UsageCase(
        [(1, 65530, 16), (2, 65535, 16), (3, 3, 16), (4, 10, 16)], 0, 60, 16
    ),
    # 30000 -> 30010: 10; -> 20 is a reset (20 + 65536 - 30010 is over half the range): 20;
    # -> 25: 5
    "across-a-reset": UsageCase(
        [(1, 30000, 16), (2, 30010, 16), (3, 20, 16), (4, 25, 16)], 0, 60, 35
    ),
    # a device off for three days counted 40 meanwhile
    "across-a-gap": UsageCase([(1, 100, 32), (2, 110, 32), (3 * 1440, 150, 32)], 0, 5 * 1440, 50),
    # nothing inside the window: nothing counted, however far the last reading lies before it
    "a-window-inside-a-gap": UsageCase([(1, 100, 32), (3 * 1440, 150, 32)], 60, 120, 0),
    # the newest reading before the window (110, not 50) starts it: 110 -> 120 -> 125
    "with-the-reading-before-the-window": UsageCase(
        [(-120, 50, 32), (-60, 110, 32), (10, 120, 32), (20, 125, 32), (60, 200, 32)], 0, 60, 15
    ),
    "a-wrap-into-the-window": UsageCase([(-1, 65535, 16), (1, 5, 16)], 0, 60, 6),
    "no-reading-before-the-window": UsageCase([(10, 120, 32), (20, 125, 32)], 0, 60, 5),
    "readings-without-raw-use-the-value": UsageCase([(1, None, None), (2, None, None)], 0, 60, 1),
    "no-readings": UsageCase([], 0, 60, 0),
}


def _scaled(minute: float, raw: int | None) -> float:
    """A channel scaled by 0.1, so that usage from values instead of raw would be 10x off;
    without raw the value is all there is (10.5 then 11.5)."""
    return 9.5 + minute if raw is None else raw / 10


@pytest.mark.parametrize("case", USAGE.values(), ids=USAGE.keys())
async def test_usage(store: TimeSeriesStore, case: UsageCase) -> None:
    # usage is in raw units wherever raw is stored
    readings = [
        Reading("ac-1", "cycles", _scaled(m, raw), minutes(m), raw=raw, width=width)
        for m, raw, width in case.readings
    ]
    # neighbours that must not leak in: another metric, another device
    noise = [
        Reading(device, metric, 0.0, minutes(m), raw=int(1e6 * m), width=32)
        for device, metric in (("ac-1", "other"), ("ac-2", "cycles"))
        for m in (0.5, 30)
    ]
    await store.write(readings + noise)
    got = await store.usage("ac-1", "cycles", start=minutes(case.start), end=minutes(case.end))
    assert got == case.expected


def _counter_series(rng: random.Random) -> list[Reading]:
    """A counter's readings, a minute apart on average, that climb, wrap (uint16 and uint32
    registers), reset, and change register width; or, without raw, fractional values that
    mostly climb."""
    readings: list[Reading] = []
    minute = 0.0
    raw = rng.randrange(2**16)
    for _ in range(rng.randrange(1, 120)):
        minute += rng.choice((0.25, 1, 1, 3, 60))
        width = rng.choice((16, 16, 32, None))
        if width is None:
            value = rng.uniform(0, 1e4) if rng.random() < 0.05 else raw / 7 + rng.random()
            readings.append(Reading("ac-1", "cycles", value, minutes(minute)))
            continue
        step = rng.random()
        if step < 0.1:
            raw = rng.randrange(100)  # a reset
        elif step < 0.2:
            raw = (raw + rng.randrange(2**width // 2)) % 2**width  # up, maybe a wrap
        else:
            raw = (raw + rng.randrange(50)) % 2**width
        readings.append(Reading("ac-1", "cycles", raw / 10, minutes(minute), raw=raw, width=width))
    return readings


@pytest.mark.parametrize("seed", range(5))
async def test_usage_is_counter_delta_over_consecutive_readings(
    store: TimeSeriesStore, seed: int
) -> None:
    """The store sums the deltas itself; it answers as ``counter_delta`` folded in Python does,
    to the last bit, over windows that start before, inside and after the readings."""
    rng = random.Random(seed)
    readings = _counter_series(rng)
    await store.write(readings)
    last = (readings[-1].ts - T0) / timedelta(minutes=1)
    for _ in range(20):
        start, end = sorted(rng.randrange(-30 * 60, int(last * 60) + 90) for _ in range(2))
        window = (at(start), at(end))
        before = [r for r in readings if r.ts < window[0]][-1:]
        inside = [r for r in readings if window[0] <= r.ts < window[1]]
        expected, previous = 0.0, None
        for reading in before + inside:
            counter = float(reading.raw) if reading.raw is not None else reading.value
            if previous is not None:
                expected += counter_delta(previous, counter, reading.width)
            previous = counter
        got = await store.usage("ac-1", "cycles", start=window[0], end=window[1])
        assert got == expected, (start, end)


# --- faults and status changes ----------------------------------------------------------------

WINDOW = {"start": T0, "end": minutes(15)}
FAULTS = [
    FaultEvent("ac-1", "E12", minutes(9), active=False),
    FaultEvent("ups", "F1", minutes(1)),
    FaultEvent("ac-1", "E12", minutes(5)),
    FaultEvent("ac-1", "E02", minutes(5)),  # same time as E12: ordered by code
    FaultEvent("ups", "F9", minutes(5)),  # same time again: ordered by device
    FaultEvent("ups", "F1", minutes(15), active=False),  # at the end: excluded
    FaultEvent("ac-1", "E07", minutes(-1)),  # before the start: excluded
]


async def test_faults_by_time_across_devices(store: TimeSeriesStore) -> None:
    await store.write(FAULTS)
    got = await store.faults(None, **WINDOW)
    assert [(f.device_id, f.code, f.ts, f.active) for f in got] == [
        ("ups", "F1", minutes(1), True),
        ("ac-1", "E02", minutes(5), True),
        ("ac-1", "E12", minutes(5), True),
        ("ups", "F9", minutes(5), True),
        ("ac-1", "E12", minutes(9), False),
    ]


async def test_faults_of_one_device(store: TimeSeriesStore) -> None:
    await store.write(FAULTS)
    got = await store.faults("ac-1", **WINDOW)
    assert [(f.code, f.ts, f.active) for f in got] == [
        ("E02", minutes(5), True),
        ("E12", minutes(5), True),
        ("E12", minutes(9), False),
    ]
    assert await store.faults("nobody", **WINDOW) == []


async def test_a_raise_and_a_clear_at_one_time_are_two_events(store: TimeSeriesStore) -> None:
    await store.write([FaultEvent("ac-1", "E12", T0), FaultEvent("ac-1", "E12", T0, False)])
    # written raise first; ordered clear first (False < True), by device and across devices
    assert [f.active for f in await store.faults("ac-1", **WINDOW)] == [False, True]
    assert [f.active for f in await store.faults(None, **WINDOW)] == [False, True]


STATUSES = [
    StatusChange("ups", True, minutes(12), "answered"),
    StatusChange("ups", False, minutes(2), "timeout"),
    StatusChange("ac-1", False, minutes(2), "last will"),  # same time: ordered by device
    StatusChange("ac-1", True, minutes(7), "data received"),
    StatusChange("ac-1", False, minutes(15), "timeout"),  # at the end: excluded
    StatusChange("ups", True, minutes(-3), "answered"),  # before the start: excluded
]


async def test_status_changes_by_time_across_devices(store: TimeSeriesStore) -> None:
    await store.write(STATUSES)
    got = await store.status_changes(None, **WINDOW)
    assert got == [
        StatusChange("ac-1", False, minutes(2), "last will"),
        StatusChange("ups", False, minutes(2), "timeout"),
        StatusChange("ac-1", True, minutes(7), "data received"),
        StatusChange("ups", True, minutes(12), "answered"),
    ]


async def test_status_changes_of_one_device(store: TimeSeriesStore) -> None:
    await store.write(STATUSES)
    got = await store.status_changes("ups", **WINDOW)
    assert [(s.online, s.ts) for s in got] == [(False, minutes(2)), (True, minutes(12))]


# --- PostgreSQL only: its failures, its schema ------------------------------------------------


def _with_path(dsn: str, path: str) -> str:
    return urlsplit(dsn)._replace(path=path).geturl()


@pytest.mark.parametrize(
    "make_dsn",
    [
        pytest.param(lambda dsn: f"postgresql://postgres@127.0.0.1:{free_port()}/x", id="refused"),
        pytest.param(lambda dsn: _with_path(dsn, "/no_such_database"), id="no-such-database"),
        pytest.param(lambda dsn: "postgresql://127.0.0.1:notaport/x", id="malformed"),
    ],
)
async def test_a_bad_dsn_is_a_store_error(pg_dsn: str, make_dsn: Callable[[str], str]) -> None:
    with pytest.raises(StoreError) as raised:
        async with PostgresStore(make_dsn(pg_dsn), schema="never_created"):
            pass
    assert raised.value.__cause__ is not None  # translated, with the driver's error kept


async def test_a_stopped_server_is_a_store_error_and_closing_still_works() -> None:
    with postgres_cluster() as cluster:
        async with PostgresStore(cluster.dsn, schema="stopping") as store:
            await store.write([Reading("ups", "load", 1.0, T0)])
            cluster.stop()
            with pytest.raises(StoreError) as raised:
                await store.write([Reading("ups", "load", 2.0, at(1))])
            assert isinstance(raised.value.__cause__, asyncpg.PostgresError | OSError)
            with pytest.raises(StoreError):
                await store.latest()
            with pytest.raises(StoreError):
                await store.usage("ups", "load", start=T0, end=at(60))
        with pytest.raises(StoreError):
            async with PostgresStore(cluster.dsn, schema="stopping"):
                pass


async def test_a_closed_store_is_a_store_error(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, schema=schema_name("closed"))
    with pytest.raises(StoreError, match="not open"):
        await store.latest()


async def test_a_schema_from_a_newer_version_is_refused(
    pg_dsn: str, request: pytest.FixtureRequest
) -> None:
    schema = schema_name(request.node.name)
    async with PostgresStore(pg_dsn, schema=schema):
        pass
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            f"UPDATE \"{schema}\".meta SET value = '99' WHERE key = 'schema_version'"
        )
    finally:
        await conn.close()
    try:
        with pytest.raises(StoreError, match="newer equipwatch"):
            async with PostgresStore(pg_dsn, schema=schema):
                pass
    finally:
        await drop_schema(pg_dsn, schema)


async def test_the_readings_table_kind_is_logged_and_matches_the_catalog(
    pg_dsn: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    schema = schema_name(request.node.name)
    caplog.set_level(logging.INFO, logger="core.store.postgres")
    try:
        async with PostgresStore(pg_dsn, schema=schema) as store:
            hypertable = store.hypertable
        conn = await asyncpg.connect(pg_dsn)
        try:
            installed = await conn.fetchval(
                "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"
            )
            in_catalog = installed is not None and bool(
                await conn.fetchval(
                    "SELECT 1 FROM timescaledb_information.hypertables "
                    "WHERE hypertable_schema = $1",
                    schema,
                )
            )
        finally:
            await conn.close()
    finally:
        await drop_schema(pg_dsn, schema)
    assert hypertable == in_catalog
    expected = "TimescaleDB hypertable" if hypertable else "plain indexed table"
    assert expected in caplog.text


# --- rollups --------------------------------------------------------------------------------

SERIES = [("ac-1", "temp"), ("ac-1", "door"), ("ups", "load")]
WIDTH_MS: dict[Resolution, int] = {"1m": 60_000, "1h": 3_600_000}
RollupRow = tuple[datetime, float, float, float, int, datetime, float]
Stored = dict[tuple[str, str, datetime], float]


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def random_readings(rng: random.Random, n: int, start: datetime, hours: float) -> list[Reading]:
    """Readings of SERIES at random millisecond times over ``hours``, in time order, with
    quarter values (exact sums)."""
    span = int(hours * 3_600_000)
    return [
        Reading(*rng.choice(SERIES), rng.randint(-400, 400) / 4, start + timedelta(milliseconds=ms))
        for ms in sorted(rng.sample(range(span), n))
    ]


def shuffled_batches(rng: random.Random, readings: Sequence[Reading]) -> list[list[Reading]]:
    """Batches as an outbox delivers them after trouble: mostly in time order, a sixth of the
    readings late (in a later batch), exact replays of earlier batches, and one replay whose
    values changed (the store keeps the first)."""
    batches: list[list[Reading]] = []
    late: list[Reading] = []
    position = 0
    while position < len(readings):
        size = rng.randint(1, 60)
        batch = [r for r in readings[position : position + size] if rng.random() > 1 / 6 or late]
        late += [r for r in readings[position : position + size] if r not in batch]
        if late and rng.random() < 0.3:
            batch += late
            late = []
        rng.shuffle(batch)
        batches.append(batch)
        position += size
    batches.append(late)
    for _ in range(4):
        batches.insert(rng.randrange(len(batches) + 1), list(rng.choice(batches)))
    changed = [
        Reading(r.device_id, r.metric, r.value + 100, r.ts) for r in rng.choice(batches[:-1])
    ]
    batches.append(changed)
    return batches


def stored(batches: Sequence[Sequence[Reading]]) -> Stored:
    """What the store keeps of these batches, written in order: the first of each key."""
    kept: Stored = {}
    for batch in batches:
        for r in batch:
            kept.setdefault((r.device_id, r.metric, r.ts), r.value)
    return kept


def recomputed(
    kept: Stored, device_id: str, metric: str, resolution: Resolution
) -> list[RollupRow]:
    width = WIDTH_MS[resolution]
    buckets: dict[int, list[tuple[datetime, float]]] = {}
    for (device, name, ts), value in kept.items():
        if (device, name) == (device_id, metric):
            buckets.setdefault(ms(ts) // width * width, []).append((ts, value))
    rows = []
    for start, readings in sorted(buckets.items()):
        values = [value for _, value in readings]
        last_ts, last_value = max(readings)
        rows.append(
            (
                from_ms(start),
                min(values),
                max(values),
                sum(values),
                len(values),
                last_ts,
                last_value,
            )
        )
    return rows


async def all_rollups(
    store: TimeSeriesStore, start: datetime, end: datetime
) -> dict[tuple[str, str, Resolution], list[RollupRow]]:
    got = {}
    for device_id, metric in SERIES:
        for resolution in WIDTH_MS:
            rollups = await store.rollups(device_id, metric, resolution, start=start, end=end)
            got[device_id, metric, resolution] = [
                (r.start, r.min_value, r.max_value, r.sum_value, r.count, r.last_ts, r.last_value)
                for r in rollups
            ]
    return got


def all_recomputed(kept: Stored) -> dict[tuple[str, str, Resolution], list[RollupRow]]:
    return {
        (device_id, metric, resolution): recomputed(kept, device_id, metric, resolution)
        for device_id, metric in SERIES
        for resolution in WIDTH_MS
    }


WIDE = {"start": T0 - timedelta(days=2), "end": T0 + timedelta(days=3)}


async def test_rollups_equal_a_recomputation_from_raw(
    store: TimeSeriesStore, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(20260302)
    batches = shuffled_batches(rng, random_readings(rng, 600, T0 - timedelta(minutes=20), 3))
    for batch in batches:
        await store.write(batch)
    expected = all_recomputed(stored(batches))
    assert sum(len(rows) for rows in expected.values()) > 300  # many buckets, most shared
    # pending: computed from raw on reading; maintained: stored, and nothing left pending
    assert await all_rollups(store, **WIDE) == expected
    assert await pending_series(store, request) == len(SERIES)
    assert await store.maintain_rollups() == len(SERIES)
    assert await pending_series(store, request) == 0
    assert await all_rollups(store, **WIDE) == expected
    assert await store.maintain_rollups() == 0


async def test_maintenance_between_batches_keeps_the_rollups_exact(
    store: TimeSeriesStore, request: pytest.FixtureRequest
) -> None:
    # maintained every few batches, as the store's task does: late readings and replays land
    # in buckets already computed, which must be recomputed rather than added to
    rng = random.Random(17)
    batches = shuffled_batches(rng, random_readings(rng, 600, T0 - timedelta(minutes=20), 3))
    for number, batch in enumerate(batches):
        await store.write(batch)
        if number % 3 == 2:
            await store.maintain_rollups()
            assert await all_rollups(store, **WIDE) == all_recomputed(stored(batches[: number + 1]))
    await store.maintain_rollups()
    assert await pending_series(store, request) == 0
    assert await all_rollups(store, **WIDE) == all_recomputed(stored(batches))


async def test_a_replayed_batch_leaves_the_rollups_unchanged(store: TimeSeriesStore) -> None:
    rng = random.Random(7)
    readings = random_readings(rng, 300, T0, 2)
    batches = [readings[n : n + 50] for n in range(0, 300, 50)]
    # one key twice in a batch: the first is kept, and counted once
    twice = T0 + timedelta(hours=2, seconds=1)
    batches.append([Reading("ups", "load", 1.0, twice), Reading("ups", "load", 2.0, twice)])
    for batch in batches:
        await store.write(batch)
    await store.maintain_rollups()
    before = await all_rollups(store, **WIDE)
    for batch in reversed(batches):
        await store.write(batch)
    await store.write([Reading(r.device_id, r.metric, -r.value, r.ts) for r in readings[::7]])
    await store.write(readings[100:] + readings[:100])
    assert await all_rollups(store, **WIDE) == before == all_recomputed(stored(batches))
    await store.maintain_rollups()
    assert await all_rollups(store, **WIDE) == before


async def test_concurrent_batches_and_maintenance_keep_the_rollups_exact(
    store: TimeSeriesStore, request: pytest.FixtureRequest
) -> None:
    # overlapping batches and maintenance runs at once: on PostgreSQL they run on several
    # connections, racing for the same series' marks and (with the replays) the same readings
    rng = random.Random(11)
    readings = random_readings(rng, 400, T0, 1)
    batches = [rng.sample(readings, 80) for _ in range(12)]
    await asyncio.gather(
        *(store.write(batch) for batch in batches),
        *(store.maintain_rollups() for _ in range(4)),
    )
    # and many short rounds, so that writes land while a maintenance is between reading a
    # series' readings and clearing its mark
    for _ in range(40):
        round_batches = [rng.sample(readings, 10) for _ in range(3)]
        batches += round_batches
        await asyncio.gather(
            store.maintain_rollups(),
            *(store.write(batch) for batch in round_batches),
            store.maintain_rollups(),
        )
    expected = all_recomputed(stored(batches))
    assert await all_rollups(store, **WIDE) == expected
    await store.maintain_rollups()
    assert await pending_series(store, request) == 0
    assert await all_rollups(store, **WIDE) == expected


async def test_the_store_maintains_its_rollups_by_itself(
    opener: Opener, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(23)
    readings = random_readings(rng, 200, T0, 2)
    async with opener(rollup_interval=0.05) as store:
        await store.write(readings)
        assert await pending_series(store, request) == len(SERIES)

        async def caught_up() -> bool:
            return await pending_series(store, request) == 0

        await wait_for(caught_up, timeout=10, what="the store's own rollup maintenance")
        assert await all_rollups(store, **WIDE) == all_recomputed(stored([readings]))
        # and again after the next write, a late one
        await store.write([Reading("ups", "load", 0.25, T0 - timedelta(minutes=1))])
        assert await pending_series(store, request) == 1
        await wait_for(caught_up, timeout=10, what="the store's own rollup maintenance")


async def test_a_store_told_not_to_maintain_leaves_it_to_the_caller(
    opener: Opener, request: pytest.FixtureRequest
) -> None:
    async with opener(rollup_interval=None) as store:
        await store.write([Reading("ups", "load", 1.0, T0)])
        assert await pending_series(store, request) == 1
        assert await store.maintain_rollups() == 1
        assert await pending_series(store, request) == 0


@pytest.mark.parametrize("interval", [0, -1.0])
def test_the_rollup_interval_is_checked(interval: float) -> None:
    with pytest.raises(ValueError, match="rollup_interval"):
        SqliteStore("unused.sqlite", rollup_interval=interval)
    with pytest.raises(ValueError, match="rollup_interval"):
        PostgresStore("postgresql://unused", rollup_interval=interval)


async def pending_series(store: TimeSeriesStore, request: pytest.FixtureRequest) -> int:
    """How many series the store has marked pending, read from its tables behind its back."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as db:
            row = db.execute("SELECT count(*) FROM latest WHERE pending_from_ms IS NOT NULL")
            count = int(row.fetchone()[0])
        db.close()
        return count
    assert isinstance(store, PostgresStore)
    conn = await asyncpg.connect(request.getfixturevalue("pg_dsn"))
    try:
        return int(
            await conn.fetchval(
                f'SELECT count(*) FROM "{store.schema}".latest WHERE pending_from IS NOT NULL'
            )
        )
    finally:
        await conn.close()


@dataclass(frozen=True)
class Query:
    """One history question, to be asked of several series and tables."""

    start: datetime
    end: datetime
    step_seconds: int
    aggregate: Aggregate

    async def ask(
        self,
        store: TimeSeriesStore,
        device_id: str,
        metric: str,
        resolution: Resolution | None = None,
    ) -> list[Bucket]:
        return await store.history(
            device_id,
            metric,
            start=self.start,
            end=self.end,
            step_seconds=self.step_seconds,
            aggregate=self.aggregate,
            resolution=resolution,
        )


async def test_history_refuses_a_resolution_that_cannot_serve_the_step(
    store: TimeSeriesStore,
) -> None:
    query = Query(T0, at(3600), 90, "max")
    with pytest.raises(ValueError, match="whole multiple"):
        await query.ask(store, "ups", "load", "1m")
    with pytest.raises(ValueError, match="resolution must be"):
        await query.ask(store, "ups", "load", "5m")  # type: ignore[arg-type]
    assert await query.ask(store, "ups", "load") == []  # raw serves any step


# windows whose ends fall on whole hours, and windows cut into minutes and seconds (pieces from
# minute rollups and raw at each end)
WINDOWS = {
    "aligned": (T0 - timedelta(hours=1), T0 + timedelta(hours=3)),
    "ragged": (
        T0 - timedelta(minutes=17, seconds=23.456),
        T0 + timedelta(hours=2, minutes=5, seconds=7.5),
    ),
    "inside-an-hour": (T0 + timedelta(minutes=3, seconds=1), T0 + timedelta(minutes=58)),
}


@pytest.mark.parametrize("aggregate", AGGREGATES)
async def test_history_from_rollups_equals_history_from_raw(
    store: TimeSeriesStore, aggregate: Aggregate
) -> None:
    rng = random.Random(5)
    batches = shuffled_batches(rng, random_readings(rng, 800, T0 - timedelta(minutes=30), 3))
    # maintained up to two thirds; the rest, late readings and replays among them, pending
    cut = len(batches) * 2 // 3
    for batch in batches[:cut]:
        await store.write(batch)
    await store.maintain_rollups()
    for batch in batches[cut:]:
        await store.write(batch)
    for maintained in (False, True):
        if maintained:
            await store.maintain_rollups()
        for start, end in WINDOWS.values():
            for step in (60, 300, 3600, 7200):
                query = Query(start, end, step, aggregate)
                for device_id, metric in SERIES:
                    where = (query, device_id, metric, maintained)
                    raw = await query.ask(store, device_id, metric, "raw")
                    assert raw, where
                    assert await query.ask(store, device_id, metric) == raw, where
                    assert await query.ask(store, device_id, metric, "1m") == raw, where


async def test_history_reads_rollups_up_to_the_pending_time_and_raw_after_it(
    store: TimeSeriesStore, request: pytest.FixtureRequest
) -> None:
    # a late reading marks its series pending from its own time: history must fold it in
    # although the stored hour and minute rollups do not have it yet, and must not count the
    # readings before it twice
    await store.write([Reading("ups", "load", float(n), at(n * 60)) for n in range(180)])
    await store.maintain_rollups()
    late = Reading("ups", "load", 1000.0, at(30 * 60 + 30))
    await store.write([late])
    assert await pending_series(store, request) == 1
    query = Query(T0, at(3 * 3600), 3600, "count")
    assert [b.value for b in await query.ask(store, "ups", "load")] == [61.0, 60.0, 60.0]
    assert [b.value for b in await query.ask(store, "ups", "load", "raw")] == [61.0, 60.0, 60.0]
    [hour] = await store.rollups("ups", "load", "1h", start=T0, end=at(3600))
    assert (hour.count, hour.max_value, hour.last_value) == (61, 1000.0, 59.0)
    await store.maintain_rollups()
    assert [b.value for b in await query.ask(store, "ups", "load")] == [61.0, 60.0, 60.0]
    assert await store.rollups("ups", "load", "1h", start=T0, end=at(3600)) == [hour]


# plan_history with a pending mark, in minutes from T0 (pure logic: which table serves what)
PLANS: dict[str, tuple[float, float, int, float | None, list[tuple[Resolution, float, float]]]] = {
    "nothing-pending": (0, 180, 3600, None, [("1h", 0, 180)]),
    "pending-after-the-window": (0, 180, 3600, 200, [("1h", 0, 180)]),
    "pending-at-the-end": (0, 180, 3600, 180, [("1h", 0, 180)]),
    # hours up to the pending one, its minutes up to the pending minute, raw from there
    "pending-inside": (0, 180, 3600, 90.5, [("1h", 0, 60), ("1m", 60, 90), ("raw", 90, 180)]),
    "pending-on-an-hour": (0, 180, 3600, 120, [("1h", 0, 120), ("raw", 120, 180)]),
    "pending-from-the-start": (0, 180, 3600, 0, [("raw", 0, 180)]),
    "pending-before-the-window": (0, 180, 3600, -30, [("raw", 0, 180)]),
    # a ragged start: raw, minutes, hours, then raw from the pending time
    "ragged-and-pending": (
        10.5,
        180,
        3600,
        150,
        [("raw", 10.5, 11), ("1m", 11, 60), ("1h", 60, 120), ("1m", 120, 150), ("raw", 150, 180)],
    ),
    # a step the minutes serve but the hours do not
    "minutes-only": (0, 30, 300, 12.25, [("1m", 0, 12), ("raw", 12, 30)]),
}


@pytest.mark.parametrize("case", PLANS.values(), ids=PLANS.keys())
def test_plan_history_reads_rollups_only_before_the_pending_time(
    case: tuple[float, float, int, float | None, list[tuple[Resolution, float, float]]],
) -> None:
    start, end, step, pending, expected = case
    minute = 60_000
    base = ms(T0)
    segments = plan_history(
        base + int(start * minute),
        base + int(end * minute),
        step,
        pending_from_ms=None if pending is None else base + int(pending * minute),
    )
    assert [
        (s.resolution, (s.start_ms - base) / minute, (s.end_ms - base) / minute) for s in segments
    ] == expected


# --- retention ------------------------------------------------------------------------------

NOW = T0 + timedelta(days=800, minutes=30)


def aged(days: float, minute: int = 0) -> datetime:
    """A time ``days`` before NOW's hour (hour-aligned cutoffs: see Retention.cutoffs_ms)."""
    return T0 + timedelta(days=800) - timedelta(days=days) + timedelta(minutes=minute)


async def test_retention_removes_what_it_should_and_keeps_latest(store: TimeSeriesStore) -> None:
    # two series per age (one for the newest), each with two readings a minute apart
    ages = {"d800": 800, "d400": 400, "d100": 100, "d10": 10}
    readings = [
        Reading(device, metric, float(minute), aged(days, minute))
        for device, days in ages.items()
        for metric in ("solo", "all")
        if metric == "solo" or device != "d10"
        for minute in (0, 1)
    ]
    # one millisecond either side of the raw cutoff (NOW's hour minus 90 days)
    readings += [
        Reading("edge", "load", 1.0, aged(90) - timedelta(milliseconds=1)),
        Reading("edge", "load", 2.0, aged(90)),
    ]
    await store.write(readings)
    latest_before = await store.latest()

    run = await store.apply_retention(NOW)

    assert (run.raw_from, run.minute_from, run.hour_from) == (aged(90), aged(365), aged(730))
    # raw: d800, d400, d100 (6 series x 2) and the edge's older reading; 1m: d800, d400 (4 x 2
    # minute buckets) and 1h: d800 (2 series, one hour bucket each)
    assert (run.raw_deleted, run.minute_deleted, run.hour_deleted) == (13, 8, 2)
    assert await store.latest() == latest_before

    async def kept(device: str, metric: str, resolution: Resolution) -> float:
        buckets = await store.history(
            device,
            metric,
            start=aged(1000),
            end=NOW,
            step_seconds=3600,
            aggregate="count",
            resolution=resolution,
        )
        return sum(b.value for b in buckets)

    counts = {
        device: [await kept(device, "solo", r) for r in ("raw", "1m", "1h")] for device in ages
    }
    assert counts == {
        "d800": [0, 0, 0],
        "d400": [0, 0, 2],
        "d100": [0, 2, 2],
        "d10": [2, 2, 2],
    }
    assert [await kept("edge", "load", r) for r in ("raw", "1m", "1h")] == [1, 2, 2]

    again = await store.apply_retention(NOW)
    assert (again.raw_deleted, again.minute_deleted, again.hour_deleted) == (0, 0, 0)
    earlier = await store.apply_retention(NOW - timedelta(days=30))
    assert earlier.raw_from == aged(90)  # horizons never move back


async def test_after_raw_retention_history_still_answers_from_rollups(
    store: TimeSeriesStore,
) -> None:
    rng = random.Random(3)
    readings = random_readings(rng, 500, T0 - timedelta(minutes=10), 3)
    # a reading in the raw piece at the end of the ragged window
    readings.append(Reading("ups", "load", 1.0, T0 + timedelta(hours=2, minutes=5, seconds=1)))
    await store.write(readings)
    queries = [
        Query(start, end, step, aggregate)
        for start, end in (WINDOWS["aligned"], WINDOWS["ragged"])
        for step in (60, 3600)
        for aggregate in AGGREGATES
    ]

    async def answers() -> list[list[Bucket]]:
        return [await q.ask(store, d, m) for q in queries for d, m in SERIES]

    before = await answers()
    run = await store.apply_retention(T0 + timedelta(days=91))
    assert run.raw_deleted == len(readings)
    window = {"start": T0 - timedelta(hours=1), "end": T0 + timedelta(hours=4)}
    assert (
        await Query(**window, step_seconds=60, aggregate="count").ask(store, "ups", "load", "raw")
        == []
    )
    # whole minutes and hours come from rollups as before; only the ragged windows' ends,
    # which need raw, have lost their readings
    after = await answers()
    aligned = len(SERIES) * 2 * len(AGGREGATES)
    assert after[:aligned] == before[:aligned]
    assert any(a != b for a, b in zip(after[aligned:], before[aligned:], strict=True))
    # usage reads raw only (see TimeSeriesStore.usage)
    assert await store.usage("ups", "load", **window) == 0


async def test_a_reading_older_than_the_raw_horizon_goes_only_into_latest(
    store: TimeSeriesStore,
) -> None:
    batch = [Reading("ups", "load", float(n), at(n * 7)) for n in range(20)]
    await store.write(batch)
    await store.apply_retention(T0 + timedelta(days=91))
    rollups = await all_rollups(store, **WIDE)
    await store.write(batch)  # a replay from before the horizon must not count twice
    await store.write([Reading("fridge", "temp", 4.5, at(30))])  # a new series, long ago
    assert await all_rollups(store, **WIDE) == rollups
    query = Query(T0, at(3600), 3600, "count")
    assert await query.ask(store, "ups", "load") == [Bucket(T0, 20.0)]
    assert await query.ask(store, "ups", "load", "raw") == []
    assert await query.ask(store, "fridge", "temp") == []
    assert [(v.device_id, v.value, v.ts) for v in await store.latest()] == [
        ("fridge", 4.5, at(30)),
        ("ups", 19.0, at(133)),
    ]


async def test_a_batch_across_the_raw_horizon_is_split_by_it(
    store: TimeSeriesStore, request: pytest.FixtureRequest
) -> None:
    await store.write([Reading("ups", "load", 1.0, T0)])
    await store.apply_retention(T0 + timedelta(days=91))  # the raw horizon: T0 + 1 day
    horizon = T0 + timedelta(days=1)
    old, new = horizon - timedelta(minutes=5), horizon + timedelta(minutes=5)
    # in one batch: a new series only from before the horizon, one from both sides of it
    await store.write(
        [
            Reading("fridge", "temp", 4.0, old),
            Reading("ups", "load", 2.0, new),
            Reading("ups", "load", 3.0, old),
        ]
    )
    assert await pending_series(store, request) == 1  # ups, from its new reading
    await store.maintain_rollups()
    day = Query(horizon - timedelta(hours=1), horizon + timedelta(hours=1), 3600, "count")
    assert [(b.start, b.value) for b in await day.ask(store, "ups", "load")] == [(horizon, 1.0)]
    assert await day.ask(store, "fridge", "temp") == []
    assert [(v.device_id, v.value, v.ts) for v in await store.latest()] == [
        ("fridge", 4.0, old),
        ("ups", 2.0, new),
    ]


async def test_retention_alongside_replays_counts_nothing_twice(store: TimeSeriesStore) -> None:
    # replays of readings on both sides of the coming raw horizon (T0 + 1 day), written while
    # retention deletes: none may be stored again below the horizon and merged a second time
    rng = random.Random(13)
    readings = random_readings(rng, 300, T0 + timedelta(hours=22), 4)
    batches = [readings[n : n + 30] for n in range(0, 300, 30)]
    for batch in batches:
        await store.write(batch)
    before = await all_rollups(store, **WIDE)
    retention = asyncio.ensure_future(store.apply_retention(T0 + timedelta(days=91)))
    await asyncio.gather(*(store.write(batch) for batch in batches * 3))
    assert (await retention).raw_from == T0 + timedelta(days=1)
    assert await all_rollups(store, **WIDE) == before == all_recomputed(stored(batches))


@pytest.mark.parametrize(
    "periods",
    [
        pytest.param({"raw_days": 90, "minute_days": 30}, id="minutes-shorter-than-raw"),
        pytest.param({"minute_days": 800}, id="minutes-longer-than-hours"),
        pytest.param({"raw_days": 0}, id="zero"),
        pytest.param({"hour_days": 7.5}, id="fractional"),
        pytest.param({"raw_days": True}, id="bool"),
    ],
)
async def test_retention_periods_are_checked(
    store: TimeSeriesStore, periods: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="days"):
        SqliteStore("unused.sqlite", **periods)
    with pytest.raises(ValueError, match="days"):
        PostgresStore("postgresql://unused", **periods)
    with pytest.raises(ValueError, match="days"):
        await store.apply_retention(NOW, **periods)


async def test_retention_wants_an_aware_time(store: TimeSeriesStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.apply_retention(datetime(2026, 3, 2, 9, 0))


async def test_retention_periods_come_from_the_store(opener: Opener) -> None:
    async with opener(raw_days=1, minute_days=2, hour_days=3) as store:
        await store.write([Reading("ups", "load", float(n), at(n * 1800)) for n in range(4)])
        run = await store.apply_retention(T0 + timedelta(days=1, hours=1, minutes=59))
        assert (run.raw_from, run.minute_from, run.hour_from) == (
            T0 + timedelta(hours=1),
            T0 - timedelta(days=1, hours=-1),
            T0 - timedelta(days=2, hours=-1),
        )
        assert (run.raw_deleted, run.minute_deleted, run.hour_deleted) == (2, 0, 0)
        # a period given to the call wins over the store's
        run = await store.apply_retention(T0 + timedelta(days=1, hours=1), minute_days=1)
        assert (run.minute_from, run.minute_deleted) == (T0 + timedelta(hours=1), 2)


# --- upgrading ------------------------------------------------------------------------------


async def test_a_store_from_before_rollups_builds_them_on_opening(
    opener: Opener, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(2)
    batches = shuffled_batches(rng, random_readings(rng, 300, T0, 2))
    async with opener() as store:
        for batch in batches:
            await store.write(batch)
    await downgrade_to_version_1(store, request)
    async with opener() as store:
        assert await all_rollups(store, **WIDE) == all_recomputed(stored(batches))
        await store.write(batches[0])
        assert await all_rollups(store, **WIDE) == all_recomputed(stored(batches))


async def test_a_store_from_before_pending_marks_gains_them_on_opening(
    opener: Opener, request: pytest.FixtureRequest
) -> None:
    # version 2 kept its rollups on write: complete, with nothing pending and no column for it
    rng = random.Random(29)
    batches = shuffled_batches(rng, random_readings(rng, 300, T0, 2))
    async with opener() as store:
        for batch in batches[:-3]:
            await store.write(batch)
        await store.maintain_rollups()
    await downgrade_to_version_2(store, request)
    async with opener() as store:
        assert await pending_series(store, request) == 0
        assert await all_rollups(store, **WIDE) == all_recomputed(stored(batches[:-3]))
        for batch in batches[-3:]:
            await store.write(batch)
        assert await all_rollups(store, **WIDE) == all_recomputed(stored(batches))
        await store.maintain_rollups()
        assert await all_rollups(store, **WIDE) == all_recomputed(stored(batches))


async def downgrade_to_version_2(store: TimeSeriesStore, request: pytest.FixtureRequest) -> None:
    """Make a closed store look as version 2 left it: no pending marks on ``latest``."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as db:
            db.execute("ALTER TABLE latest DROP COLUMN pending_from_ms")
            db.execute("PRAGMA user_version=2")
        db.close()
        return
    assert isinstance(store, PostgresStore)
    conn = await asyncpg.connect(request.getfixturevalue("pg_dsn"))
    try:
        await conn.execute(f'ALTER TABLE "{store.schema}".latest DROP COLUMN pending_from')
        await conn.execute(
            f"UPDATE \"{store.schema}\".meta SET value = '2' WHERE key = 'schema_version'"
        )
    finally:
        await conn.close()


async def downgrade_to_version_1(store: TimeSeriesStore, request: pytest.FixtureRequest) -> None:
    """Make a closed store look as version 1 left it: no rollups, no horizons."""
    tables = ("readings_1m", "readings_1h", "retention")
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as db:
            for table in tables:
                db.execute(f"DROP TABLE {table}")
            db.execute("PRAGMA user_version=1")
        db.close()
        return
    assert isinstance(store, PostgresStore)
    conn = await asyncpg.connect(request.getfixturevalue("pg_dsn"))
    try:
        for table in tables:
            await conn.execute(f'DROP TABLE "{store.schema}".{table}')
        await conn.execute(
            f"UPDATE \"{store.schema}\".meta SET value = '1' WHERE key = 'schema_version'"
        )
    finally:
        await conn.close()


async def test_a_store_from_before_change_marks_gains_them_on_opening(
    opener: Opener, request: pytest.FixtureRequest
) -> None:
    async with opener(rollup_interval=None) as store:
        await store.write([Reading("ups", "load", 40.0, T0), Reading("ac-1", "temp", 20.0, T0)])
    await downgrade_before_change_marks(store, request)
    async with opener(rollup_interval=None) as store:
        assert [(v.device_id, v.value) for v in await store.latest()] == [
            ("ac-1", 20.0),
            ("ups", 40.0),
        ]
        await store.write([Reading("ups", "load", 41.0, minutes(1))])
        assert [(v.device_id, v.value) for v in await store.latest()] == [
            ("ac-1", 20.0),
            ("ups", 41.0),
        ]


async def downgrade_before_change_marks(
    store: TimeSeriesStore, request: pytest.FixtureRequest
) -> None:
    """Make a closed store look as it was before ``latest`` carried change marks (SQLite 3,
    PostgreSQL 4)."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as db:
            db.execute("ALTER TABLE latest DROP COLUMN seq")
            db.execute("DROP TABLE latest_seq")
            db.execute("PRAGMA user_version=3")
        db.close()
        return
    assert isinstance(store, PostgresStore)
    conn = await asyncpg.connect(request.getfixturevalue("pg_dsn"))
    try:
        await conn.execute(f'ALTER TABLE "{store.schema}".latest DROP COLUMN changed')
        await conn.execute(
            f"UPDATE \"{store.schema}\".meta SET value = '4' WHERE key = 'schema_version'"
        )
    finally:
        await conn.close()
