"""Exactly one active rules engine among several processes, elected by the database itself.

With PostgreSQL the lock is a session-level advisory lock: the server holds it for the leader's
connection and releases it the moment that connection ends, so a leader killed with SIGKILL
hands over as soon as the server sees the socket close. A leader that is cut off instead
(network partition, frozen VM) is found out by TCP keepalives the session asks the server for
(``tcp_keepalives_*``), after about ``KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT``
seconds. The leader checks its own connection every ``check_interval`` seconds and stops leading
when the check fails, so two leaders overlap for at most that long; whatever a leader does must
therefore be idempotent in the database (a notice is claimed once per event and recipient).

With SQLite all processes share one machine, and the lock is an ``flock`` on a file beside the
database, which the kernel releases when the holder dies.

    election = PostgresElection(dsn, name="equipwatch.rules")
    await election.run(engine.run)   # leads, or waits to lead, until cancelled
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import asyncpg

from core.aio import raise_if_cancelling

__all__ = ["Election", "FileElection", "PostgresElection", "lock_key"]

log = logging.getLogger(__name__)

KEEPALIVE_IDLE = 5  # seconds of silence before the server probes the leader's connection
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3

Lead = Callable[[], Awaitable[None]]


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name`` (the same in every process)."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Election(Protocol):
    is_leader: bool

    async def run(self, lead: Lead) -> None: ...


class PostgresElection:
    """Leads (runs ``lead``) while this process holds the advisory lock ``name``.

    A standby asks for the lock every ``retry_interval`` seconds, so a takeover after the
    leader's connection ended takes at most that long (plus the connection set-up).
    """

    def __init__(
        self,
        dsn: str,
        *,
        name: str,
        retry_interval: float = 2.0,
        check_interval: float = 2.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._key = lock_key(name)
        self._name = name
        self._retry = retry_interval
        self._check = check_interval
        self._connect_timeout = connect_timeout
        self.is_leader = False
        self.terms = 0  # times this process became leader
        self.refusals = 0  # times it asked for the lock while another process held it

    async def run(self, lead: Lead) -> None:
        while True:
            try:
                await self._one_session(lead)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                raise_if_cancelling()
                log.warning("election %s: %s; trying again in %gs", self._name, exc, self._retry)
            self.is_leader = False
            await asyncio.sleep(self._retry)

    async def _one_session(self, lead: Lead) -> None:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            server_settings={
                "application_name": f"equipwatch {self._name}",
                "tcp_keepalives_idle": str(KEEPALIVE_IDLE),
                "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL),
                "tcp_keepalives_count": str(KEEPALIVE_COUNT),
            },
        )
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key):
                self.refusals += 1
                await asyncio.sleep(self._retry)
            self.is_leader = True
            self.terms += 1
            log.info("election %s: this process leads (pid %d)", self._name, os.getpid())
            await _lead_while(lead, lambda: _alive(conn, self._check), self._check)
        finally:
            self.is_leader = False
            # closing the session releases the lock; terminate when the server is gone
            try:
                await asyncio.wait_for(conn.close(), timeout=self._check)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                conn.terminate()


async def _alive(conn: asyncpg.Connection, within: float) -> None:
    async with asyncio.timeout(within):
        await conn.fetchval("SELECT 1")


async def _lead_while(lead: Lead, check: Callable[[], Awaitable[None]], interval: float) -> None:
    """Run ``lead`` until ``check`` raises (then stop leading and re-raise) or ``lead`` ends."""
    leading = asyncio.create_task(_as_coroutine(lead), name="leader.lead")
    try:
        while not leading.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await asyncio.shield(leading)
            if not leading.done():
                await check()
        await leading
    finally:
        if not leading.done():
            leading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leading


async def _as_coroutine(lead: Lead) -> None:
    await lead()


class FileElection:
    """Leads while this process holds an exclusive ``flock`` on ``path`` (one machine only)."""

    def __init__(self, path: Path, *, retry_interval: float = 2.0) -> None:
        self._path = path
        self._retry = retry_interval
        self.is_leader = False
        self.terms = 0

    async def run(self, lead: Lead) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # polled: a blocking flock in a thread could not be cancelled, and would take
            # the lock after its caller had gone
            while True:
                if _try_flock(fd):
                    break
                await asyncio.sleep(self._retry)
            self.is_leader = True
            self.terms += 1
            log.info("election %s: this process leads (pid %d)", self._path, os.getpid())
            await lead()
        finally:
            self.is_leader = False
            os.close(fd)  # releases the lock


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
