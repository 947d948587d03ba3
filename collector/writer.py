"""Batches records from every source into few, large transactions on a ``BatchTarget``: the
store itself, or the outbox in front of a store or sink that can be unreachable."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Protocol

from collector.base import OnDurable
from core.errors import StoreError
from core.records import DeadLetter, Record
from core.store.outbox import Outbox

__all__ = ["BatchTarget", "BatchWriter", "OutboxTarget", "StoreTarget"]

log = logging.getLogger(__name__)

RETRY_CAP = 30.0  # seconds between attempts to write a batch the store refused, at most

# one entry per put: the records of one message or poll (or one dead letter), and what to call
# once they are committed
_Entry = tuple[Sequence[Record | DeadLetter], OnDurable | None, bool]


class BatchTarget(Protocol):
    async def write_batch(self, records: Sequence[Record], letters: Sequence[DeadLetter]) -> None:
        """Return once both are durable; raise ``StoreError`` to have the batch retried."""
        ...


class _RecordStore(Protocol):
    async def write(self, records: Sequence[Record]) -> None: ...

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None: ...


class StoreTarget:
    """Straight into the store: for the embedded SQLite file, which is as durable as an
    outbox beside it would be and is never "unreachable"."""

    def __init__(self, store: _RecordStore) -> None:
        self._store = store

    async def write_batch(self, records: Sequence[Record], letters: Sequence[DeadLetter]) -> None:
        if letters:
            await self._store.write_dead_letters(letters)
        if records:
            await self._store.write(records)


class OutboxTarget:
    """Into the outbox, whose consumers hand the records on to the store and the sinks."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def write_batch(self, records: Sequence[Record], letters: Sequence[DeadLetter]) -> None:
        if records or letters:
            await self._outbox.append([*records, *letters])


class BatchWriter:
    """A bounded queue in front of the target, drained by one task in batches.

    A batch is written when ``batch_size`` items are waiting or ``flush_interval`` seconds
    after its first item arrived, whichever comes first. ``put`` waits while the queue is
    full, which slows the sources down instead of growing memory without limit.

    A source that must know when its records are safe (an MQTT message is acknowledged to the
    broker only then) passes ``on_durable``: it is called, in order, once the transaction that
    holds those records has committed; ``on_commit`` once per committed batch (the rules
    engine in the same process evaluates new records then, not at its next tick). A batch the
    target refuses is retried with backoff, never
    dropped, and its callbacks wait with it.
    """

    def __init__(
        self,
        target: BatchTarget,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_pending: int = 50_000,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._target = target
        self._on_commit = on_commit
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue(maxsize=max_pending)
        self.batches = 0
        self.failed_attempts = 0
        self._stopping = asyncio.Event()

    async def put(self, records: Sequence[Record], on_durable: OnDurable | None = None) -> None:
        # one queue entry per message, not per record: the queue is on the ingest hot path
        await self._queue.put((records, on_durable, False))

    async def dead_letter(self, letter: DeadLetter, on_durable: OnDurable | None = None) -> None:
        await self._queue.put(((letter,), on_durable, True))

    @property
    def depth(self) -> int:
        """Messages (or polls) waiting to be written."""
        return self._queue.qsize()

    async def run(self) -> None:
        """Drain until cancelled; on cancellation write what is already queued, then re-raise.

        Two batches are in hand at a time: while one is being written, the next is taken from
        the queue and handed to the target, whose share of the work on the event loop (turning
        records into rows) then overlaps the store thread's on the one before. A store writes
        what it is handed in turn; the callbacks run in order all the same, a batch's once it
        and every batch before it are written."""
        loop = asyncio.get_running_loop()
        in_hand: list[asyncio.Task[None]] = []  # the writes not known to be done, oldest first
        batch: list[_Entry] = []
        try:
            while True:
                await self._take(batch, loop)
                before = in_hand[-1] if in_hand else None
                in_hand.append(asyncio.create_task(self._write_in_order(batch, before)))
                batch = []
                if len(in_hand) == 2:
                    # shielded: a cancellation of the writer must not cancel a write
                    await asyncio.shield(in_hand[0])
                    del in_hand[0]
        except asyncio.CancelledError:
            # a write being retried makes one more attempt now, and raises if that fails too
            self._stopping.set()
            for task in in_hand:
                await asyncio.shield(task)
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await asyncio.shield(self._flush(batch))
            raise

    async def _take(self, batch: list[_Entry], loop: asyncio.AbstractEventLoop) -> None:
        """Fill ``batch`` from the queue: ``batch_size`` records, or what came within
        ``flush_interval`` of the first. Into the caller's list, so that what was taken is
        still written when the writer is cancelled meanwhile."""
        first = await self._queue.get()
        batch.append(first)
        size = len(first[0])
        deadline = loop.time() + self._flush_interval
        while size < self._batch_size:
            if self._queue.empty():
                timeout = deadline - loop.time()
                if timeout <= 0:
                    return
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that arrives as the item does
                try:
                    async with asyncio.timeout(timeout):
                        entry = await self._queue.get()
                except TimeoutError:
                    return
            else:
                entry = self._queue.get_nowait()
            batch.append(entry)
            size += len(entry[0])

    async def _write_in_order(self, batch: list[_Entry], before: asyncio.Task[None] | None) -> None:
        attempt = 0
        while True:
            try:
                await self._flush(batch, before)
                return
            except StoreError as exc:
                self.failed_attempts += 1
                if self._stopping.is_set():
                    raise
                delay = random.uniform(0, min(RETRY_CAP, 1.5**attempt))
                attempt += 1
                log.warning("store or outbox refused a batch (%s); retrying in %.1fs", exc, delay)
                # the backoff is a schedule; only the writer's stopping cuts it short
                with suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()

    async def _flush(self, batch: list[_Entry], before: asyncio.Task[None] | None = None) -> None:
        records: list[Record] = []
        letters: list[DeadLetter] = []
        callbacks: list[OnDurable] = []
        for items, on_durable, is_letter in batch:
            if is_letter:
                letters.extend(items)  # type: ignore[arg-type]
            else:
                records.extend(items)  # type: ignore[arg-type]
            if on_durable is not None:
                callbacks.append(on_durable)
        await self._target.write_batch(records, letters)
        if before is not None:
            await asyncio.shield(before)
        self.batches += 1
        if self._on_commit is not None:
            self._on_commit()
        for callback in callbacks:
            callback()
