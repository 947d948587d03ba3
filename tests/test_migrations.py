"""Migrations of the records database, on SQLite and on a real PostgreSQL.

Covered: upgrade from an empty database; upgrade from the previous revision (0001) with rows
that stay there and usable; a store file written by the SQLite store before the records moved
(the real writer, unstamped) adopted as 0001; the head agreeing with the models (Alembic's
autogenerate diff is empty); downgrade and upgrade again; the start-up check (an empty database
is created, one behind or ahead is refused with the command to run); and the CLI.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, MetaData, String, text
from sqlalchemy.engine import Connection

from core.clock import ManualClock
from core.db import (
    RecordStore,
    StoredPlanState,
    WorkOrderDraft,
    current_revision,
    head_revision,
    prepare,
    records_url,
    require_current,
    upgrade,
)
from core.db.engine import create_engine
from core.db.migrate import downgrade, inspect_database
from core.db.schema import Base
from core.errors import DatabaseAhead, DatabaseBehind, SchemaMismatch
from core.notices import NoticeRecord
from core.records import Reading
from core.store import SqliteStore
from equipwatch.cli import main, records_ready
from tests.pg import drop_schema, postgres_dsn, schema_name

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
# the record tables as the SQLite store kept them before the records database (revision 0001)
LEGACY_STORE_RECORDS = """
CREATE TABLE plan_state (
    plan_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, started_ms INTEGER NOT NULL,
    cycle INTEGER NOT NULL, usage REAL NOT NULL, first_value REAL, last_raw REAL,
    last_ts_ms INTEGER, last_completed_ms INTEGER
);
CREATE TABLE maintenance_due (
    id INTEGER PRIMARY KEY AUTOINCREMENT, plan_id TEXT NOT NULL, device_id TEXT NOT NULL,
    cycle INTEGER NOT NULL, basis TEXT NOT NULL, detail TEXT NOT NULL, due_at_ms INTEGER,
    due_value REAL, detected_ms INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    UNIQUE (plan_id, cycle)
);
CREATE TABLE alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, type TEXT NOT NULL,
    severity TEXT NOT NULL, message TEXT NOT NULL, active INTEGER NOT NULL,
    acknowledged INTEGER NOT NULL DEFAULT 0, count INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX alarms_one_active ON alarms (device_id, type) WHERE active = 1;
CREATE TABLE notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, device_id TEXT NOT NULL,
    event_key TEXT NOT NULL UNIQUE, subject TEXT NOT NULL, created_ms INTEGER NOT NULL
);
CREATE TABLE cursors (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
"""


HEAD = "0003"

SITE = """
site: {{name: Test practice, timezone: UTC}}
store: {{path: {path}}}
mqtt: {{url: "mqtt://127.0.0.1:1883"}}
devices:
  - id: fridge-1
    kind: vaccine_fridge
    source: {{protocol: mqtt, topic: clinic/test/fridge-1, fields: [{{field: temp_c}}]}}
"""


@dataclass(frozen=True)
class Database:
    url: str
    schema: str | None

    @property
    def postgres(self) -> bool:
        return self.schema is not None


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    with postgres_dsn() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        yield Database(records_url(tmp_path / "records.sqlite"), None)
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    schema = schema_name(request.node.name)
    yield Database(records_url(dsn), schema)
    await drop_schema(dsn, schema)


def ms(minutes: float) -> int:
    return int((T0 + timedelta(minutes=minutes)).timestamp() * 1000)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def execute(db: Database, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(db.url, schema=db.schema)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


def site_file(tmp_path: Path, store: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(SITE.format(path=store))
    return path


# --- upgrading -------------------------------------------------------------------------------


async def test_upgrade_from_an_empty_database(database: Database) -> None:
    assert head_revision() == HEAD
    assert (await inspect_database(database.url, schema=database.schema)).kind == "empty"
    assert await current_revision(database.url, schema=database.schema) is None
    migration = await upgrade(database.url, schema=database.schema)
    assert (migration.before, migration.after) == (None, HEAD)
    assert await current_revision(database.url, schema=database.schema) == HEAD
    again = await upgrade(database.url, schema=database.schema)
    assert (again.before, again.after) == (HEAD, HEAD)
    async with RecordStore.open(database.url, schema=database.schema) as records:
        assert await records.plan_states() == {}
        assert (await records.alarms()).items == []


async def test_upgrade_from_0001_keeps_the_rows_and_they_stay_usable(database: Database) -> None:
    await upgrade(database.url, "0001", schema=database.schema)
    await execute(
        database,
        "INSERT INTO plan_state VALUES ('ac1-service', 'autoclave-1', :started, 2, 123.5, "
        "4000.0, 4123.5, :last_ts, :completed)",
        started=ms(0),
        last_ts=ms(50),
        completed=ms(30),
    )
    await execute(
        database,
        "INSERT INTO maintenance_due (plan_id, device_id, cycle, basis, detail, due_at_ms, "
        "due_value, detected_ms, done) VALUES "
        "('ac1-service', 'autoclave-1', 1, 'usage', 'every 500', NULL, 4500, :first, 1), "
        "('ac1-validation', 'autoclave-1', 1, 'calendar', '180 days', :due, NULL, :second, 0)",
        first=ms(10),
        due=ms(15),
        second=ms(20),
    )
    await execute(
        database,
        "INSERT INTO alarms (device_id, type, severity, message, active, acknowledged, count, "
        "first_seen_ms, last_seen_ms) VALUES "
        "('ups-1', 'fault:ON_BATTERY', 'major', 'on battery', 1, 0, 3, :a, :b), "
        "('ac-1', 'fault:DOOR', 'major', 'door open', 0, 0, 1, :a, :c)",
        a=ms(1),
        b=ms(5),
        c=ms(7),
    )
    await execute(
        database,
        "INSERT INTO notices (kind, device_id, event_key, subject, created_ms) VALUES "
        "('maintenance_due', 'autoclave-1', 'due:ac1-service:1', 'Maintenance due', :t)",
        t=ms(10),
    )
    await execute(database, "INSERT INTO cursors VALUES ('rules.faults', 17)")

    migration = await upgrade(database.url, schema=database.schema)
    assert (migration.before, migration.after) == ("0001", HEAD)

    async with RecordStore.open(
        database.url, schema=database.schema, clock=ManualClock(at(100))
    ) as records:
        plan = (await records.plan_states())["ac1-service"]
        assert (plan.device_id, plan.cycle, plan.updated_at) == ("autoclave-1", 2, at(50))
        assert plan.state == {
            "started": at(0).isoformat(),
            "usage": 123.5,
            "first_value": 4000.0,
            "last_raw": 4123.5,
            "last_ts": at(50).isoformat(),
            "last_completed": at(30).isoformat(),
        }
        dues = await records.maintenance_due(open_only=False)
        assert [(d.id, d.plan_id, d.closed_at) for d in dues] == [
            (1, "ac1-service", at(10)),
            (2, "ac1-validation", None),
        ]
        assert (dues[1].due_at, dues[1].detected, dues[0].due_value) == (at(15), at(20), 4500)
        assert [d.id for d in await records.maintenance_due()] == [2]
        new_due = await records.open_due("p", "d", 1, "usage", "", None, 1.0, at(60))
        assert new_due is not None
        assert new_due.id == 3  # ids go on after the carried-over ones

        active = (await records.alarms(active=True)).items
        assert [(a.id, a.count, a.first_seen, a.last_seen) for a in active] == [
            (1, 3, at(1), at(5))
        ]
        cleared = (await records.alarms(active=False)).items
        assert [(a.id, a.cleared_at, a.acknowledged) for a in cleared] == [(2, at(7), False)]
        repeat, new = await records.raise_alarm(
            "ups-1", "fault:ON_BATTERY", "major", "again", at(60)
        )
        assert (repeat.id, repeat.count, new) == (1, 4, False)
        fresh, new = await records.raise_alarm("ac-1", "fault:DOOR", "major", "door", at(61))
        assert (fresh.id, new) == (3, True)

        carried = (await records.notifications()).items
        assert [(n.event_key, n.channel, n.status, n.sent_at) for n in carried] == [
            ("due:ac1-service:1", "legacy", "sent", at(10))
        ]
        assert await records.unsent() == []  # no old news is sent after the upgrade
        notice = NoticeRecord(
            "due:ac1-service:1", "tech@x", "email", "maintenance_due", "warning", None, "s", "", T0
        )
        assert await records.claim(notice)
        assert await records.cursor("rules.faults") == 17
        await records.set_cursor("rules.faults", 2**33)
        assert await records.cursor("rules.faults") == 2**33


async def test_a_store_file_from_before_is_adopted_as_0001(tmp_path: Path) -> None:
    """Before the records database, the SQLite store itself kept the record tables of revision
    0001 in its file, unstamped: such a file is recognised and upgraded with its rows."""
    path = tmp_path / "equipwatch.sqlite"
    async with SqliteStore(path) as store:
        await store.write([Reading("autoclave-1", "cycles_total", 4500.0, at(0))])
    with sqlite3.connect(path) as raw:
        raw.executescript(LEGACY_STORE_RECORDS)
        raw.execute(
            "INSERT INTO plan_state (plan_id, device_id, started_ms, cycle, usage) "
            "VALUES ('ac1-service', 'autoclave-1', ?, 1, 12.0)",
            (ms(0),),
        )
        raw.execute(
            "INSERT INTO maintenance_due (plan_id, device_id, cycle, basis, detail, due_value, "
            "detected_ms) VALUES ('ac1-service', 'autoclave-1', 1, 'usage', 'every 500 cycles', "
            "4500.0, ?)",
            (ms(3),),
        )
        raw.execute(
            "INSERT INTO notices (kind, device_id, event_key, subject, created_ms) VALUES "
            "('maintenance_due', 'autoclave-1', 'due:ac1-service:1', "
            "'Maintenance due: Autoclave service', ?)",
            (ms(3),),
        )
        raw.execute(
            "INSERT INTO alarms (device_id, type, severity, message, active, count, "
            "first_seen_ms, last_seen_ms) VALUES ('autoclave-1', 'fault:DOOR', 'major', 'm', "
            "1, 1, ?, ?)",
            (ms(2), ms(2)),
        )
        raw.execute("INSERT INTO cursors VALUES ('rules.faults', 9)")
    url = records_url(path)
    config = site_file(tmp_path, path)
    state = await inspect_database(url)
    assert (state.kind, state.revision) == ("legacy", "0001")
    with pytest.raises(DatabaseBehind) as behind:
        await require_current(url, config)
    assert str(behind.value) == (
        f"the records database {path} is at revision 0001 (the store's tables, not yet "
        f"stamped) but this equipwatch needs {HEAD}; back it up, then run: "
        f"equipwatch db upgrade --config {config}"
    )
    migration = await upgrade(url)
    assert (migration.before, migration.after) == ("0001", HEAD)
    async with RecordStore.open(url) as records:
        assert (await records.plan_states())["ac1-service"].state["usage"] == 12.0
        assert [d.detected for d in await records.maintenance_due()] == [at(3)]
        assert [a.type for a in (await records.alarms(active=True)).items] == ["fault:DOOR"]
        assert [n.subject for n in (await records.notifications()).items] == [
            "Maintenance due: Autoclave service"
        ]
        assert await records.cursor("rules.faults") == 9
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM readings").fetchone() == (1,)


async def test_the_head_matches_the_models(database: Database) -> None:
    await upgrade(database.url, schema=database.schema)

    def differences(connection: Connection, metadata: MetaData) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "target_metadata": metadata}
        )
        return list(compare_metadata(context, metadata))

    # the comparison can tell: the models with one column more are not the database
    changed = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["devices"].append_column(Column("asset_tag", String))

    engine = create_engine(database.url, schema=database.schema)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences, Base.metadata) == []
            diff = await connection.run_sync(differences, changed)
    finally:
        await engine.dispose()
    assert [(d[0], d[2], d[3].name) for d in diff] == [("add_column", "devices", "asset_tag")]


async def test_downgrade_to_0001_and_back_keeps_what_0001_can_hold(database: Database) -> None:
    await upgrade(database.url, schema=database.schema)
    async with RecordStore.open(database.url, schema=database.schema) as records:
        state = {"started": at(0).isoformat(), "usage": 5.0, "first_value": None}
        state |= {"last_raw": None, "last_ts": None, "last_completed": None}
        await records.save_plan_states([StoredPlanState("p1", "d1", 3, state, at(0))])
        await records.open_due("p1", "d1", 3, "usage", "x", None, 5.0, at(1))
        await records.close_due("p1", 3, at(2))
        alarm, _ = await records.raise_alarm("d1", "fault:E", "critical", "e", at(3))
        await records.acknowledge_alarm(alarm.id, "kim", at(4))
        for recipient in ("a@x", "b@x"):
            await records.claim(
                NoticeRecord("due:p1:3", recipient, "email", "due", "warning", "d1", "s", "", T0)
            )
        await records.open_work_order(
            WorkOrderDraft(kind="pm", device_id="d1", title="t", plan_id="p1", cycle=3), "x"
        )
    back = await downgrade(database.url, "0001", schema=database.schema)
    assert (back.before, back.after) == (HEAD, "0001")
    assert await execute(database, "SELECT cycle, usage, started_ms FROM plan_state") == [
        (3, 5.0, ms(0))
    ]
    assert await execute(database, "SELECT done, detected_ms FROM maintenance_due") == [(1, ms(1))]
    assert await execute(database, "SELECT active, acknowledged FROM alarms") == [(1, 1)]
    assert await execute(database, "SELECT event_key FROM notices") == [("due:p1:3",)]
    await upgrade(database.url, schema=database.schema)
    async with RecordStore.open(database.url, schema=database.schema) as records:
        assert (await records.plan_states())["p1"].state == state
        assert [d.closed_at for d in await records.maintenance_due(open_only=False)] == [at(1)]
        assert (await records.work_orders()).items == []
    gone = await downgrade(database.url, "base", schema=database.schema)
    assert gone.after == "base"
    assert (await inspect_database(database.url, schema=database.schema)).kind == "empty"


async def test_two_processes_starting_together_migrate_once(database: Database) -> None:
    results = await asyncio.gather(
        *(prepare(database.url, None, schema=database.schema) for _ in range(3))
    )
    created = [r for r in results if r is not None]
    assert [(m.before, m.after) for m in created] == [(None, HEAD)]
    assert await current_revision(database.url, schema=database.schema) == HEAD


# --- refusing ------------------------------------------------------------------------------


async def test_start_up_creates_an_empty_database_and_refuses_one_behind(
    database: Database, tmp_path: Path
) -> None:
    config = tmp_path / "site.yaml"
    with pytest.raises(DatabaseBehind) as empty:
        await require_current(database.url, config, schema=database.schema)
    assert empty.value.revision is None
    assert "holds no records yet" in str(empty.value)
    created = await prepare(database.url, config, schema=database.schema)
    assert created is not None
    assert (created.before, created.after) == (None, HEAD)
    assert await prepare(database.url, config, schema=database.schema) is None
    await require_current(database.url, config, schema=database.schema)

    await downgrade(database.url, "0001", schema=database.schema)
    with pytest.raises(DatabaseBehind) as behind:
        await prepare(database.url, config, schema=database.schema)
    message = str(behind.value)
    assert (behind.value.revision, behind.value.head) == ("0001", HEAD)
    assert f"is at revision 0001 but this equipwatch needs {HEAD}" in message
    assert message.endswith(f"run: equipwatch db upgrade --config {config}")
    with pytest.raises(DatabaseBehind):
        await RecordStore.connect(database.url, schema=database.schema)
    assert await current_revision(database.url, schema=database.schema) == "0001"


async def test_a_database_from_a_newer_version_is_refused(database: Database) -> None:
    await upgrade(database.url, schema=database.schema)
    await execute(database, "UPDATE alembic_version SET version_num = '0099'")
    for check in (
        require_current(database.url, None, schema=database.schema),
        upgrade(database.url, schema=database.schema),
    ):
        with pytest.raises(DatabaseAhead, match=r"revision 0099, which this equipwatch does not"):
            await check


async def test_tables_equipwatch_did_not_create_are_refused(database: Database) -> None:
    if database.postgres:
        await execute(database, f'CREATE SCHEMA "{database.schema}"')
    await execute(database, "CREATE TABLE alarms (id INTEGER PRIMARY KEY, what TEXT)")
    with pytest.raises(SchemaMismatch, match=r"has record tables \(alarms\) but no migration"):
        await upgrade(database.url, schema=database.schema)
    with pytest.raises(SchemaMismatch, match="not the store's"):
        await prepare(database.url, None, schema=database.schema)


# --- the command line ----------------------------------------------------------------------


def test_db_upgrade_and_current_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "data" / "equipwatch.sqlite"
    config = site_file(tmp_path, store)
    assert main(["db", "current", "--config", str(config)]) == 0
    assert capsys.readouterr().out == (
        f"records database {store}: no records yet; this equipwatch needs {HEAD}\n"
    )
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"records database {store}: empty -> {HEAD}\n"
    assert main(["db", "upgrade", "--url", str(store)]) == 0
    assert capsys.readouterr().out == f"records database {store}: {HEAD} -> {HEAD}\n"
    assert main(["db", "current", "--url", str(store)]) == 0
    assert f": {HEAD}; this equipwatch needs {HEAD}" in capsys.readouterr().out
    assert main(["db", "current", "--url", "mysql://x/y"]) == 2
    assert "mysql:// is not a records database" in capsys.readouterr().err


async def test_run_refuses_a_database_at_0001_with_the_command_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "equipwatch.sqlite"
    config = site_file(tmp_path, store)
    url = records_url(store)
    await upgrade(url, "0001")
    assert not await records_ready(url, config)
    err = capsys.readouterr().err
    assert err == (
        f"equipwatch: the records database {store} is at revision 0001 but this equipwatch "
        f"needs {HEAD}; back it up, then run: equipwatch db upgrade --config {config}\n"
    )
    fresh = records_url(tmp_path / "fresh.sqlite")
    assert await records_ready(fresh, config)  # an empty one is created at once
    assert await current_revision(fresh) == HEAD
    assert await records_ready(fresh, config)
