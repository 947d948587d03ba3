"""Bringing the records database to the revision the code needs, and refusing one that is not.

What a database can be, as ``inspect_database`` sees it:
- ``empty``: none of the record tables and no revision. The time-series tables may be there
  (by default the records share the store's SQLite file), so "empty" is about records only.
- ``legacy``: the record tables the SQLite store kept before this package, unstamped. They
  are exactly revision 0001 (see that migration), so an upgrade stamps 0001 and goes on.
- ``versioned``: Alembic's ``alembic_version`` names the revision.
- ``unrecognised``: record tables without a revision that are not the store's: refused.

At start-up (``prepare``) an empty database is upgraded to the head at once, so a fresh
install or ``make demo`` needs no extra step; one that is behind is refused with the exact
command to run, since a migration that moves data should be a deliberate act (after a backup)
and not a side effect of a restart; one at a revision this code does not know was written by
a newer equipwatch and is refused too. ``RecordStore.open`` refuses anything but the head.

Every upgrade runs in one transaction that holds the database's write lock (SQLite: BEGIN
IMMEDIATE; PostgreSQL: a transaction-level advisory lock), so two processes starting together
migrate once, and a failed migration leaves the database as it was.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db.engine import WRITE, create_engine, describe, quote_ident, sqlite_file
from core.db.models import Migration
from core.errors import DatabaseAhead, DatabaseBehind, SchemaMismatch, StoreError

__all__ = [
    "BASELINE",
    "LEGACY_TABLES",
    "RECORD_TABLES",
    "DatabaseState",
    "current_revision",
    "downgrade",
    "head_revision",
    "inspect_database",
    "prepare",
    "require_current",
    "upgrade",
    "upgrade_command",
]

MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001"
VERSION_TABLE = "alembic_version"
LEGACY_TABLES = frozenset({"plan_state", "maintenance_due", "alarms", "notices", "cursors"})
RECORD_TABLES = LEGACY_TABLES | {"devices", "work_orders", "notifications", "audit_log"}

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class DatabaseState:
    """Where a records database stands; ``revision`` is the stamped one, or 0001 for the
    store's unstamped tables, or None when it holds no records."""

    kind: Literal["empty", "legacy", "versioned", "unrecognised"]
    revision: str | None
    tables: frozenset[str]


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    head = _script().get_current_head()
    assert head is not None, "the records migrations have no head"
    return head


def _known(revision: str) -> bool:
    try:
        return _script().get_revision(revision) is not None
    except CommandError:
        return False


def _state(connection: Connection) -> DatabaseState:
    tables = frozenset(inspect(connection).get_table_names())
    records = tables & RECORD_TABLES
    if VERSION_TABLE in tables:
        revision = MigrationContext.configure(connection).get_current_revision()
        if revision is not None or records:
            return DatabaseState("versioned", revision, records)
    if not records:
        return DatabaseState("empty", None, records)
    if records == LEGACY_TABLES:
        columns = {column["name"] for column in inspect(connection).get_columns("plan_state")}
        if "started_ms" in columns:
            return DatabaseState("legacy", BASELINE, records)
    return DatabaseState("unrecognised", None, records)


def upgrade_command(url: str, config_file: Path | None) -> str:
    """The command that upgrades this database, for messages."""
    if config_file is not None:
        return f"equipwatch db upgrade --config {config_file}"
    return f"equipwatch db upgrade --url {describe(url)}"


async def _with_connection(
    url: str, schema: str | None, work: Callable[[Connection], _T], *, writes: bool
) -> _T:
    engine = create_engine(url, schema=schema)
    try:
        return await _run(engine, url, schema, work, writes=writes)
    finally:
        await engine.dispose()


async def _run(
    engine: AsyncEngine,
    url: str,
    schema: str | None,
    work: Callable[[Connection], _T],
    *,
    writes: bool,
) -> _T:
    try:
        async with engine.connect() as connection:
            if writes:
                await connection.execution_options(**{WRITE: True})
            async with connection.begin():
                if writes and connection.dialect.name == "postgresql":
                    await connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(schema)}
                    )
                    if schema is not None:
                        await connection.execute(
                            text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
                        )
                return await connection.run_sync(work)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"records database {describe(url, schema)}: {exc}") from exc


def _lock_key(schema: str | None) -> int:
    """One advisory lock per schema: migrations of different schemas do not wait on each
    other."""
    digest = hashlib.sha256(f"equipwatch.records:{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def inspect_database(url: str, *, schema: str | None = None) -> DatabaseState:
    """Where the database stands (see the module's notes); a SQLite file that does not exist
    is empty, and looking does not create it."""
    file = sqlite_file(url)
    if file is not None and not file.exists():
        return DatabaseState("empty", None, frozenset())
    return await _with_connection(url, schema, _state, writes=False)


async def current_revision(url: str, *, schema: str | None = None) -> str | None:
    """The database's revision: the stamped one, 0001 for the store's unstamped record tables,
    None when it holds no records (or tables this code does not recognise)."""
    return (await inspect_database(url, schema=schema)).revision


def _refuse_unknown(state: DatabaseState, where: str, head: str) -> None:
    if state.kind == "unrecognised":
        raise SchemaMismatch(
            f"the records database {where} has record tables "
            f"({', '.join(sorted(state.tables))}) but no migration revision, and they are not "
            "the store's: use an empty database or the one equipwatch created",
            revision=None,
            head=head,
        )
    if state.revision is None and state.kind == "versioned":
        raise SchemaMismatch(
            f"the records database {where} has an empty {VERSION_TABLE} table next to record "
            "tables: it was not created by equipwatch",
            revision=None,
            head=head,
        )
    if state.revision is not None and not _known(state.revision):
        raise DatabaseAhead(
            f"the records database {where} is at revision {state.revision}, which this "
            f"equipwatch does not know (it needs {head}): a newer equipwatch wrote it; run that "
            "version, or restore the backup taken before it upgraded",
            revision=state.revision,
            head=head,
        )


async def upgrade(url: str, revision: str = "head", *, schema: str | None = None) -> Migration:
    """Apply the migrations up to ``revision`` (the head by default) in one transaction; the
    store's unstamped record tables are stamped 0001 first. What it did comes back."""
    migration = await _upgrade(url, revision, schema, only_if_empty=False)
    assert migration is not None
    return migration


async def _upgrade(
    url: str, revision: str, schema: str | None, *, only_if_empty: bool
) -> Migration | None:
    head = head_revision()
    where = describe(url, schema)

    def work(connection: Connection) -> Migration | None:
        state = _state(connection)
        if only_if_empty and state.kind != "empty":
            return None
        _refuse_unknown(state, where, head)
        config = _config()
        config.attributes["connection"] = connection
        if state.kind == "legacy":
            command.stamp(config, BASELINE)
        command.upgrade(config, revision)
        after = MigrationContext.configure(connection).get_current_revision()
        assert after is not None
        return Migration(before=state.revision, after=after)

    return await _with_connection(url, schema, work, writes=True)


async def downgrade(url: str, revision: str, *, schema: str | None = None) -> Migration:
    """Go back to ``revision`` (``base`` removes every record table); loses what the older
    schema cannot hold (see each migration)."""
    head = head_revision()
    where = describe(url, schema)

    def work(connection: Connection) -> Migration:
        state = _state(connection)
        _refuse_unknown(state, where, head)
        config = _config()
        config.attributes["connection"] = connection
        if state.kind == "legacy":
            command.stamp(config, BASELINE)
        command.downgrade(config, revision)
        after = MigrationContext.configure(connection).get_current_revision()
        return Migration(before=state.revision, after=after or "base")

    return await _with_connection(url, schema, work, writes=True)


def _check(state: DatabaseState, url: str, schema: str | None, config_file: Path | None) -> None:
    head = head_revision()
    where = describe(url, schema)
    _refuse_unknown(state, where, head)
    if state.revision == head:
        return
    run = upgrade_command(url, config_file)
    if state.kind == "empty":
        raise DatabaseBehind(
            f"the records database {where} holds no records yet (this equipwatch needs "
            f"revision {head}); run: {run}",
            revision=None,
            head=head,
        )
    stamped = "" if state.kind == "versioned" else " (the store's tables, not yet stamped)"
    raise DatabaseBehind(
        f"the records database {where} is at revision {state.revision}{stamped} but this "
        f"equipwatch needs {head}; back it up, then run: {run}",
        revision=state.revision,
        head=head,
    )


async def require_current(url: str, config_file: Path | None, *, schema: str | None = None) -> None:
    """Refuse a records database that is not at the head: ``DatabaseBehind`` (its message
    names the revision, the head and the command to run), ``DatabaseAhead`` for a revision this
    code does not know, ``SchemaMismatch`` for tables it does not recognise."""
    _check(await inspect_database(url, schema=schema), url, schema, config_file)


async def prepare(
    url: str, config_file: Path | None, *, schema: str | None = None
) -> Migration | None:
    """The start-up check: a database without records is upgraded to the head (and what was
    done comes back); any other must already be at the head (see ``require_current``)."""
    state = await inspect_database(url, schema=schema)
    if state.kind == "empty":
        # decided again under the write lock: another process may have created them meanwhile
        migration = await _upgrade(url, "head", schema, only_if_empty=True)
        if migration is not None:
            return migration
        state = await inspect_database(url, schema=schema)
    _check(state, url, schema, config_file)
    return None
