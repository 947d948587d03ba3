"""The reads the rules and the API make beyond the time-series contract (raw readings, the
rules' feeds, device statuses, dead letters), the same on SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.records import DeadLetter, FaultEvent, Quality, Reading, StatusChange
from core.store import PostgresStore, SqliteStore
from tests.pg import drop_schema, postgres_dsn, schema_name
from tests.support import wait_for

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

Store = SqliteStore | PostgresStore


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    with postgres_dsn() as dsn:
        yield dsn


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        async with SqliteStore(tmp_path / "store.sqlite") as opened:
            yield opened
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    schema = schema_name(request.node.name)
    try:
        async with PostgresStore(dsn, schema=schema) as opened:
            yield opened
    finally:
        await drop_schema(dsn, schema)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def test_readings_in_a_range_and_after_a_time_keep_counter_widths(store: Store) -> None:
    await store.write(
        [
            Reading("ups-1", "line_fail_count", 65534, at(0), raw=65534, width=16),
            Reading("ups-1", "line_fail_count", 3, at(1), raw=3, width=16),
            Reading("ups-1", "load_pct", 41.5, at(1), Quality.UNCERTAIN),
            Reading("ups-1", "load_pct", 42.0, at(2)),
            Reading("ups-2", "load_pct", 10.0, at(1)),
        ]
    )
    window = await store.readings("ups-1", start=at(1), end=at(3))
    assert [(r.metric, r.ts, r.value) for r in window] == [
        ("line_fail_count", at(1), 3),
        ("load_pct", at(1), 41.5),
        ("load_pct", at(2), 42.0),
    ]
    assert window[1].quality is Quality.UNCERTAIN
    only = await store.readings("ups-1", start=at(0), end=at(3), metric="load_pct", limit=1)
    assert [r.value for r in only] == [41.5]

    fed = await store.readings_after("ups-1", "line_fail_count", None)
    assert [(r.raw, r.width) for r in fed] == [(65534, 16), (3, 16)]
    assert [r.value for r in await store.readings_after("ups-1", "line_fail_count", at(0))] == [3]


async def test_statuses_are_each_devices_newest_change(store: Store) -> None:
    await store.write(
        [
            StatusChange("pump-1", True, at(0), "data received"),
            StatusChange("pump-1", False, at(5), "silent for 30s"),
            StatusChange("ups-1", True, at(3), "answered"),
        ]
    )
    statuses = await store.statuses()
    assert {d: (s.online, s.since, s.reason) for d, s in statuses.items()} == {
        "pump-1": (False, at(5), "silent for 30s"),
        "ups-1": (True, at(3), "answered"),
    }


async def test_the_fault_feed_hands_out_each_event_once_in_stored_order(store: Store) -> None:
    await store.write([FaultEvent("autoclave-1", "E12", at(0), True)])
    await store.write(
        [
            FaultEvent("autoclave-1", "E12", at(4), False),
            FaultEvent("xray-1", "TUBE_ARC", at(2), True),
        ]
    )

    async def all_three() -> list[tuple[int, FaultEvent]] | None:
        # PostgreSQL holds each event back until it has settled (see faults_after)
        found = await store.faults_after(0)
        return found if len(found) == 3 else None

    feed = await wait_for(all_three, timeout=15, what="three fault events in the feed")
    assert (feed[0][1].code, feed[0][1].active) == ("E12", True)
    ids = [i for i, _ in feed]
    assert ids == sorted(ids)
    assert await store.faults_after(ids[-1]) == []
    assert [e for _, e in await store.faults_after(ids[0])] == [e for _, e in feed[1:]]


async def test_dead_letters_newest_first(store: Store) -> None:
    letters = [
        DeadLetter("mqtt", "clinic/x/devices/a/telemetry", "{", "bad_json", "line 1", at(i))
        for i in range(3)
    ]
    await store.write_dead_letters(letters)
    stored = await store.dead_letters(limit=2)
    assert [(d.ts, d.reason, d.payload) for d in stored] == [
        (at(2), "bad_json", "{"),
        (at(1), "bad_json", "{"),
    ]
    assert stored[0].id > stored[1].id
