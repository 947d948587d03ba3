"""A durable, ordered outbox between the collectors and the stores and sinks.

Why it exists: the MQTT collector may acknowledge a message to the broker only once the records
in it are safe, and the store (PostgreSQL) or the sink (InfluxDB) may be unreachable for hours.
The outbox is the safe place in between. ``append`` returns once a batch has committed to the
outbox's own SQLite file; each downstream consumer then drains it in order and at its own pace
from a durable cursor of its own, committing only what it has durably handed on. Delivery is
at-least-once: a consumer that fails, or is killed between ``read`` and ``commit``, is given the
same records again, which is harmless because the stores are idempotent on (device, metric, time).

    outbox = Outbox(path, max_records=1_000_000, max_age_seconds=7 * 86400,
                    consumers=["store", "influx"])
    async with outbox:
        await outbox.append(records)           # then acknowledge the MQTT message
        tg.create_task(outbox.drain("store", store.write_all), name="outbox.drain[store]")

The file:
- ``entries``: one row per record; ``seq`` is assigned in append order and never reused (the
  last one ever assigned is kept in ``state``, so emptying the table does not restart it).
  The record is a compact JSON array, type tag first, times as integer microseconds (exact).
- ``cursors``: per consumer, the last ``seq`` it committed.
- ``state``: the last ``seq`` assigned and the drop counters, which survive restarts.

Invariants that keep every operation to a few index lookups: rows only leave from the oldest
end (all consumers committed them, or a cap dropped them), so the rows kept are one contiguous
run of ``seq``; and when a cap drops rows, the cursors behind them move past them, so a
consumer's depth is simply ``last_seq - position``.

Caps: the outbox must not fill the disk during a long outage. When an append would exceed
``max_records``, or rows are older than ``max_age_seconds`` by append time, the oldest rows are
dropped even if a consumer has not read them. Never silently: each reason has a persistent
counter (``dropped_by_cap``, ``dropped_by_age``, in ``stats()`` for /metrics and /readyz), and a
warning is logged when a drop episode starts and when it ends (every consumer has caught up, or
the outbox closes) with how many were dropped.

PRAGMAs, and why:
- ``journal_mode=WAL``: appends and consumers' commits are small sequential writes.
- ``synchronous=FULL``: an acknowledged MQTT message is gone from the broker, so the outbox
  commit must be as durable as we can make it. In WAL mode NORMAL survives a process crash but
  can lose the last commits on an OS crash or power loss, which a practice without a UPS will
  see. FULL costs one fsync of the WAL per transaction; appends are batched (hundreds of records
  per transaction), so that cost is paid per batch, not per record.
- ``busy_timeout``: another process holding the lock briefly (a backup, an operator's sqlite3
  shell) waits rather than fails.
- ``application_id``: refuses to treat some other SQLite file (the store's) as an outbox.

All SQLite calls run on one dedicated thread that owns the connection, as in ``core.store.sqlite``,
so the event loop never blocks on disk; ``sqlite3`` errors become ``StoreError`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from core.clock import Clock, SystemClock
from core.errors import StoreError
from core.records import DeadLetter, FaultEvent, Quality, Reading, Record, StatusChange
from core.wal import use_wal

__all__ = ["Batch", "ConsumerStats", "Handler", "Outbox", "OutboxItem", "OutboxStats"]

log = logging.getLogger(__name__)

OutboxItem = Record | DeadLetter
"""What the outbox carries: the collectors' records and the messages they could not map."""

Handler = Callable[[Sequence[OutboxItem]], Awaitable[None]]
"""A consumer's hand-off: returns once the records are durably elsewhere, raises otherwise."""

_T = TypeVar("_T")

SCHEMA_VERSION: Final = 1
APPLICATION_ID: Final = 0x45574F42  # "EWOB"
SYNCHRONOUS: Final = "FULL"  # see the module docstring: an acknowledged message must survive

DROPPED_BY_CAP: Final = "dropped_by_cap"
DROPPED_BY_AGE: Final = "dropped_by_age"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    appended_us INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    consumer TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO state VALUES ('last_seq', 0), ('dropped_by_cap', 0), ('dropped_by_age', 0);
"""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
# ensure_ascii (the default) escapes lone surrogates too, so any Python string comes back exactly
_json = json.JSONEncoder(separators=(",", ":"), check_circular=False)


@dataclass(frozen=True, slots=True)
class Batch:
    """Records ``first_seq`` to ``last_seq``, in order, for one consumer.

    Empty when the consumer has committed everything; then ``last_seq`` is its position, so
    ``commit(consumer, batch.last_seq)`` is always valid and changes nothing.
    """

    first_seq: int
    last_seq: int
    records: tuple[OutboxItem, ...]

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """How far one consumer is behind: ``depth`` records, the oldest appended that long ago."""

    position: int
    depth: int
    oldest_age_seconds: float | None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """What /metrics and /readyz report. The drop counters are totals since the file was made."""

    records: int
    last_seq: int
    dropped_by_cap: int
    dropped_by_age: int
    consumers: dict[str, ConsumerStats]

    @property
    def depth(self) -> int:
        """Records the slowest consumer has not committed."""
        return max((c.depth for c in self.consumers.values()), default=0)

    @property
    def oldest_age_seconds(self) -> float | None:
        """Age of the oldest record some consumer has not committed."""
        ages = [c.oldest_age_seconds for c in self.consumers.values()]
        return max((age for age in ages if age is not None), default=None)


@dataclass(frozen=True, slots=True)
class _Drop:
    reason: str
    count: int
    behind: tuple[str, ...]


class Outbox:
    """An ordered, durable queue on disk with one cursor per consumer.

    Use as ``async with Outbox(...)``. One process owns the file; ``consumers`` names every
    consumer that will read it. A consumer new to the file starts at its end (it is not
    handed what is already there); a consumer no longer named is forgotten, with a warning,
    so that it cannot hold rows back forever. ``handler_failures`` counts, per consumer, the
    hand-offs ``drain`` saw fail (in memory, for /metrics).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_records: int,
        max_age_seconds: float,
        consumers: Sequence[str],
        clock: Clock | None = None,
    ) -> None:
        names = tuple(consumers)
        if not names:
            raise ValueError("an outbox needs at least one consumer")
        if len(set(names)) != len(names):
            raise ValueError(f"consumer names must be unique: {list(names)}")
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {max_records}")
        if not max_age_seconds > 0:
            raise ValueError(f"max_age_seconds must be positive, not {max_age_seconds}")
        self.path = Path(path)
        self.max_records = max_records
        self.max_age_seconds = max_age_seconds
        self.consumers = names
        self.handler_failures = dict.fromkeys(names, 0)
        self._max_age_us = round(max_age_seconds * 1_000_000)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._conn: sqlite3.Connection | None = None
        self._appended = {name: asyncio.Event() for name in names}
        # reason -> records dropped in the current episode; touched on the SQLite thread only
        self._episodes: dict[str, int] = {}

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, self._open)
        except (sqlite3.Error, OSError) as exc:
            self._executor.shutdown(wait=False)
            raise StoreError(f"outbox {self.path}: {exc}") from exc
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._close, conn)
        except sqlite3.Error as exc:
            raise StoreError(f"outbox {self.path}: {exc}") from exc
        finally:
            self._executor.shutdown(wait=True)

    # --- the producers' side -------------------------------------------------------------

    async def append(self, records: Sequence[OutboxItem]) -> int:
        """Append a batch in one transaction; return the last ``seq`` once it has committed.

        All or nothing: a record that cannot be stored (a naive timestamp, an unknown type)
        fails the whole batch before anything is written. If the calling task is cancelled
        while the commit is under way, the batch may still commit; the caller then does not
        acknowledge its message and the broker redelivers it, a harmless duplicate.
        """
        now_us = _us(self._clock.now())
        batch = tuple(records)  # the caller may reuse its list while the thread works
        last_seq = await self._run(lambda db: self._append(db, batch, now_us))
        if batch:
            for event in self._appended.values():
                event.set()
        return last_seq

    # --- the consumers' side -------------------------------------------------------------

    async def read(self, consumer: str, limit: int) -> Batch:
        """Up to ``limit`` records after ``consumer``'s cursor, oldest first; does not move it."""
        self._check(consumer)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        now_us = _us(self._clock.now())
        return await self._run(lambda db: self._read(db, consumer, limit, now_us))

    async def commit(self, consumer: str, last_seq: int) -> None:
        """Record that ``consumer`` has durably handed on everything up to ``last_seq``.

        Committing a position at or below the cursor changes nothing (a retried commit, or a
        batch partly dropped by a cap while the consumer held it). Rows every consumer has
        committed are deleted in the same transaction.
        """
        self._check(consumer)
        await self._run(lambda db: self._commit(db, consumer, last_seq))

    async def wait(self, consumer: str) -> None:
        """Return once ``consumer`` has records it has not committed, without polling.

        ``append`` in this process sets an event per consumer; the event is cleared before
        the check, so an append that commits between the check and the wait still wakes it.
        """
        event = self._event(consumer)
        while True:
            event.clear()
            if await self._run(lambda db: self._depth(db, consumer)) > 0:
                return
            await event.wait()

    async def batches(
        self, consumer: str, limit: int = 500, poll_interval: float = 5.0
    ) -> AsyncGenerator[Batch, None]:
        """Yield non-empty batches forever, waking on appends.

        Commit each batch before asking for the next one, or the same batch comes again (that
        is how a failed hand-off is retried). ``poll_interval`` is only a safety net: it also
        lets the age cap act while nothing is being appended. Iterate inside
        ``contextlib.aclosing`` when leaving the loop early.
        """
        while True:
            yield await self._next_batch(consumer, limit, poll_interval)

    async def drain(
        self,
        consumer: str,
        handler: Handler,
        *,
        limit: int = 500,
        poll_interval: float = 5.0,
        retry_initial: float = 0.5,
        retry_cap: float = 30.0,
        linger: float = 0.0,
    ) -> None:
        """Hand every record to ``handler`` in order, until cancelled; run it as a named task.

        ``linger`` seconds pass after a batch smaller than ``limit`` before the next read, so
        that a sink billed or throttled per request (InfluxDB) gets few full batches rather
        than many small ones; under load batches are full and nothing waits.

        A batch is committed only after ``handler`` returns. When it raises, the same batch is
        retried after a random delay in [0, min(retry_cap, retry_initial * 2**attempt)] (full
        jitter, so several consumers do not retry in step); nothing is ever dropped here, so a
        record that can never be handed on must be dealt with (counted, dead-lettered) inside
        ``handler``. Errors of the outbox itself (its disk) are not retried: they propagate.
        """
        self._check(consumer)
        attempt = 0
        try:
            while True:
                batch = await self._next_batch(consumer, limit, poll_interval)
                try:
                    await handler(batch.records)
                except Exception as exc:
                    self.handler_failures[consumer] += 1
                    delay = random.uniform(0, min(retry_cap, retry_initial * 2 ** min(attempt, 32)))
                    # one warning per outage, not one per attempt
                    level = logging.WARNING if attempt == 0 else logging.DEBUG
                    log.log(
                        level,
                        "outbox consumer %s failed to hand on records %d-%d (%s: %s); "
                        "retrying in %.2fs until it succeeds",
                        consumer,
                        batch.first_seq,
                        batch.last_seq,
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                    attempt += 1
                    await asyncio.sleep(delay)
                    continue
                if attempt:
                    log.warning(
                        "outbox consumer %s is handing records on again after %d failed attempts",
                        consumer,
                        attempt,
                    )
                    attempt = 0
                await self.commit(consumer, batch.last_seq)
                if linger > 0 and len(batch) < limit:
                    await asyncio.sleep(linger)
        except asyncio.CancelledError:
            log.debug("outbox consumer %s stopped; uncommitted records will come again", consumer)
            raise

    async def stats(self) -> OutboxStats:
        """Depth and oldest age per consumer and the drop counters, after applying the age cap."""
        now_us = _us(self._clock.now())
        return await self._run(lambda db: self._stats(db, now_us))

    # --- plumbing on the event loop ------------------------------------------------------

    def _check(self, consumer: str) -> None:
        if consumer not in self._appended:
            raise ValueError(f"unknown outbox consumer {consumer!r}; known: {list(self.consumers)}")

    def _event(self, consumer: str) -> asyncio.Event:
        self._check(consumer)
        return self._appended[consumer]

    async def _next_batch(self, consumer: str, limit: int, poll_interval: float) -> Batch:
        event = self._event(consumer)
        while True:
            event.clear()  # before the read: an append after it sets the event again
            batch = await self.read(consumer, limit)
            if batch:
                return batch
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_interval):
                    await event.wait()

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        if conn is None:
            raise StoreError(f"outbox {self.path} is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work, conn)
        except sqlite3.Error as exc:
            raise StoreError(f"outbox {self.path}: {exc}") from exc

    # --- on the SQLite thread ------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the default check_same_thread=True holds us to the one-thread rule
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._check_identity(conn)
            mode = use_wal(conn)
            if mode != "wal":
                raise StoreError(f"outbox {self.path}: cannot use WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._transaction(conn, self._reconcile_consumers)
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_identity(self, conn: sqlite3.Connection) -> None:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id == 0:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StoreError(f"{self.path} is an SQLite database but not an equipwatch outbox")
        elif app_id != APPLICATION_ID:
            raise StoreError(f"{self.path} is not an equipwatch outbox (application_id {app_id})")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"outbox {self.path} was written by a newer equipwatch "
                f"(schema {version} > {SCHEMA_VERSION})"
            )

    def _reconcile_consumers(self, db: sqlite3.Connection) -> None:
        known = dict(db.execute("SELECT consumer, position FROM cursors").fetchall())
        last_seq = _state(db, "last_seq")
        for name in self.consumers:
            if name not in known:
                db.execute("INSERT INTO cursors VALUES (?, ?)", (name, last_seq))
                if last_seq:
                    log.info(
                        "outbox %s: new consumer %s starts at seq %d", self.path, name, last_seq
                    )
        for name, position in known.items():
            if name not in self.consumers:
                db.execute("DELETE FROM cursors WHERE consumer = ?", (name,))
                log.warning(
                    "outbox %s: consumer %s is no longer configured; forgetting it and the %d "
                    "records it had not committed",
                    self.path,
                    name,
                    last_seq - position,
                )
        _delete_committed(db)

    def _close(self, conn: sqlite3.Connection) -> None:
        self._end_episodes("the outbox is closing")
        conn.close()

    @staticmethod
    def _transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # keep the original error
                    db.execute("ROLLBACK")
            raise
        return result

    def _append(self, db: sqlite3.Connection, batch: tuple[OutboxItem, ...], now_us: int) -> int:
        bodies = [_encode(item) for item in batch]  # before BEGIN: a bad record writes nothing

        def work(db: sqlite3.Connection) -> tuple[int, list[_Drop]]:
            drops = [drop for drop in [self._drop_aged(db, now_us)] if drop is not None]
            last_seq = _state(db, "last_seq")
            if not bodies:
                return last_seq, drops
            first_new = last_seq + 1
            new_last = last_seq + len(bodies)
            oldest, newest = _ends(db)
            held = 0 if oldest is None or newest is None else newest[0] - oldest[0] + 1
            if held + len(bodies) > self.max_records:
                # keep the newest max_records, which may mean skipping the start of this batch
                keep_from = new_last - self.max_records + 1
                skipped = max(0, keep_from - first_new)
                drops.append(self._drop_before(db, keep_from, DROPPED_BY_CAP, extra=skipped))
            else:
                keep_from = first_new
            # append time never goes backwards, so that age order is seq order
            appended_us = now_us if newest is None else max(now_us, newest[1])
            db.executemany(
                "INSERT INTO entries VALUES (?, ?, ?)",
                [
                    (seq, appended_us, body)
                    for seq, body in enumerate(bodies, start=first_new)
                    if seq >= keep_from
                ],
            )
            _set_state(db, "last_seq", new_last)
            return new_last, drops

        last_seq, drops = self._transaction(db, work)
        for drop in drops:
            self._note_drop(drop)
        return last_seq

    def _read(self, db: sqlite3.Connection, consumer: str, limit: int, now_us: int) -> Batch:
        self._apply_age_cap(db, now_us)
        position = _position(db, consumer)
        rows = db.execute(
            "SELECT seq, body FROM entries WHERE seq > ? ORDER BY seq LIMIT ?", (position, limit)
        ).fetchall()
        if not rows:
            return Batch(position + 1, position, ())
        return Batch(rows[0][0], rows[-1][0], tuple(_decode(body) for _, body in rows))

    def _commit(self, db: sqlite3.Connection, consumer: str, last_seq: int) -> None:
        def work(db: sqlite3.Connection) -> bool:
            newest = _state(db, "last_seq")
            if last_seq > newest:
                raise ValueError(
                    f"{consumer} cannot commit seq {last_seq}: the last one appended is {newest}"
                )
            db.execute(
                "UPDATE cursors SET position = ? WHERE consumer = ? AND position < ?",
                (last_seq, consumer, last_seq),
            )
            return _delete_committed(db) == newest

        if self._transaction(db, work):
            self._end_episodes("every consumer has caught up")

    def _depth(self, db: sqlite3.Connection, consumer: str) -> int:
        return _state(db, "last_seq") - _position(db, consumer)

    def _stats(self, db: sqlite3.Connection, now_us: int) -> OutboxStats:
        self._apply_age_cap(db, now_us)
        oldest, newest = _ends(db)
        last_seq = _state(db, "last_seq")
        consumers = {}
        for name in self.consumers:
            position = _position(db, name)
            row = db.execute(
                "SELECT appended_us FROM entries WHERE seq > ? ORDER BY seq LIMIT 1", (position,)
            ).fetchone()
            age = None if row is None else max(0, now_us - row[0]) / 1_000_000
            consumers[name] = ConsumerStats(position, last_seq - position, age)
        return OutboxStats(
            records=0 if oldest is None or newest is None else newest[0] - oldest[0] + 1,
            last_seq=last_seq,
            dropped_by_cap=_state(db, DROPPED_BY_CAP),
            dropped_by_age=_state(db, DROPPED_BY_AGE),
            consumers=consumers,
        )

    def _apply_age_cap(self, db: sqlite3.Connection, now_us: int) -> None:
        oldest, _ = _ends(db)
        if oldest is not None and oldest[1] < now_us - self._max_age_us:
            drop = self._transaction(db, lambda db: self._drop_aged(db, now_us))
            if drop is not None:
                self._note_drop(drop)

    def _drop_aged(self, db: sqlite3.Connection, now_us: int) -> _Drop | None:
        """Drop rows appended more than ``max_age_seconds`` ago (inside a transaction)."""
        cutoff = now_us - self._max_age_us
        oldest, _ = _ends(db)
        if oldest is None or oldest[1] >= cutoff:
            return None
        # append times never decrease along seq, so this scans only the rows being dropped
        young = db.execute(
            "SELECT seq FROM entries WHERE appended_us >= ? ORDER BY seq LIMIT 1", (cutoff,)
        ).fetchone()
        keep_from = _state(db, "last_seq") + 1 if young is None else young[0]
        return self._drop_before(db, keep_from, DROPPED_BY_AGE)

    @staticmethod
    def _drop_before(db: sqlite3.Connection, keep_from: int, reason: str, extra: int = 0) -> _Drop:
        """Delete rows before ``keep_from``, move cursors past them and count them."""
        deleted = db.execute("DELETE FROM entries WHERE seq < ?", (keep_from,)).rowcount
        behind = tuple(
            name
            for (name,) in db.execute(
                "SELECT consumer FROM cursors WHERE position < ? ORDER BY consumer",
                (keep_from - 1,),
            )
        )
        db.execute(
            "UPDATE cursors SET position = ? WHERE position < ?", (keep_from - 1, keep_from - 1)
        )
        count = deleted + extra
        db.execute("UPDATE state SET value = value + ? WHERE key = ?", (count, reason))
        return _Drop(reason, count, behind)

    def _note_drop(self, drop: _Drop) -> None:
        if drop.count == 0:
            return
        so_far = self._episodes.get(drop.reason)
        self._episodes[drop.reason] = (so_far or 0) + drop.count
        if so_far is None:
            log.warning(
                "outbox %s: dropped the %d oldest records (%s) before %s handed them on; "
                "further drops are counted in %s and summed up when every consumer has caught up",
                self.path,
                drop.count,
                self._why(drop.reason),
                ", ".join(drop.behind) or "every consumer",
                drop.reason,
            )

    def _end_episodes(self, because: str) -> None:
        for reason, total in self._episodes.items():
            log.warning(
                "outbox %s: %s; %d records were dropped in all (%s)",
                self.path,
                because,
                total,
                self._why(reason),
            )
        self._episodes.clear()

    def _why(self, reason: str) -> str:
        if reason == DROPPED_BY_CAP:
            return f"{DROPPED_BY_CAP}: more than max_records={self.max_records}"
        return f"{DROPPED_BY_AGE}: older than max_age_seconds={self.max_age_seconds:g}"


# --- SQL helpers (SQLite thread) ------------------------------------------------------------


def _state(db: sqlite3.Connection, key: str) -> int:
    row = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    if row is None:
        raise StoreError(f"outbox state {key!r} is missing")
    return int(row[0])


def _set_state(db: sqlite3.Connection, key: str, value: int) -> None:
    db.execute("UPDATE state SET value = ? WHERE key = ?", (value, key))


def _position(db: sqlite3.Connection, consumer: str) -> int:
    row = db.execute("SELECT position FROM cursors WHERE consumer = ?", (consumer,)).fetchone()
    if row is None:
        raise StoreError(f"outbox has no cursor for consumer {consumer!r}")
    return int(row[0])


def _ends(db: sqlite3.Connection) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(seq, appended_us) of the oldest and newest rows: two index lookups.

    Two queries, not ``SELECT min(seq), max(seq)``: SQLite answers a lone min() or max() from
    the index but scans the table for both at once.
    """
    oldest = db.execute("SELECT seq, appended_us FROM entries ORDER BY seq LIMIT 1").fetchone()
    newest = db.execute("SELECT seq, appended_us FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    return oldest, newest


def _delete_committed(db: sqlite3.Connection) -> int:
    """Delete the rows every consumer has committed; return the slowest consumer's position."""
    slowest = int(db.execute("SELECT min(position) FROM cursors").fetchone()[0])
    db.execute("DELETE FROM entries WHERE seq <= ?", (slowest,))
    return slowest


# --- the record format ----------------------------------------------------------------------


def _us(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (``timestamp()`` is a float and can be off by one)."""
    if moment.utcoffset() is None:
        raise ValueError(f"naive time {moment.isoformat()}: outbox times must be timezone-aware")
    return (moment - _EPOCH) // _ONE_US


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _encode(item: OutboxItem) -> str:
    row: list[Any]
    if isinstance(item, Reading):
        row = ["R", item.device_id, item.metric, item.value, _us(item.ts), item.quality.value]
        row += [item.raw, item.width]
    elif isinstance(item, FaultEvent):
        row = ["F", item.device_id, item.code, _us(item.ts), item.active]
    elif isinstance(item, StatusChange):
        row = ["S", item.device_id, item.online, _us(item.ts), item.reason]
    elif isinstance(item, DeadLetter):
        row = ["D", item.source, item.topic, item.payload, item.reason, item.detail, _us(item.ts)]
    else:
        raise TypeError(f"the outbox cannot hold a {type(item).__name__}")
    return _json.encode(row)


def _decode(body: str) -> OutboxItem:
    try:
        row = json.loads(body)
        tag = row[0]
        if tag == "R":
            _, device_id, metric, value, ts, quality, raw, width = row
            return Reading(device_id, metric, float(value), _at(ts), Quality(quality), raw, width)
        if tag == "F":
            _, device_id, code, ts, active = row
            return FaultEvent(device_id, code, _at(ts), active)
        if tag == "S":
            _, device_id, online, ts, reason = row
            return StatusChange(device_id, online, _at(ts), reason)
        if tag == "D":
            _, source, topic, payload, reason, detail, ts = row
            return DeadLetter(source, topic, payload, reason, detail, _at(ts))
    except (ValueError, TypeError, IndexError, OverflowError) as exc:
        raise StoreError(f"outbox entry {body!r} cannot be read: {exc}") from exc
    raise StoreError(f"outbox entry {body!r} has an unknown record type")
