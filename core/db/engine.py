"""Where the records live, and the SQLAlchemy engine that reaches them.

Two backends:
- SQLite (``sqlite+aiosqlite:///path``), by default the time-series store's own file. Each
  connection sets WAL (readers never block the writer), ``synchronous=NORMAL`` and a
  ``busy_timeout``, so it shares the file with the store's own sqlite3 writer connection.
  Transactions that write start with ``BEGIN IMMEDIATE``: they take the write lock up front,
  so two writers queue on ``busy_timeout`` instead of one failing when it tries to upgrade a
  read lock (SQLite's deadlock answer in WAL mode). Read-only transactions start deferred.
- PostgreSQL (``postgresql+asyncpg://...``), optionally in a schema of its own (tests use one
  each): the schema goes first on the connection's ``search_path``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from core.config import SiteConfig
from core.secrets import postgres_dsn
from core.wal import LOCKED

__all__ = [
    "BUSY_TIMEOUT_MS",
    "WRITE",
    "create_engine",
    "describe",
    "quote_ident",
    "records_url",
    "records_url_for",
    "sqlite_file",
]

BUSY_TIMEOUT_MS = 5000
WRITE = "equipwatch_write"
"""Execution option that marks a connection's transactions as writing (BEGIN IMMEDIATE)."""

_MAX_SCHEMA_BYTES = 63


def records_url(setting: str | Path) -> str:
    """The SQLAlchemy URL for a records database given as a file path, a ``postgresql://``
    DSN or a SQLAlchemy URL of a supported driver. A relative path is taken from the current
    directory, as the store takes its own."""
    if isinstance(setting, Path) or "://" not in setting:
        return f"sqlite+aiosqlite:///{Path(setting).expanduser().absolute()}"
    scheme, rest = setting.split("://", 1)
    drivers = {
        "sqlite": "sqlite+aiosqlite",
        "sqlite+aiosqlite": "sqlite+aiosqlite",
        "postgres": "postgresql+asyncpg",
        "postgresql": "postgresql+asyncpg",
        "postgresql+asyncpg": "postgresql+asyncpg",
    }
    if scheme not in drivers:
        raise ValueError(
            f"{scheme}:// is not a records database: give a file path, a postgresql:// DSN, "
            "or a sqlite+aiosqlite:// or postgresql+asyncpg:// URL"
        )
    return f"{drivers[scheme]}://{rest}"


def records_url_for(site: SiteConfig, environ: Mapping[str, str] | None = None) -> str:
    """The records database a site uses: the time-series store's database (its SQLite file,
    or its PostgreSQL server with the password from the environment)."""
    if site.store.backend == "postgresql":
        return records_url(postgres_dsn(site, environ))
    return records_url(site.store.path)


def describe(url: str, schema: str | None = None) -> str:
    """The database for a message: the file, or the URL without its password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        where = str(parsed.database)
    else:
        where = parsed.render_as_string(hide_password=True)
    return where if schema is None else f"{where} (schema {schema})"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for another backend."""
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"{url!r} is not a database URL: {exc}") from exc


def create_engine(url: str, *, schema: str | None = None) -> AsyncEngine:
    """An engine for the records database at ``url`` (see the module's notes)."""
    parsed = _parse(url)
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite" and driver == "aiosqlite":
        if schema is not None:
            raise ValueError("a schema applies to PostgreSQL only, not to a SQLite file")
        database = parsed.database
        if not database or database == ":memory:" or database.startswith("file:"):
            raise ValueError(
                f"{url}: the records need a database file, e.g. sqlite+aiosqlite:///data/x.sqlite"
            )
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed)
        _sqlite_events(engine)
        return engine
    if backend == "postgresql" and driver == "asyncpg":
        connect_args: dict[str, Any] = {}
        if schema is not None:
            if not schema or len(schema.encode()) > _MAX_SCHEMA_BYTES:
                raise ValueError(f"a PostgreSQL schema name has 1 to 63 bytes, not {schema!r}")
            connect_args["server_settings"] = {"search_path": quote_ident(schema)}
        return create_async_engine(parsed, connect_args=connect_args)
    raise ValueError(
        f"{parsed.drivername}:// is not supported for the records: use sqlite+aiosqlite:// "
        "or postgresql+asyncpg:// (records_url converts a path or a postgresql:// DSN)"
    )


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _sqlite_events(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: object) -> None:
        # the driver's own implicit BEGIN is switched off, so that _begin decides the kind
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:
                # another connection holds the file for the same switch (see core.wal), which
                # this one sees from its next transaction on; a retry would sleep on the
                # event loop, which this hook runs on
                if LOCKED not in str(exc):
                    raise
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        writes = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")
