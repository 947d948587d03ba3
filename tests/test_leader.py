"""Leader election on a real PostgreSQL (advisory lock) and on a file lock: one leader at a
time, and a standby takes over when the leader's session ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import asyncpg
import pytest

from core.leader import Election, FileElection, PostgresElection, lock_key
from tests.pg import postgres_dsn
from tests.support import wait_for

RETRY = 0.2


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with postgres_dsn() as value:
        yield value


class Engine:
    """Counts who is leading right now; a second concurrent leader is a failure."""

    def __init__(self) -> None:
        self.active: set[str] = set()
        self.overlaps = 0
        self.led: list[str] = []

    def lead(self, who: str) -> Callable[[], Awaitable[None]]:
        async def leading() -> None:
            if self.active:
                self.overlaps += 1
            self.active.add(who)
            self.led.append(who)
            try:
                await asyncio.Event().wait()
            finally:
                self.active.discard(who)

        return leading


@contextlib.asynccontextmanager
async def campaigning(
    elections: Mapping[str, Election], engine: Engine
) -> AsyncIterator[dict[str, asyncio.Task[None]]]:
    tasks = {
        who: asyncio.create_task(election.run(engine.lead(who)))
        for who, election in elections.items()
    }
    try:
        yield tasks
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


async def one_leader(engine: Engine) -> str | None:
    await asyncio.sleep(0)
    return next(iter(engine.active)) if len(engine.active) == 1 else None


def test_lock_keys_are_stable_signed_64_bit() -> None:
    assert lock_key("equipwatch.rules") == lock_key("equipwatch.rules")
    assert lock_key("equipwatch.rules") != lock_key("equipwatch.rules.other-site")
    assert -(2**63) <= lock_key("x") < 2**63


async def test_one_leader_and_a_takeover_when_its_session_ends(dsn: str) -> None:
    name = f"test.{asyncio.get_running_loop().time()}"
    elections = {
        who: PostgresElection(dsn, name=name, retry_interval=RETRY, check_interval=RETRY)
        for who in ("a", "b", "c")
    }
    engine = Engine()
    async with campaigning(elections, engine) as tasks:
        first = await wait_for(lambda: one_leader(engine), timeout=10, what="a leader")
        # the others ask again and again and are refused: still one leader
        standbys = [e for who, e in elections.items() if who != first]
        await wait_for(
            lambda: _refused_at_least(standbys, 3), timeout=10, what="standbys asking in vain"
        )
        assert elections[first].terms == 1
        assert engine.overlaps == 0

        tasks[first].cancel()  # the leader stops: its session closes, the lock goes with it
        second = await wait_for(
            lambda: _leader_other_than(engine, first), timeout=5, what="a takeover"
        )
        assert second != first
        assert engine.overlaps == 0


async def test_a_leader_whose_session_is_killed_stops_leading(dsn: str) -> None:
    name = f"test.{asyncio.get_running_loop().time()}"
    elections = {
        who: PostgresElection(dsn, name=name, retry_interval=RETRY, check_interval=RETRY)
        for who in ("a", "b")
    }
    engine = Engine()
    async with campaigning(elections, engine):
        first = await wait_for(lambda: one_leader(engine), timeout=10, what="a leader")
        unsigned = lock_key(name) & 0xFFFF_FFFF_FFFF_FFFF
        conn = await asyncpg.connect(dsn)
        try:
            # a bigint advisory key is held as classid (high 32 bits) and objid (low 32 bits)
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                "AND classid = $1::bigint::oid AND objid = $2::bigint::oid",
                unsigned >> 32,
                unsigned & 0xFFFF_FFFF,
            )
        finally:
            await conn.close()
        assert killed == 1
        second = await wait_for(
            lambda: _leader_other_than(engine, first), timeout=10, what="a takeover"
        )
        assert second != first
        # the killed one came back as a standby, and never overlapped
        assert engine.overlaps == 0


async def test_file_lock_elects_one_and_hands_over(tmp_path: Path) -> None:
    path = tmp_path / "rules.lock"
    elections = {who: FileElection(path, retry_interval=RETRY) for who in ("a", "b")}
    engine = Engine()
    async with campaigning(elections, engine) as tasks:
        first = await wait_for(lambda: one_leader(engine), timeout=5, what="a leader")
        tasks[first].cancel()
        second = await wait_for(
            lambda: _leader_other_than(engine, first), timeout=5, what="a takeover"
        )
        assert second != first
        assert engine.overlaps == 0


async def _leader_other_than(engine: Engine, first: str) -> str | None:
    leader = await one_leader(engine)
    return leader if leader not in (None, first) else None


async def _refused_at_least(elections: list[PostgresElection], times: int) -> bool | None:
    await asyncio.sleep(0)
    return all(e.refusals >= times for e in elections) or None
