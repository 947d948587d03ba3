"""A process for the outbox tests to SIGKILL at an awkward moment.

    python -m tests.outbox_worker append PATH --batch-size N [--die-inside-append K]
        appends batches 0, 1, 2, ... until killed (continuing after the batches already in the
        file); after each commit prints "<batch number> <last seq>". With --die-inside-append,
        SIGKILLs itself during its K-th append (counting from 0), rows inserted, not committed
    python -m tests.outbox_worker read PATH --consumer NAME --limit N
        reads one batch without committing it, prints "<first seq> <last seq>", waits to be killed

Record ``i`` of batch ``k`` is a Reading with value ``k`` and raw ``i``, so that a reader can
tell a partial or duplicated batch from a whole one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from core.records import Reading
from core.store.outbox import Outbox

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CONSUMER = "store"


def outbox(path: Path) -> Outbox:
    return Outbox(
        path, max_records=10_000_000, max_age_seconds=10 * 365 * 86400, consumers=[CONSUMER]
    )


def batch(number: int, size: int) -> list[Reading]:
    return [
        Reading(
            "worker", "batch", float(number), T0 + timedelta(microseconds=number * size + i), raw=i
        )
        for i in range(size)
    ]


def die_inside_append(number: int) -> None:
    """SIGKILL this process on the outbox's SQLite thread inside its ``number``-th append.

    A kill from outside lands wherever it lands, most often between two appends; this one lands
    at the worst moment, when a batch's rows have been inserted but the transaction has not
    committed. Each append inserts with exactly one ``executemany``, so the profiler counts
    those; it is set before the outbox starts its thread, and applies to new threads only.
    """
    calls = 0

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "c_return" and getattr(arg, "__name__", None) == "executemany":
            if calls == number:
                os.kill(os.getpid(), signal.SIGKILL)
            calls += 1

    threading.setprofile(profile)


async def append_forever(path: Path, size: int) -> None:
    async with outbox(path) as box:
        stats = await box.stats()
        number = stats.last_seq // size  # batches are whole, so this is the next batch's number
        while True:
            last_seq = await box.append(batch(number, size))
            print(number, last_seq, flush=True)
            number += 1


async def read_then_hang(path: Path, consumer: str, limit: int) -> None:
    async with outbox(path) as box:
        got = await box.read(consumer, limit)
        print(got.first_seq, got.last_seq, flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    append = commands.add_parser("append")
    append.add_argument("path", type=Path)
    append.add_argument("--batch-size", type=int, required=True)
    append.add_argument("--die-inside-append", type=int)
    read = commands.add_parser("read")
    read.add_argument("path", type=Path)
    read.add_argument("--consumer", default=CONSUMER)
    read.add_argument("--limit", type=int, required=True)
    args = parser.parse_args()
    if args.command == "append":
        if args.die_inside_append is not None:
            die_inside_append(args.die_inside_append)
        asyncio.run(append_forever(args.path, args.batch_size))
    else:
        asyncio.run(read_then_hang(args.path, args.consumer, args.limit))


if __name__ == "__main__":
    main()
