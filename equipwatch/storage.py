"""Where the collectors' records go, as the site config chooses.

- SQLite only (the embedded default): the writer commits straight into the store file. An
  outbox beside it would be a second SQLite file on the same disk, with no outage to bridge.
- PostgreSQL, or any InfluxDB stream: the writer commits into the on-disk outbox, and one
  drain per destination ("store", "influx") hands the records on in order, retrying while
  that destination is down. The MQTT collector acknowledges a message once the outbox commit
  holds it, so neither outage loses an acknowledged message.

A PostgreSQL server that is down at start-up does not stop collection: the store drain opens
the connection itself and keeps retrying; the API reports not ready meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from collector.writer import BatchTarget, OutboxTarget, StoreTarget
from core.clock import Clock
from core.config import SiteConfig
from core.errors import StoreError
from core.records import DeadLetter, Record
from core.secrets import from_environment, postgres_dsn
from core.store import PostgresStore, SqliteStore
from core.store.influx import InfluxSink
from core.store.outbox import Outbox, OutboxItem, OutboxStats

__all__ = ["Storage", "open_storage"]

log = logging.getLogger(__name__)

STORE = "store"
INFLUX = "influx"
READY_TIMEOUT = 2.0  # seconds a readiness probe waits for the store


@dataclass
class Storage:
    """The time-series store and what stands in front of it."""

    store: SqliteStore | PostgresStore
    target: BatchTarget
    outbox: Outbox | None = None
    influx: InfluxSink | None = None
    _store_open: bool = True

    @property
    def store_open(self) -> bool:
        return self._store_open

    async def outbox_stats(self) -> OutboxStats | None:
        return None if self.outbox is None else await self.outbox.stats()

    async def checks(self) -> tuple[bool, dict[str, Any]]:
        """For /readyz: the store must answer; the outbox and the stream are reported (a
        stream that is down does not stop the practice's own work, and drops are counted
        where a monitor can alert on them)."""
        backend = "postgresql" if isinstance(self.store, PostgresStore) else "sqlite"
        store: dict[str, Any] = {"ok": False, "backend": backend}
        if not self._store_open:
            store["error"] = "not connected yet; records wait in the outbox"
        else:
            try:
                async with asyncio.timeout(READY_TIMEOUT):
                    await self.store.latest([])
                store["ok"] = True
            except (StoreError, TimeoutError) as exc:
                store["error"] = str(exc) or f"no answer within {READY_TIMEOUT:g}s"
        checks: dict[str, Any] = {"store": store}
        stats = await self.outbox_stats()
        if stats is not None:
            checks["outbox"] = {
                "ok": True,
                "records": stats.records,
                "dropped_by_cap": stats.dropped_by_cap,
                "dropped_by_age": stats.dropped_by_age,
                "consumers": {
                    name: {"depth": c.depth, "oldest_age_seconds": c.oldest_age_seconds}
                    for name, c in stats.consumers.items()
                },
            }
        if self.influx is not None:
            checks["influx"] = {
                "ok": True,
                "points_written": self.influx.points_written,
                "points_dropped": dict(self.influx.dropped),
            }
        return store["ok"], checks

    def drains(self, site: SiteConfig) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The outbox's drains, one per destination; run until cancelled."""
        if self.outbox is None:
            return []
        drains: list[tuple[str, Coroutine[Any, Any, None]]] = [
            (f"outbox.drain[{STORE}]", self.outbox.drain(STORE, self._hand_to_store))
        ]
        if self.influx is not None:
            assert site.influx is not None
            drain = self.outbox.drain(
                INFLUX,
                self.influx.write,
                limit=site.influx.batch_size,
                linger=site.influx.flush_interval,
            )
            drains.append((f"outbox.drain[{INFLUX}]", drain))
        return drains

    async def _hand_to_store(self, items: Sequence[OutboxItem]) -> None:
        if not self._store_open:
            await self.store.open()  # raises StoreError while the server is down: retried
            self._store_open = True
            log.info("store: connected")
        letters = [item for item in items if isinstance(item, DeadLetter)]
        records: list[Record] = [item for item in items if not isinstance(item, DeadLetter)]
        await StoreTarget(self.store).write_batch(records, letters)

    async def retention(self, site: SiteConfig, clock: Clock) -> None:
        """Apply the retention periods now and then at the configured interval. A failed run
        is logged and tried again at the next one: retention is housekeeping, never a reason
        to stop collecting."""
        settings = site.store.retention
        while True:
            if self._store_open:
                try:
                    run = await self.store.apply_retention(
                        clock.now(),
                        raw_days=settings.raw_days,
                        minute_days=settings.minute_days,
                        hour_days=settings.hour_days,
                    )
                    deleted = run.raw_deleted + run.minute_deleted + run.hour_deleted
                    if deleted:
                        log.info(
                            "retention: deleted %d raw, %d minute, %d hour rows",
                            run.raw_deleted,
                            run.minute_deleted,
                            run.hour_deleted,
                        )
                except StoreError as exc:
                    log.warning("retention: %s; trying again in %s", exc, _every(settings.every))
            await asyncio.sleep(settings.every)


def _every(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


@contextlib.asynccontextmanager
async def open_storage(
    site: SiteConfig,
    *,
    clock: Clock,
    sqlite_path: Path | None = None,
    outbox_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    collecting: bool = True,
) -> AsyncIterator[Storage]:
    """Open the store (and the outbox and InfluxDB sink when configured) for ``site``.

    ``sqlite_path`` and ``outbox_path`` override the config's files (the demo keeps its own).
    A process that does not collect (the rules or API role) opens the store only: the outbox
    and the stream belong to the collectors.
    """
    settings = site.store
    retention = settings.retention
    store: SqliteStore | PostgresStore
    if settings.backend == "postgresql":
        store = PostgresStore(
            postgres_dsn(site, environ),
            raw_days=retention.raw_days,
            minute_days=retention.minute_days,
            hour_days=retention.hour_days,
        )
    else:
        store = SqliteStore(sqlite_path or settings.path)
    influx = None
    if site.influx is not None and collecting:
        influx = InfluxSink(
            site.influx.url,
            token=(
                ""
                if site.influx.token_env is None
                else from_environment(site.influx.token_env, "influx.token_env", environ)
            ),
            org=site.influx.org,
            bucket=site.influx.bucket,
            site=site.site.name,
            kinds={device.id: device.kind for device in site.devices},
            timeout=site.influx.timeout,
        )
    needs_outbox = collecting and (settings.backend == "postgresql" or influx is not None)
    async with contextlib.AsyncExitStack() as stack:
        if influx is not None:
            stack.callback(influx.close)
        store_open = True
        if isinstance(store, PostgresStore) and needs_outbox:
            try:
                await store.open()
            except StoreError as exc:
                # collect into the outbox meanwhile; the store drain connects when it can
                log.warning("store: %s; collecting into the outbox until it is reachable", exc)
                store_open = False
        else:
            await store.open()
        stack.push_async_callback(store.close)
        if not needs_outbox:
            yield Storage(store=store, target=StoreTarget(store))
            return
        consumers = [STORE] + ([INFLUX] if influx is not None else [])
        outbox = Outbox(
            outbox_path or settings.outbox.path,
            max_records=settings.outbox.max_records,
            max_age_seconds=settings.outbox.max_age,
            consumers=consumers,
            clock=clock,
        )
        await stack.enter_async_context(outbox)
        yield Storage(
            store=store,
            target=OutboxTarget(outbox),
            outbox=outbox,
            influx=influx,
            _store_open=store_open,
        )
