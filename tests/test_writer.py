"""BatchWriter's ordering and shutdown, against a target whose every write the test releases
(pure logic: the writes against real stores are covered by the collector and storage tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial

import pytest

from collector.writer import BatchWriter
from core.errors import StoreError
from core.records import DeadLetter, Reading, Record
from tests.support import wait_for

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def until(condition: Callable[[], bool], what: str) -> None:
    async def probe() -> bool:
        return condition()

    await wait_for(probe, timeout=5, what=what)


def poll(n: int) -> list[Reading]:
    return [Reading(f"dev{n}", "m", float(n), T0)]


class HeldTarget:
    """Each write waits until the test releases it; a write can be told to fail once."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.written: list[list[str]] = []
        self.releases: list[asyncio.Event] = []
        self.fail_once: set[int] = set()
        self.in_flight = 0
        self.most_in_flight = 0
        self.open = False

    async def write_batch(self, records: Sequence[Record], letters: Sequence[DeadLetter]) -> None:
        if not records and not letters:
            return  # as the real targets do
        devices = [record.device_id for record in records]
        call = len(self.calls)
        self.calls.append(devices)
        release = asyncio.Event()
        if self.open:
            release.set()
        self.releases.append(release)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await release.wait()
        finally:
            self.in_flight -= 1
        if call in self.fail_once:
            raise StoreError("refused, once")
        self.written.append(devices)

    def release_all(self) -> None:
        """Every write held and to come goes ahead: for a test's way out, failed or not."""
        self.open = True
        for release in self.releases:
            release.set()

    async def release(self, call: int) -> None:
        await until(lambda: len(self.releases) > call, f"write call {call}")
        self.releases[call].set()


@asynccontextmanager
async def running(target: HeldTarget) -> AsyncIterator[BatchWriter]:
    """A writer of one poll a batch, running; on the way out, passed or failed, every held
    write goes ahead and the writer is stopped."""
    writer = BatchWriter(target, batch_size=1, flush_interval=0.01)
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        target.release_all()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_callbacks_keep_batch_order_when_a_later_batch_is_written_first() -> None:
    target = HeldTarget()
    target.fail_once = {0}
    acked: list[int] = []
    async with running(target) as writer:
        for n in range(2):
            await writer.put(poll(n), on_durable=partial(acked.append, n))
        # the first write fails, the second is handed on meanwhile and succeeds first
        await target.release(0)
        await target.release(1)
        await until(lambda: target.written == [["dev1"]], "the second batch written")
        assert acked == []  # the first is not written yet: nothing may be acknowledged
        await target.release(2)  # the first batch's retry
        await until(lambda: acked == [0, 1], "both acknowledged, in order")
        assert target.written == [["dev1"], ["dev0"]]
        assert writer.failed_attempts == 1


async def test_no_more_than_two_batches_are_in_hand() -> None:
    target = HeldTarget()
    async with running(target) as writer:
        for n in range(6):
            await writer.put(poll(n))
        await until(lambda: len(target.calls) == 2, "two writes handed on")
        # the writer now waits for the first: the rest stay queued
        assert writer.depth == 4
        for call in range(6):
            await target.release(call)
        await until(lambda: len(target.written) == 6, "all six written")
        assert target.most_in_flight == 2
        assert [devices[0] for devices in target.written] == [f"dev{n}" for n in range(6)]


async def test_cancelling_writes_what_was_taken_and_what_is_queued() -> None:
    target = HeldTarget()
    # a long flush interval: the writer sits gathering a partial batch when it is cancelled
    writer = BatchWriter(target, batch_size=100, flush_interval=60)
    acked: list[int] = []
    task = asyncio.create_task(writer.run())
    for n in range(3):
        await writer.put(poll(n), on_durable=partial(acked.append, n))
    await until(lambda: writer.depth == 0, "the writer to take the queued polls")
    task.cancel()
    await target.release(0)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert target.written == [["dev0", "dev1", "dev2"]]
    assert acked == [0, 1, 2]


class RefusingTarget:
    """A store that is down: every write is refused."""

    def __init__(self) -> None:
        self.attempts = 0

    async def write_batch(self, records: Sequence[Record], letters: Sequence[DeadLetter]) -> None:
        self.attempts += 1
        raise StoreError("down")


async def test_cancelling_while_a_batch_is_retried_tries_once_more_then_reports() -> None:
    target = RefusingTarget()
    writer = BatchWriter(target, batch_size=1, flush_interval=0.01)
    acked: list[int] = []
    task = asyncio.create_task(writer.run())
    await writer.put(poll(0), on_durable=partial(acked.append, 0))
    # into the backoff, which may be up to a second here and up to RETRY_CAP later on
    await until(lambda: target.attempts >= 2, "the batch to be refused twice")
    attempts = target.attempts
    task.cancel()
    # the shutdown does not wait out the backoff: one more attempt, and its refusal reported
    with pytest.raises(StoreError):
        await asyncio.wait_for(task, timeout=5)
    assert target.attempts == attempts + 1
    assert acked == []
