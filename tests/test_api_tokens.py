"""API tokens in the records, on SQLite and on a real PostgreSQL: made once, stored hashed,
checked, revoked; and the ``equipwatch token`` commands."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from api.app import create_app
from core.clock import ManualClock
from core.db import RecordStore, records_url, upgrade
from core.db.engine import create_engine
from core.db.records import Principal
from core.errors import InvalidRecord, NotFound
from core.store import SqliteStore
from equipwatch.cli import main
from tests.pg import drop_schema, postgres_dsn, schema_name
from tests.support import sample_site

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

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


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    with postgres_dsn() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        db = Database(records_url(tmp_path / "records.sqlite"), None)
        await upgrade(db.url)
        yield db
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    schema = schema_name(request.node.name)
    db = Database(records_url(dsn), schema)
    await upgrade(db.url, schema=schema)
    yield db
    await drop_schema(dsn, schema)


async def stored(db: Database) -> list[tuple[str, str, str]]:
    engine = create_engine(db.url, schema=db.schema)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT name, lookup, secret_hash FROM api_tokens ORDER BY id")
            )
            return [(row.name, row.lookup, row.secret_hash) for row in rows]
    finally:
        await engine.dispose()


async def test_a_token_is_shown_once_stored_hashed_and_checked(database: Database) -> None:
    clock = ManualClock(T0)
    async with RecordStore.open(database.url, schema=database.schema, clock=clock) as records:
        token_id, token = await records.create_token("tom", "technician")
        other_id, other = await records.create_token("cmms", "integration")
        assert other_id == token_id + 1
        assert token.startswith("ew_")
        assert len(token) >= 3 + 12 + 1 + 43  # prefix, lookup, separator, 256 random bits
        assert await records.verify_token(token) == Principal("tom", "technician")
        assert await records.verify_token(other) == Principal("cmms", "integration")
        name, lookup, secret_hash = (await stored(database))[0]
        secret = token.removeprefix(f"ew_{lookup}_")
        assert name == "tom"
        assert secret_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in secret_hash  # the secret itself is nowhere in the database
        # the right lookup with another secret, and tokens that are not tokens at all
        assert await records.verify_token(f"ew_{lookup}_{'x' * len(secret)}") is None
        for nonsense in ("", "ew_", "ew_short", f"ew_{lookup}", "Bearer x", token[:-1]):
            assert await records.verify_token(nonsense) is None

        clock.advance(timedelta(hours=1))
        revoked = await records.revoke_token(name="tom")
        assert revoked.revoked_at == T0 + timedelta(hours=1)
        assert await records.verify_token(token) is None
        again = await records.revoke_token(token_id=token_id)
        assert again.revoked_at == revoked.revoked_at  # the first revocation stands
        assert [(t.name, t.revoked_at is None) for t in await records.tokens()] == [
            ("tom", False),
            ("cmms", True),
        ]
        audit = (await records.audit_log(entity="api_token")).items
        assert [(e.entity_id, e.action) for e in audit] == [
            (str(token_id), "created"),
            (str(other_id), "created"),
            (str(token_id), "revoked"),
        ]
        assert all("secret_hash" not in (e.after or {}) for e in audit)


async def test_tokens_refuse_what_they_cannot_be(database: Database) -> None:
    async with RecordStore.open(database.url, schema=database.schema) as records:
        await records.create_token("tom", "technician")
        with pytest.raises(InvalidRecord, match=r"name: a token named 'tom' exists already"):
            await records.create_token("tom", "admin")
        with pytest.raises(InvalidRecord, match=r"role: 'root' is not one of technician"):
            await records.create_token("eve", "root")
        with pytest.raises(InvalidRecord, match="name: must not be empty"):
            await records.create_token(" ", "admin")
        with pytest.raises(NotFound, match="no token named 'nobody'"):
            await records.revoke_token(name="nobody")
        with pytest.raises(NotFound, match="no token 99"):
            await records.revoke_token(token_id=99)
        with pytest.raises(InvalidRecord, match="by its id or by its name"):
            await records.revoke_token()


def test_token_commands_create_list_and_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "data" / "equipwatch.sqlite"
    config = tmp_path / "site.yaml"
    config.write_text(SITE.format(path=store))
    assert (
        main(["token", "create", "--config", str(config), "--role", "admin", "--name", "ada"]) == 0
    )
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("ew_")
    assert "it is shown only now" in out.err
    assert (
        main(["token", "create", "--config", str(config), "--role", "manager", "--name", "ada"])
        == 2
    )
    assert "a token named 'ada' exists already" in capsys.readouterr().err
    assert main(["token", "list", "--config", str(config)]) == 0
    listing = capsys.readouterr().out
    assert listing.split() == ["1", "ada", "admin", "created", *listing.split()[4:6], "active"]
    assert token not in listing

    async def me() -> httpx.Response:
        async with SqliteStore(store) as series, RecordStore.open(records_url(store)) as records:
            app = create_app(
                site=sample_site(), series=series, records=records, clock=ManualClock(T0)
            )
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                return await http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})

    assert asyncio.run(me()).json() == {"name": "ada", "role": "admin"}
    assert main(["token", "revoke", "--config", str(config), "--name", "ada"]) == 0
    assert capsys.readouterr().out == "token 1 (ada) is revoked\n"
    assert asyncio.run(me()).status_code == 401
    assert main(["token", "revoke", "--config", str(config), "--id", "7"]) == 2
    assert "no token 7" in capsys.readouterr().err
