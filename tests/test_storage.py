"""The storage the site config chooses: SQLite straight, or the outbox in front of PostgreSQL and
an InfluxDB stream, with the store or the stream down while collection goes on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from collector.writer import BatchWriter, OutboxTarget, StoreTarget
from core.clock import SystemClock
from core.config import InfluxSettings, SiteConfig, StoreSettings, parse_config
from core.errors import ConfigError
from core.records import Reading
from core.secrets import postgres_dsn
from core.store import SqliteStore
from equipwatch.runtime import run_until
from equipwatch.storage import Storage, open_storage
from tests.pg import Cluster, postgres_cluster
from tests.support import sample_site, wait_for
from tests.vm import VictoriaMetrics, victoria_metrics

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def readings(start: int, count: int) -> list[Reading]:
    return [
        Reading("fridge-1", "temperature", 4.0 + (i % 10) / 10, T0 + timedelta(seconds=i))
        for i in range(start, start + count)
    ]


class Acks:
    """What the MQTT collector does with ``on_durable``: counts the messages it may ack."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@contextlib.asynccontextmanager
async def running(storage: Storage, site: SiteConfig) -> AsyncIterator[BatchWriter]:
    writer = BatchWriter(storage.target, batch_size=100, flush_interval=0.02)
    stop = asyncio.Event()
    tasks = [("writer", writer.run()), *storage.drains(site)]
    runner = asyncio.create_task(run_until(stop, tasks))
    try:
        yield writer
    finally:
        stop.set()
        await runner


# --- configuration ----------------------------------------------------------------------


def config_text(store: str) -> str:
    return f"""
store:
{store}
devices:
  - id: ups-1
    kind: ups
    source:
      protocol: modbus
      host: 127.0.0.1
      port: 5020
      registers:
        - {{name: load_pct, table: input, address: 0, type: uint16, kind: gauge}}
"""


@pytest.mark.parametrize(
    ("store", "where", "message"),
    [
        ("  backend: postgresql", "site.yaml:2:1: store:", "needs a postgresql section"),
        (
            "  backend: postgresql\n  postgresql: {dsn: 'postgresql://u:secret@db/x'}",
            "site.yaml:4:16: store.postgresql.dsn:",
            "password_env",
        ),
        (
            "  postgresql: {dsn: 'mysql://db/x'}",
            "site.yaml:3:16: store.postgresql.dsn:",
            "postgresql://",
        ),
        ("  retention: {raw_days: 400}", "site.yaml:3:3: store.retention:", "raw_days <="),
        (
            "  outbox: {max_records: 0}",
            "site.yaml:3:12: store.outbox.max_records:",
            "greater than or equal",
        ),
    ],
)
def test_bad_storage_settings_name_the_line_and_field(store: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text(store), "site.yaml")
    text = str(caught.value)
    assert where in text
    assert message in text


def test_password_comes_from_the_named_variable() -> None:
    site = parse_config(
        config_text(
            "  backend: postgresql\n"
            "  postgresql: {dsn: 'postgresql://equipwatch@db:5432/x', password_env: PGPW}"
        ),
        "site.yaml",
    )
    assert (
        postgres_dsn(site, {"PGPW": "s3/cr@t"}) == "postgresql://equipwatch:s3%2Fcr%40t@db:5432/x"
    )
    with pytest.raises(ConfigError, match="PGPW is not set"):
        postgres_dsn(site, {})


# --- SQLite alone -------------------------------------------------------------------------


async def test_sqlite_alone_commits_straight_into_the_store(tmp_path: Path) -> None:
    site = sample_site()
    async with open_storage(
        site,
        clock=SystemClock(),
        sqlite_path=tmp_path / "store.sqlite",
        outbox_path=tmp_path / "outbox.sqlite",
    ) as storage:
        assert isinstance(storage.target, StoreTarget)
        assert storage.outbox is None
        acks = Acks()
        async with running(storage, site) as writer:
            await writer.put(readings(0, 10), acks)
            await wait_for(lambda: asyncio.sleep(0, acks.count or None), timeout=10, what="the ack")
        stored = await storage.store.latest(["fridge-1"])
        assert [(v.metric, v.ts) for v in stored] == [("temperature", T0 + timedelta(seconds=9))]
    assert not (tmp_path / "outbox.sqlite").exists()


# --- PostgreSQL behind the outbox -----------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with postgres_cluster() as running_cluster:
        yield running_cluster


def postgres_site(dsn: str) -> SiteConfig:
    store = StoreSettings.model_validate({"backend": "postgresql", "postgresql": {"dsn": dsn}})
    return sample_site().model_copy(update={"store": store})


async def stored_count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM equipwatch.readings")
        return count
    finally:
        await conn.close()


async def test_postgres_outage_keeps_acking_and_loses_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    site = postgres_site(cluster.dsn)
    acks = Acks()
    async with open_storage(
        site, clock=SystemClock(), outbox_path=tmp_path / "outbox.sqlite"
    ) as storage:
        assert isinstance(storage.target, OutboxTarget)
        assert storage.outbox is not None
        async with running(storage, site) as writer:
            for batch in range(5):
                await writer.put(readings(batch * 100, 100), acks)
            await wait_for(
                lambda: _at_least(stored_count(cluster.dsn), 500), timeout=20, what="500 rows"
            )

            await asyncio.to_thread(cluster.stop)
            for batch in range(5, 15):
                await writer.put(readings(batch * 100, 100), acks)
            # the collector may ack while the store is down: the outbox holds the records
            await wait_for(
                lambda: asyncio.sleep(0, acks.count == 15 or None), timeout=20, what="15 acks"
            )
            stats = await storage.outbox.stats()
            assert stats.consumers["store"].depth == 1000
            ready, checks = await storage.checks()
            assert not ready
            assert checks["store"]["ok"] is False
            assert "failed" in checks["store"]["error"]
            assert checks["outbox"]["consumers"]["store"]["depth"] == 1000

            await asyncio.to_thread(cluster.start)
            await wait_for(
                lambda: _at_least(stored_count(cluster.dsn), 1500), timeout=60, what="the drain"
            )
            await wait_for(lambda: _depth_zero(storage), timeout=20, what="the outbox to empty")
        ready, checks = await storage.checks()
        assert ready
        assert checks["outbox"]["dropped_by_cap"] == 0
    assert await stored_count(cluster.dsn) == 1500
    assert stats.dropped_by_cap == stats.dropped_by_age == 0


async def test_postgres_down_at_start_up_does_not_stop_collection(
    cluster: Cluster, tmp_path: Path
) -> None:
    site = postgres_site(cluster.dsn)
    await asyncio.to_thread(cluster.stop)
    acks = Acks()
    async with open_storage(
        site, clock=SystemClock(), outbox_path=tmp_path / "outbox.sqlite"
    ) as storage:
        assert not storage.store_open
        async with running(storage, site) as writer:
            await writer.put(readings(0, 50), acks)
            await wait_for(lambda: asyncio.sleep(0, acks.count or None), timeout=20, what="the ack")
            await asyncio.to_thread(cluster.start)
            await wait_for(
                lambda: _at_least(stored_count(cluster.dsn), 50), timeout=60, what="the drain"
            )
        assert storage.store_open


# --- the InfluxDB stream ------------------------------------------------------------------


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    with victoria_metrics(tmp_path / "vm") as server:
        yield server


async def test_influx_stream_gets_every_reading_the_store_gets(
    vm: VictoriaMetrics, tmp_path: Path
) -> None:
    influx = InfluxSettings(url=vm.url, bucket="equipwatch", flush_interval=0.05)
    site = sample_site().model_copy(update={"influx": influx})
    async with open_storage(
        site,
        clock=SystemClock(),
        sqlite_path=tmp_path / "store.sqlite",
        outbox_path=tmp_path / "outbox.sqlite",
    ) as storage:
        assert storage.outbox is not None
        assert storage.outbox.consumers == ("store", "influx")
        async with running(storage, site) as writer:
            await writer.put(readings(0, 30), None)

            async def exported() -> int | None:
                series = await asyncio.to_thread(
                    vm.export, '{__name__="vaccine_fridge_temperature"}'
                )
                points = sum(len(s["values"]) for s in series)
                return points if points >= 30 else None

            assert await wait_for(exported, timeout=30, what="30 points in VictoriaMetrics") == 30
        assert isinstance(storage.store, SqliteStore)
        stored = await storage.store.readings("fridge-1", start=T0, end=T0 + timedelta(hours=1))
        assert len(stored) == 30


async def _at_least(count: Any, wanted: int) -> bool | None:
    try:
        return (await count) >= wanted or None
    except (OSError, asyncpg.PostgresError):
        return None


async def _depth_zero(storage: Storage) -> bool | None:
    assert storage.outbox is not None
    return (await storage.outbox.stats()).depth == 0 or None
