"""The outbox: order and exactness, restarts and kills, outages, caps, several consumers."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import sys
from collections.abc import Sequence
from contextlib import aclosing, closing
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import pytest

from core.clock import ManualClock
from core.errors import StoreError
from core.records import DeadLetter, FaultEvent, Quality, Reading, StatusChange
from core.store.outbox import Outbox, OutboxItem
from tests.outbox_worker import CONSUMER, batch
from tests.outbox_worker import outbox as worker_outbox
from tests.support import wait_for

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 2, 9, 0, 0, 123456, tzinfo=UTC)
DAY = 86400.0


def make(
    path: Path,
    *,
    consumers: Sequence[str] = ("store",),
    max_records: int = 100_000,
    max_age_seconds: float = DAY,
    clock: ManualClock | None = None,
) -> Outbox:
    return Outbox(
        path,
        max_records=max_records,
        max_age_seconds=max_age_seconds,
        consumers=consumers,
        clock=clock or ManualClock(T0),
    )


def readings(count: int, start: int = 0) -> list[Reading]:
    return [
        Reading("ac-1", "cycles", float(n), T0 + timedelta(microseconds=n), raw=n)
        for n in range(start, start + count)
    ]


def rows_on_disk(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])


async def drain_all(box: Outbox, consumer: str, limit: int) -> list[OutboxItem]:
    """Everything ``consumer`` has not committed, read and committed ``limit`` at a time."""
    got: list[OutboxItem] = []
    while batch := await box.read(consumer, limit):
        assert batch.last_seq - batch.first_seq + 1 == len(batch.records)
        got.extend(batch.records)
        await box.commit(consumer, batch.last_seq)
    return got


# --- order and exactness ---------------------------------------------------------------------


async def test_records_come_out_in_order_and_exactly_as_they_went_in(tmp_path: Path) -> None:
    plus_two = timezone(timedelta(hours=2))
    batches: list[list[OutboxItem]] = [
        [
            Reading("ac-1", "temp", 0.1, T0),
            Reading("ac-1", "cycles", 12.0, T0, Quality.UNCERTAIN, raw=2**40, width=48),
            Reading("ups", "load", -1e-300, datetime(2026, 3, 2, 11, 0, 0, 999999, plus_two)),
        ],
        [
            FaultEvent("ac-1", "E17", T0 + timedelta(microseconds=1)),
            FaultEvent("ac-1", "E17", T0 + timedelta(microseconds=2), active=False),
            StatusChange("ups", False, datetime(1999, 12, 31, 23, 59, 59, 1, UTC), "timeout"),
        ],
        [
            DeadLetter("mqtt", "clinic/ac-1", '{"t": "Ω\n"}', "bad_json", "line 1", T0),
            DeadLetter("mqtt", "clinic/ups", "lone surrogate \udcff", "bad_utf8", "", T0),
            Reading("ups", "state", 1.0, datetime(1, 1, 1, tzinfo=UTC), Quality.BAD),
        ],
    ]
    async with make(tmp_path / "outbox.sqlite") as box:
        seqs = [await box.append(items) for items in batches]
        got = await drain_all(box, "store", limit=2)

    assert seqs == [3, 6, 9]
    assert got == [item for items in batches for item in items]
    # the +02:00 time comes back as the same instant in UTC, to the microsecond
    assert got[2].ts == datetime(2026, 3, 2, 9, 0, 0, 999999, UTC)


async def test_a_batch_with_a_record_it_cannot_store_writes_nothing(tmp_path: Path) -> None:
    naive = Reading("ac-1", "temp", 1.0, datetime(2026, 3, 2, 9, 0))
    async with make(tmp_path / "outbox.sqlite") as box:
        with pytest.raises(ValueError, match="timezone-aware"):
            await box.append([*readings(3), naive])
        assert (await box.stats()).last_seq == 0
        assert await box.append(readings(1)) == 1


# --- restarts and kills ----------------------------------------------------------------------


async def test_a_restart_keeps_unread_records_cursors_and_drop_counters(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    records = readings(60)
    async with make(path, max_records=50) as box:
        for start in range(0, 60, 20):
            await box.append(records[start : start + 20])
        first = await box.read("store", 15)
        await box.commit("store", first.last_seq)

    async with make(path, max_records=50) as box:
        stats = await box.stats()
        assert (stats.dropped_by_cap, stats.last_seq) == (10, 60)
        assert stats.consumers["store"].position == 25
        rest = await box.read("store", 100)
        assert (rest.first_seq, rest.last_seq) == (26, 60)
        assert list(rest.records) == records[25:]
        assert await box.append(readings(1)) == 61


async def spawn_worker(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.outbox_worker",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def kill_after_lines(process: asyncio.subprocess.Process, lines: int | None) -> list[str]:
    """Read ``lines`` lines and SIGKILL the process (None: wait for it to kill itself); return
    every line it printed."""
    assert process.stdout is not None
    assert process.stderr is not None
    printed: list[str] = []
    try:
        async with asyncio.timeout(60):
            while lines is None or len(printed) < lines:
                line = await process.stdout.readline()
                if not line and lines is None:
                    break
                assert line, f"the worker exited early: {(await process.stderr.read()).decode()}"
                printed.append(line.decode())
    finally:
        if process.returncode is None and lines is not None:
            process.kill()
        async with asyncio.timeout(60):
            await process.wait()
    assert process.returncode == -signal.SIGKILL, (await process.stderr.read()).decode()
    # lines it printed after the ones read above were also reported committed
    printed += (await process.stdout.read()).decode().splitlines()
    return printed


async def test_a_killed_appender_leaves_every_reported_batch_and_no_partial_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite"
    size = 2000
    reported = whole_before = 0
    # first a kill from outside, at whatever moment it lands; then, carrying on in the same file,
    # one from inside the transaction of the third append, rows inserted but not committed
    for kill, extra in [(3, []), (None, ["--die-inside-append", "2"])]:
        process = await spawn_worker("append", str(path), "--batch-size", str(size), *extra)
        printed = await kill_after_lines(process, kill)
        reported = max(reported, *(int(line.split()[1]) for line in printed))

        async with worker_outbox(path) as box:
            stats = await box.stats()
            got = (await box.read(CONSUMER, 10_000_000)).records

        whole, partial = divmod(len(got), size)
        assert partial == 0, "a batch was half written"
        assert len(got) >= reported, "a batch reported committed is missing"
        assert stats.last_seq == len(got)
        assert list(got) == [r for number in range(whole) for r in batch(number, size)]
        if kill is None:
            assert whole == whole_before + 2, "not exactly the two appends before the kill"
        whole_before = whole


async def test_a_consumer_killed_between_read_and_commit_gets_the_same_batch_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite"
    async with worker_outbox(path) as box:
        await box.append(batch(0, 30))

    process = await spawn_worker("read", str(path), "--limit", "10")
    [line] = await kill_after_lines(process, 1)
    assert line.split() == ["1", "10"]

    async with worker_outbox(path) as box:
        again = await box.read(CONSUMER, 10)
    assert (again.first_seq, again.last_seq) == (1, 10)
    assert list(again.records) == batch(0, 30)[:10]


# --- consumers: outages, waking, stopping ------------------------------------------------------


async def test_records_wait_out_a_store_outage_and_arrive_in_order_exactly_once(
    tmp_path: Path,
) -> None:
    outage = 3
    received: list[OutboxItem] = []

    async def write_to_store(records: Sequence[OutboxItem]) -> None:
        nonlocal outage
        if outage:
            outage -= 1
            raise ConnectionError("store unreachable")
        received.extend(records)

    sent = readings(250)
    async with make(tmp_path / "outbox.sqlite") as box:
        for start in range(0, 100, 20):  # accumulates while the store is down
            await box.append(sent[start : start + 20])
        # poll_interval of an hour: only the append's event can wake the consumer in time
        drain = asyncio.create_task(
            box.drain("store", write_to_store, limit=30, poll_interval=3600, retry_cap=0),
            name="outbox.drain[store]",
        )
        try:

            async def all_of(count: int) -> bool:
                return len(received) >= count

            await wait_for(lambda: all_of(100), timeout=10, what="the backlog to drain")
            for start in range(100, 250, 50):
                await box.append(sent[start : start + 50])
                await wait_for(partial(all_of, start + 50), timeout=10, what="a new batch")
            stats = await box.stats()
        finally:
            drain.cancel()
            with pytest.raises(asyncio.CancelledError):
                await drain

    assert received == sent
    assert box.handler_failures == {"store": 3}
    assert (stats.depth, stats.records, stats.dropped_by_cap) == (0, 0, 0)


async def test_a_cancelled_drain_stops_and_leaves_its_batch_uncommitted(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def hangs(records: Sequence[OutboxItem]) -> None:
        started.set()
        await asyncio.Event().wait()

    async with make(tmp_path / "outbox.sqlite") as box:
        await box.append(readings(5))
        drain = asyncio.create_task(box.drain("store", hangs), name="outbox.drain[store]")
        await asyncio.wait_for(started.wait(), timeout=10)
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drain
        again = await box.read("store", 10)
    assert list(again.records) == readings(5)


async def test_wait_returns_once_the_consumer_has_something_to_read(tmp_path: Path) -> None:
    async with make(tmp_path / "outbox.sqlite", consumers=["store", "influx"]) as box:
        waiting = asyncio.create_task(box.wait("influx"), name="wait[influx]")
        await box.append(readings(1))
        await asyncio.wait_for(waiting, timeout=10)
        await box.commit("store", 1)
        await asyncio.wait_for(box.wait("influx"), timeout=10)  # still not committed by influx


async def test_batches_wake_on_append_and_repeat_until_committed(tmp_path: Path) -> None:
    async with make(tmp_path / "outbox.sqlite") as box:
        await box.append(readings(6))
        got: list[OutboxItem] = []
        async with aclosing(box.batches("store", limit=4, poll_interval=3600)) as batches:
            async for batch in batches:
                if batch.first_seq == 1 and not got:
                    got.append(batch.records[0])  # handed on nothing: not committed
                    continue
                got.extend(batch.records)
                await box.commit("store", batch.last_seq)
                if batch.last_seq == 6:
                    await box.append(readings(2, start=6))
                if batch.last_seq == 8:
                    break
    assert got == [*readings(1), *readings(8)]


async def test_two_consumers_at_different_speeds_rows_go_only_when_both_committed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite"
    records = readings(20)
    async with make(path, consumers=["store", "influx"]) as box:
        await box.append(records)
        fast = await box.read("store", 100)
        await box.commit("store", fast.last_seq)
        assert rows_on_disk(path) == 20
        assert not await box.read("store", 100)

        slow = await box.read("influx", 10)
        assert list(slow.records) == records[:10]
        await box.commit("influx", slow.last_seq)
        assert rows_on_disk(path) == 10
        stats = await box.stats()
        assert {name: c.depth for name, c in stats.consumers.items()} == {"store": 0, "influx": 10}
        assert stats.depth == 10

        assert await drain_all(box, "influx", 100) == records[10:]
        assert rows_on_disk(path) == 0
        assert await box.append(readings(1)) == 21  # numbering does not restart when empty


async def test_a_new_consumer_starts_at_the_end_and_a_removed_one_releases_its_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite"
    async with make(path, consumers=["store"]) as box:
        await box.append(readings(10))
    async with make(path, consumers=["store", "influx"]) as box:
        stats = await box.stats()
        assert {name: c.depth for name, c in stats.consumers.items()} == {"store": 10, "influx": 0}
    with caplog.at_level(logging.WARNING, logger="core.store.outbox"):
        async with make(path, consumers=["influx"]) as box:
            assert (await box.stats()).records == 0
    assert "consumer store is no longer configured" in caplog.text


# --- caps ------------------------------------------------------------------------------------


async def test_the_record_cap_drops_the_oldest_counts_them_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = readings(150)
    with caplog.at_level(logging.WARNING, logger="core.store.outbox"):
        async with make(tmp_path / "outbox.sqlite", max_records=100) as box:
            for start in range(0, 150, 10):
                await box.append(records[start : start + 10])
            stats = await box.stats()
            got = await box.read("store", 1000)
            started = [r.getMessage() for r in caplog.records]
            await box.commit("store", got.last_seq)
            ended = [r.getMessage() for r in caplog.records][len(started) :]

    assert (stats.dropped_by_cap, stats.dropped_by_age, stats.records, stats.depth) == (
        50,
        0,
        100,
        100,
    )
    assert (got.first_seq, got.last_seq) == (51, 150)
    assert list(got.records) == records[50:]
    [warning] = started
    assert "dropped the 10 oldest records (dropped_by_cap" in warning
    assert "before store handed them on" in warning
    [summary] = ended
    assert "every consumer has caught up; 50 records were dropped in all" in summary


async def test_a_batch_larger_than_the_cap_keeps_its_newest_records(tmp_path: Path) -> None:
    big = readings(250, start=30)
    async with make(tmp_path / "outbox.sqlite", max_records=100) as box:
        await box.append(readings(30))
        assert await box.append(big) == 280
        stats = await box.stats()
        got = await box.read("store", 1000)
    assert (stats.dropped_by_cap, stats.records) == (180, 100)
    assert (got.first_seq, got.last_seq) == (181, 280)
    assert list(got.records) == big[150:]


async def test_the_age_cap_drops_what_is_older_than_max_age_by_append_time(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    old, young = readings(10), readings(10, start=10)
    async with make(tmp_path / "outbox.sqlite", max_age_seconds=60, clock=clock) as box:
        await box.append(old)
        clock.advance(timedelta(seconds=30))
        await box.append(young)
        clock.advance(timedelta(seconds=30))
        assert (await box.stats()).dropped_by_age == 0  # exactly max_age old: kept
        clock.advance(timedelta(microseconds=1))

        got = await box.read("store", 100)
        stats = await box.stats()
        assert list(got.records) == young
        assert (stats.dropped_by_age, stats.records) == (10, 10)
        assert stats.oldest_age_seconds == pytest.approx(30.000001)

        clock.advance(timedelta(seconds=30))  # nothing appended: reading still applies the cap
        assert not await box.read("store", 100)
        assert (await box.stats()).dropped_by_age == 20


# --- errors ----------------------------------------------------------------------------------


async def test_a_file_that_is_not_an_outbox_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all " * 100)
    with pytest.raises(StoreError, match="not a database"):
        await make(garbage).open()

    other = tmp_path / "store.sqlite"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE readings (x)")
    with pytest.raises(StoreError, match="not an equipwatch outbox"):
        await make(other).open()


async def test_misuse_is_refused(tmp_path: Path) -> None:
    box = make(tmp_path / "outbox.sqlite")
    with pytest.raises(StoreError, match="not open"):
        await box.append(readings(1))
    async with box:
        await box.append(readings(3))
        with pytest.raises(ValueError, match="last one appended is 3"):
            await box.commit("store", 4)
        with pytest.raises(ValueError, match="unknown outbox consumer"):
            await box.read("nobody", 1)
        with pytest.raises(ValueError, match="unique"):
            make(tmp_path / "other.sqlite", consumers=["store", "store"])
