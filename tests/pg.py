"""A real PostgreSQL for tests: the one named by EQUIPWATCH_TEST_POSTGRES_DSN, or a throwaway
cluster started with ``initdb`` and ``pg_ctl``.

A throwaway cluster lives in its own temporary directory on a free loopback port, with its unix
socket in that directory (never /var/run/postgresql, which other servers use), trust
authentication and no durability (fsync off: it is deleted at the end anyway). ``initdb``
refuses to run as root, so under root the cluster runs as the ``postgres`` system user through
``runuser``, and its directory is made outside pytest's temporary root (mode 0700, which that
user could not enter) and handed to that user.

Where the binaries are missing, the tests that need them skip, or fail under CI=true, as
``tests.support.require_binary`` does for every other server.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from core.net import free_port
from tests.support import in_ci, require_binary

__all__ = [
    "DSN_VARIABLE",
    "Cluster",
    "drop_schema",
    "postgres_cluster",
    "postgres_dsn",
    "schema_name",
]

DSN_VARIABLE = "EQUIPWATCH_TEST_POSTGRES_DSN"
PACKAGE = "postgresql"
RUN_AS = "postgres"
START_ATTEMPTS = 3


def _binary(name: str) -> str:
    """A PostgreSQL server binary: Debian keeps them in /usr/lib/postgresql/<version>/bin, off
    PATH, so look there (newest version first) before PATH."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else -1,
        reverse=True,
    )
    for directory in versions:
        if (directory / name).is_file():
            return str(directory / name)
    return require_binary(name, PACKAGE)


def _run_as() -> list[str]:
    """The command prefix that runs a server command as a non-root user, when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        message = (
            f"initdb refuses to run as root and there is no {RUN_AS!r} user to run it as "
            f"(apt-get install {PACKAGE} creates one; or useradd --system {RUN_AS})"
        )
        if in_ci():
            pytest.fail(f"{message}; CI=true requires it")
        pytest.skip(message)
    return [require_binary("runuser", "util-linux"), "-u", RUN_AS, "--"]


@dataclass
class Cluster:
    """A running throwaway cluster; ``stop()`` may be called early (to test a dead server)."""

    dsn: str
    data: Path
    log: Path
    pg_ctl: str
    prefix: list[str]
    running: bool = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            _run([*self.prefix, self.pg_ctl, "-D", str(self.data), "stop", "-m", "fast", "-w"])

    def start(self) -> None:
        """Start a stopped cluster again on its port (pg_ctl reuses the last options)."""
        if not self.running:
            _run(
                [
                    *self.prefix,
                    self.pg_ctl,
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-w",
                    "restart",
                ]
            )
            self.running = True


def _run(command: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
        )


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """Start a throwaway PostgreSQL cluster; stop it and delete its files on exit."""
    initdb = _binary("initdb")
    pg_ctl = _binary("pg_ctl")
    prefix = _run_as()
    # a short path under the system temporary directory: the unix socket path must stay under
    # 107 bytes, and the server's user must be able to reach it
    root = Path(tempfile.mkdtemp(prefix="equipwatch-pg-"))
    try:
        if prefix:
            shutil.chown(root, user=RUN_AS)
        data, log = root / "data", root / "server.log"
        options = ["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"]
        _run([*prefix, initdb, "-D", str(data), *options, *_collation(initdb)], cwd=root)
        cluster = _start(data, log, root, pg_ctl, prefix)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _collation(initdb: str) -> list[str]:
    """A natural-language collation (ICU en-US) like a typical production database's, so that
    code assuming SQLite's byte order for text is caught; plain C where ICU is missing."""
    help_text = subprocess.run([initdb, "--help"], capture_output=True, text=True, check=False)
    if "--locale-provider" in help_text.stdout:
        return ["--locale=C.UTF-8", "--locale-provider=icu", "--icu-locale=en-US"]
    return ["--locale=C"]


def _start(data: Path, log: Path, root: Path, pg_ctl: str, prefix: list[str]) -> Cluster:
    """Start the server on a free port; another process may take the port between our look
    and the server's bind, so a failed start is retried on a new port."""
    failure = ""
    for _ in range(START_ATTEMPTS):
        port = free_port()
        options = [
            "listen_addresses=127.0.0.1",
            f"port={port}",
            f"unix_socket_directories={root}",
            "fsync=off",  # a throwaway cluster never needs to survive a crash
            "synchronous_commit=off",
            "full_page_writes=off",
        ]
        command = [*prefix, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "30"]
        command += ["-o", " ".join(f"-c {option}" for option in options), "start"]
        result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            return Cluster(dsn, data, log, pg_ctl, prefix)
        failure = log.read_text() if log.exists() else result.stdout + result.stderr
        if "Address already in use" not in failure:
            break  # anything else will not get better on another port
    raise AssertionError(f"PostgreSQL did not start:\n{failure}")


@contextmanager
def postgres_dsn() -> Iterator[str]:
    """The DSN of a real PostgreSQL for a whole test session: EQUIPWATCH_TEST_POSTGRES_DSN
    when set, else a throwaway cluster's. Tests isolate themselves with a schema each."""
    configured = os.environ.get(DSN_VARIABLE)
    if configured:
        yield configured
        return
    with postgres_cluster() as cluster:
        yield cluster.dsn


def schema_name(test_name: str) -> str:
    """A schema of the test's own, named after it so that a leftover one is easy to trace; a
    random suffix keeps two runs against one shared server apart."""
    stem = re.sub(r"[^a-z0-9]+", "_", test_name.lower()).strip("_")[:40]
    return f"t_{stem}_{os.urandom(4).hex()}"


async def drop_schema(dsn: str, schema: str) -> None:
    """Remove a test's schema, so that a shared server does not collect them."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
