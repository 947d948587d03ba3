"""Batches records from every source into few, large store transactions."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence

from collector.base import OnDurable
from core.errors import StoreError
from core.records import DeadLetter, Record
from core.store import SqliteStore

__all__ = ["BatchWriter"]

log = logging.getLogger(__name__)

RETRY_CAP = 30.0  # seconds between attempts to write a batch the store refused, at most

_Item = Record | DeadLetter | OnDurable


class BatchWriter:
    """A bounded queue in front of the store, drained by one task in batches.

    A batch is written when ``batch_size`` items are waiting or ``flush_interval`` seconds
    after its first item arrived, whichever comes first. ``put`` waits while the queue is
    full, which slows the sources down instead of growing memory without limit.

    A source that must know when its records are safe (an MQTT message is acknowledged to the
    broker only then) passes ``on_durable``: it is called, in order, once the transaction that
    holds those records has committed. A batch the store refuses is retried with backoff, never
    dropped, and its callbacks wait with it.
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
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_pending)
        self.batches = 0
        self.failed_attempts = 0

    async def put(self, records: Sequence[Record], on_durable: OnDurable | None = None) -> None:
        for record in records:
            await self._queue.put(record)
        if on_durable is not None:
            await self._queue.put(on_durable)

    async def dead_letter(self, letter: DeadLetter, on_durable: OnDurable | None = None) -> None:
        await self._queue.put(letter)
        if on_durable is not None:
            await self._queue.put(on_durable)

    @property
    def depth(self) -> int:
        """Items waiting to be written."""
        return self._queue.qsize()

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
                await self._flush_until_written(batch)
        except asyncio.CancelledError:
            rest: list[_Item] = []
            while not self._queue.empty():
                rest.append(self._queue.get_nowait())
            await asyncio.shield(self._flush(rest))
            raise

    async def _flush_until_written(self, batch: list[_Item]) -> None:
        attempt = 0
        while True:
            try:
                await self._flush(batch)
                return
            except StoreError as exc:
                self.failed_attempts += 1
                delay = random.uniform(0, min(RETRY_CAP, 1.5**attempt))
                attempt += 1
                log.warning("store refused a batch (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _flush(self, batch: list[_Item]) -> None:
        letters = [item for item in batch if isinstance(item, DeadLetter)]
        callbacks = [item for item in batch if callable(item)]
        records = [
            item for item in batch if not isinstance(item, DeadLetter) and not callable(item)
        ]
        if letters:
            await self._store.write_dead_letters(letters)
        if records:
            await self._store.write(records)
        self.batches += 1
        for callback in callbacks:
            callback()
