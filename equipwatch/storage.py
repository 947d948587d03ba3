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
import os
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from collector.writer import BatchTarget, OutboxTarget, StoreTarget
from core.clock import Clock
from core.config import SiteConfig
from core.errors import ConfigError, ConfigIssue, StoreError
from core.records import DeadLetter, Record
from core.store import PostgresStore, SqliteStore
from core.store.influx import InfluxSink
from core.store.outbox import Outbox, OutboxItem, OutboxStats

__all__ = ["Storage", "open_storage", "postgres_dsn"]

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

    def tasks(self, site: SiteConfig, clock: Clock) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The drains that hand records on, and the retention timer; run until cancelled."""
        tasks: list[tuple[str, Coroutine[Any, Any, None]]] = []
        if self.outbox is not None:
            tasks.append((f"outbox.drain[{STORE}]", self.outbox.drain(STORE, self._hand_to_store)))
            if self.influx is not None:
                assert site.influx is not None
                tasks.append(
                    (
                        f"outbox.drain[{INFLUX}]",
                        self.outbox.drain(
                            INFLUX,
                            self.influx.write,
                            limit=site.influx.batch_size,
                            linger=site.influx.flush_interval,
                        ),
                    )
                )
        tasks.append(("store.retention", self._retention(site, clock)))
        return tasks

    async def _hand_to_store(self, items: Sequence[OutboxItem]) -> None:
        if not self._store_open:
            await self.store.open()  # raises StoreError while the server is down: retried
            self._store_open = True
            log.info("store: connected")
        letters = [item for item in items if isinstance(item, DeadLetter)]
        records: list[Record] = [item for item in items if not isinstance(item, DeadLetter)]
        await StoreTarget(self.store).write_batch(records, letters)

    async def _retention(self, site: SiteConfig, clock: Clock) -> None:
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


def _from_environment(variable: str, field: str, environ: Mapping[str, str] | None) -> str:
    """A secret the config names by its environment variable; a missing one is a
    configuration error, reported before anything starts."""
    value = (os.environ if environ is None else environ).get(variable)
    if value is None:
        issue = ConfigIssue(
            file="(environment)",
            line=None,
            column=None,
            field=field,
            message=f"environment variable {variable} is not set",
        )
        raise ConfigError([issue])
    return value


def postgres_dsn(site: SiteConfig, environ: Mapping[str, str] | None = None) -> str:
    """The configured DSN with the password from its environment variable, if one is named."""
    settings = site.store.postgresql
    assert settings is not None
    if settings.password_env is None:
        return settings.dsn
    password = _from_environment(settings.password_env, "store.postgresql.password_env", environ)
    scheme, rest = settings.dsn.split("://", 1)
    user, at, host = rest.partition("@")
    if not at:
        issue = ConfigIssue(
            file="(config)",
            line=None,
            column=None,
            field="store.postgresql.dsn",
            message="a password needs a user name: postgresql://user@host/database",
        )
        raise ConfigError([issue])
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}"


@contextlib.asynccontextmanager
async def open_storage(
    site: SiteConfig,
    *,
    clock: Clock,
    sqlite_path: Path | None = None,
    outbox_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[Storage]:
    """Open the store (and the outbox and InfluxDB sink when configured) for ``site``.

    ``sqlite_path`` and ``outbox_path`` override the config's files (the demo keeps its own).
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
    if site.influx is not None:
        influx = InfluxSink(
            site.influx.url,
            token=(
                ""
                if site.influx.token_env is None
                else _from_environment(site.influx.token_env, "influx.token_env", environ)
            ),
            org=site.influx.org,
            bucket=site.influx.bucket,
            site=site.site.name,
            kinds={device.id: device.kind for device in site.devices},
            timeout=site.influx.timeout,
        )
    needs_outbox = settings.backend == "postgresql" or influx is not None
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
