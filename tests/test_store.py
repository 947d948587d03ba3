"""The SQLite store: idempotent writes, latest values, statuses, due items and alarms."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.errors import StoreError
from core.records import FaultEvent, Reading, StatusChange
from core.store import SqliteStore

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "store.sqlite") as opened:
        yield opened


async def test_the_file_is_in_wal_mode(store: SqliteStore) -> None:
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_replayed_batch_creates_no_duplicates(store: SqliteStore) -> None:
    batch = [
        Reading("ac-1", "cycles", float(n), T0 + timedelta(seconds=n), raw=n) for n in range(5)
    ]
    await store.write(batch)
    await store.write(batch)
    stored = await store.readings("ac-1", start=T0, end=T0 + timedelta(hours=1))
    assert [r.value for r in stored] == [0, 1, 2, 3, 4]
    assert [r.raw for r in stored] == [0, 1, 2, 3, 4]


async def test_latest_keeps_the_newest_value_even_when_an_older_one_arrives_late(
    store: SqliteStore,
) -> None:
    await store.write([Reading("ac-1", "temp", 134.0, T0 + timedelta(minutes=5))])
    await store.write([Reading("ac-1", "temp", 20.0, T0)])
    [latest] = await store.latest(["ac-1"])
    assert (latest.value, latest.ts) == (134.0, T0 + timedelta(minutes=5))


async def test_latest_for_many_devices_at_once(store: SqliteStore) -> None:
    await store.write(
        [Reading(f"dev-{n}", "load", float(n), T0) for n in range(3)]
        + [Reading("dev-0", "temp", 21.5, T0)]
    )
    latest = await store.latest(["dev-0", "dev-2"])
    assert [(v.device_id, v.metric, v.value) for v in latest] == [
        ("dev-0", "load", 0.0),
        ("dev-0", "temp", 21.5),
        ("dev-2", "load", 2.0),
    ]


async def test_readings_range_is_half_open_and_filtered_by_metric(store: SqliteStore) -> None:
    await store.write(
        [Reading("ups", "load", float(m), T0 + timedelta(minutes=m)) for m in range(10)]
        + [Reading("ups", "temp", 25.0, T0 + timedelta(minutes=1))]
    )
    got = await store.readings(
        "ups", start=T0 + timedelta(minutes=2), end=T0 + timedelta(minutes=5), metric="load"
    )
    assert [r.value for r in got] == [2.0, 3.0, 4.0]


async def test_writes_leave_the_rollups_to_maintenance(store: SqliteStore) -> None:
    # the write path is raw and latest only; the rollups come with maintain_rollups
    await store.write(
        [Reading("ups", "load", float(m), T0 + timedelta(minutes=m)) for m in range(3)]
        + [Reading("ac-1", "temp", 20.0, T0)]
    )

    def rollup_rows() -> tuple[int, int, int]:
        with sqlite3.connect(store.path) as conn:
            counts = tuple(
                conn.execute(sql).fetchone()[0]
                for sql in (
                    "SELECT count(*) FROM readings_1m",
                    "SELECT count(*) FROM readings_1h",
                    "SELECT count(*) FROM latest WHERE pending_from_ms IS NOT NULL",
                )
            )
        conn.close()
        return counts

    assert rollup_rows() == (0, 0, 2)
    assert await store.maintain_rollups() == 2
    assert rollup_rows() == (4, 2, 0)


async def test_the_latest_status_change_wins(store: SqliteStore) -> None:
    await store.write(
        [
            StatusChange("ups", True, T0, "answered"),
            StatusChange("ups", False, T0 + timedelta(seconds=30), "timeout"),
            StatusChange("ac-1", True, T0, "data received"),
        ]
    )
    statuses = await store.statuses()
    assert not statuses["ups"].online
    assert statuses["ups"].reason == "timeout"
    assert statuses["ac-1"].online


async def test_faults_are_read_back_in_order_after_a_cursor(store: SqliteStore) -> None:
    await store.write(
        [FaultEvent("ac-1", "DOOR", T0), FaultEvent("ac-1", "DOOR", T0, active=False)]
    )
    events = await store.faults_after(0)
    assert [(e.code, e.active) for _, e in events] == [("DOOR", True), ("DOOR", False)]
    assert await store.faults_after(events[-1][0]) == []


async def test_a_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(StoreError, match="newer equipwatch"):
        async with SqliteStore(path):
            pass
