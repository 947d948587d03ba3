"""Batches records from every source into few, large store transactions."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from core.records import DeadLetter, Record
from core.store import SqliteStore

__all__ = ["BatchWriter"]


class BatchWriter:
    """A bounded queue in front of the store, drained by one task in batches.

    A batch is written when ``batch_size`` items are waiting or ``flush_interval`` seconds
    after its first item arrived, whichever comes first. ``put`` waits while the queue is
    full, which slows the sources down instead of growing memory without limit.
    """

    def __init__(
        self,
        store: SqliteStore,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_pending: int = 50_000,
    ) -> None:
        self._store = store
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue: asyncio.Queue[Record | DeadLetter] = asyncio.Queue(maxsize=max_pending)

    async def put(self, records: Sequence[Record]) -> None:
        for record in records:
            await self._queue.put(record)

    async def dead_letter(self, letter: DeadLetter) -> None:
        await self._queue.put(letter)

    async def run(self) -> None:
        """Drain until cancelled; on cancellation write what is already queued, then re-raise."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = [await self._queue.get()]
                deadline = loop.time() + self._flush_interval
                while len(batch) < self._batch_size:
                    if self._queue.empty():
                        timeout = deadline - loop.time()
                        if timeout <= 0:
                            break
                        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                        # cancellation that arrives as the item does
                        try:
                            async with asyncio.timeout(timeout):
                                batch.append(await self._queue.get())
                        except TimeoutError:
                            break
                    else:
                        batch.append(self._queue.get_nowait())
                await self._flush(batch)
        except asyncio.CancelledError:
            rest: list[Record | DeadLetter] = []
            while not self._queue.empty():
                rest.append(self._queue.get_nowait())
            await asyncio.shield(self._flush(rest))
            raise

    async def _flush(self, batch: list[Record | DeadLetter]) -> None:
        letters = [item for item in batch if isinstance(item, DeadLetter)]
        records = [item for item in batch if not isinstance(item, DeadLetter)]
        if letters:
            await self._store.write_dead_letters(letters)
        if records:
            await self._store.write(records)
