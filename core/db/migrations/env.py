"""Alembic's entry point for the records database.

``core.db.migrate`` opens the connection (async engine, one transaction, under a lock) and
hands its synchronous face to Alembic in ``config.attributes["connection"]`` through
``AsyncConnection.run_sync``; everything here then runs inside that one transaction. Run from
the ``alembic`` command instead, with ``sqlalchemy.url`` set, it opens an engine of its own.

SQLite cannot alter most of a table in place, so operations are rendered as batches there
(copy into a new table, then swap). Offline mode (SQL scripts) is refused: revision 0002
moves data, which needs a live connection.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from core.db.engine import WRITE, create_engine
from core.db.schema import Base

target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(**{WRITE: True})
            async with connection.begin():
                await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit(
            "the records migrations move data and need a database: offline mode is not supported"
        )
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url, or run the migrations with equipwatch db upgrade")
    asyncio.run(_run_with_own_engine(url))


main()
