"""Runs the parts of equipwatch a process's role asks for, and stops them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import zlib
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import uvicorn

from api.app import create_app
from collector.base import CollectorStats
from collector.modbus import ModbusCollector
from collector.mqtt import MqttCollector
from collector.report import ReportFilter
from collector.writer import BatchWriter
from core.clock import Clock
from core.config import ModbusSource, MqttSource, SiteConfig
from core.db import RecordStore
from core.leader import FileElection, PostgresElection
from core.secrets import mqtt_password, postgres_dsn
from core.store import PostgresStore
from equipwatch.health import health_app
from equipwatch.metrics import Snapshot, render
from equipwatch.storage import Storage
from rules.engine import RulesEngine
from rules.notify.channels import build_channels
from rules.notify.dispatcher import Dispatcher
from rules.notify.routing import Router

__all__ = ["Role", "Service", "Shard", "bind_api_socket", "run_until"]

log = logging.getLogger(__name__)


SLOW_STOP = 10.0  # seconds after a stop request before the tasks still running are named


class _Stopped(Exception):
    """Raised inside the task group to end it when a stop was asked for."""


class _ApiServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # the process owns SIGINT/SIGTERM and stops every part in order, not uvicorn alone
        yield


def bind_api_socket(host: str, port: int, *, fall_back: bool) -> socket.socket:
    """A listening socket for the API; with ``fall_back`` a busy port is swapped for a free one."""
    # naming IPPROTO_TCP lets asyncio recognise the socket as TCP and set TCP_NODELAY on
    # accepted connections; without it Nagle's algorithm holds small answers back ~40 ms
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or not fall_back:
            sock.close()
            raise
        log.warning("port %d is busy; the API takes a free port instead", port)
        sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Role(StrEnum):
    """What one process does. ``all`` runs everything (one clinic PC); the others split the
    service over processes and machines that share the site config and the PostgreSQL store."""

    ALL = "all"
    COLLECTOR = "collector"
    RULES = "rules"
    API = "api"

    @property
    def collects(self) -> bool:
        return self in (Role.ALL, Role.COLLECTOR)

    @property
    def evaluates(self) -> bool:
        return self in (Role.ALL, Role.RULES)

    @property
    def serves_api(self) -> bool:
        return self in (Role.ALL, Role.API)


@dataclass(frozen=True, slots=True)
class Shard:
    """Collector ``index`` of ``count`` (1-based): it polls the Modbus devices whose id hashes
    to it. CRC-32 rather than ``hash()``, which differs between processes."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, slash, count = text.partition("/")
        if not (slash and index.isdigit() and count.isdigit()) or not (
            1 <= int(index) <= int(count)
        ):
            raise ValueError(f"a shard is K/N with 1 <= K <= N, e.g. 1/2, not {text!r}")
        return cls(int(index), int(count))

    def owns(self, device_id: str) -> bool:
        return zlib.crc32(device_id.encode()) % self.count == self.index - 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class Service:
    """The parts one process runs for its role, over one store and one records database."""

    def __init__(
        self,
        site: SiteConfig,
        storage: Storage,
        records: RecordStore,
        *,
        clock: Clock,
        mqtt_url: str | None,
        api_socket: socket.socket | None,
        role: Role = Role.ALL,
        shard: Shard | None = None,
        client_id: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.site = site
        self.storage = storage
        self.records = records
        self.clock = clock
        self.role = role
        self.stats = CollectorStats()
        self.writer: BatchWriter | None = None
        self.mqtt: MqttCollector | None = None
        self.modbus: ModbusCollector | None = None
        self.rules: RulesEngine | None = None
        self.dispatcher: Dispatcher | None = None
        self.election: PostgresElection | FileElection | None = None
        if role.evaluates:
            self._build_rules(mqtt_url, environ)
        if role.collects:
            self._build_collectors(mqtt_url, shard, client_id, environ)
        self._api_socket = api_socket
        self._api: _ApiServer | None = None
        if api_socket is not None:
            app = (
                create_app(
                    site=site,
                    series=storage.store,
                    records=records,
                    clock=clock,
                    readiness=self.readiness,
                    metrics=self.metrics_text,
                    plan_standings=None if self.rules is None else self.rules.standings,
                )
                if role.serves_api
                else health_app(readiness=self.readiness, metrics=self.metrics_text)
            )
            self._api = _ApiServer(uvicorn.Config(app, log_level="warning", lifespan="off"))

    def _build_collectors(
        self,
        mqtt_url: str | None,
        shard: Shard | None,
        client_id: str | None,
        environ: Mapping[str, str] | None,
    ) -> None:
        site = self.site
        self.writer = BatchWriter(
            self.storage.target,
            batch_size=site.store.batch_size,
            flush_interval=site.store.flush_interval,
            # records that went straight into the store can be evaluated at once; through the
            # outbox they reach the store later, and the next tick finds them
            on_commit=(
                self.rules.wake if self.rules is not None and self.storage.outbox is None else None
            ),
        )
        # every source writes through the metrics' report policies (deadband, heartbeat)
        report = ReportFilter(site.devices, self.writer)
        mqtt_devices = [d for d in site.devices if isinstance(d.source, MqttSource)]
        modbus_devices = [d for d in site.devices if isinstance(d.source, ModbusSource)]
        if shard is not None:
            modbus_devices = [d for d in modbus_devices if shard.owns(d.id)]
            if mqtt_devices and site.mqtt.shared_group is None and shard.count > 1:
                raise ValueError(
                    "collectors split into shards receive MQTT through a shared subscription: "
                    "set mqtt.shared_group, or every collector would store every message"
                )
        if mqtt_devices:
            if mqtt_url is None:
                raise ValueError("devices publish over MQTT but no broker URL is configured")
            settings = site.mqtt.model_copy(
                update={
                    "password": mqtt_password(site, environ),
                    "password_env": None,
                    "client_id": client_id or site.mqtt.client_id,
                }
            )
            self.mqtt = MqttCollector(
                mqtt_devices,
                settings=settings,
                url=mqtt_url,
                sink=report,
                clock=self.clock,
                stats=self.stats,
            )
        if modbus_devices:
            self.modbus = ModbusCollector(
                modbus_devices, sink=report, clock=self.clock, stats=self.stats
            )

    def _build_rules(self, mqtt_url: str | None, environ: Mapping[str, str] | None) -> None:
        site = self.site
        notifications = site.notifications
        if notifications.recipients:
            channels = build_channels(
                notifications,
                site_name=site.site.name,
                mqtt=site.mqtt,
                mqtt_url=mqtt_url,
                environ=os.environ if environ is None else environ,
            )
            router = Router(notifications, site_name=site.site.name)
            self.dispatcher = Dispatcher.from_settings(
                notifications, router, channels, self.records, self.clock
            )
        self.rules = RulesEngine(
            site, self.storage.store, self.records, clock=self.clock, dispatcher=self.dispatcher
        )
        store = self.storage.store
        if isinstance(store, PostgresStore):
            self.election = PostgresElection(
                postgres_dsn(site, environ),
                name=f"equipwatch.rules:{site.site.name}",
                retry_interval=site.rules.takeover / 2,
                check_interval=site.rules.takeover / 2,
            )
        else:
            self.election = FileElection(
                store.path.with_name(store.path.name + ".rules.lock"),
                retry_interval=site.rules.takeover / 2,
            )

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        ready, checks = await self.storage.checks()
        if self.mqtt is not None:
            connected = self.mqtt.connected.is_set()
            checks["broker"] = {"ok": connected}
            ready = ready and connected
        if self.election is not None:
            # a standby is ready: being ready to take over is its job
            checks["rules"] = {"ok": True, "leader": self.election.is_leader}
        return ready, checks

    async def snapshot(self) -> Snapshot:
        ready, _ = await self.readiness()
        snapshot = Snapshot(ready=ready)
        if self.writer is not None:
            snapshot.messages = self.stats.messages
            snapshot.records = self.stats.records
            snapshot.dead_letters = dict(self.stats.dead_letters)
            snapshot.writer_queue_depth = self.writer.depth
            snapshot.writer_batches = self.writer.batches
            snapshot.writer_failed_attempts = self.writer.failed_attempts
        for collector in (self.mqtt, self.modbus):
            if collector is not None:
                snapshot.devices_online.update(collector.device_states())
        if self.modbus is not None:
            snapshot.polls = {"ok": self.stats.polls_ok, **self.stats.polls_failed}
            snapshot.polls_late = self.modbus.poll_stats.polls_late
            snapshot.breakers_open = self.modbus.poll_stats.breakers_open
        if self.mqtt is not None:
            snapshot.mqtt_connected = self.mqtt.connected.is_set()
            snapshot.mqtt_unacked = self.mqtt.mqtt_stats.unacked
        if self.rules is not None and self.election is not None:
            snapshot.rules_passes = self.rules.passes
            snapshot.leader = self.election.is_leader
        if self.dispatcher is not None:
            stats = self.dispatcher.stats
            snapshot.notifications = {
                ("any", status): getattr(stats, status) for status in ("sent", "failed", "gave_up")
            }
        outbox = await self.storage.outbox_stats()
        if outbox is not None:
            snapshot.outbox_depth = {n: c.depth for n, c in outbox.consumers.items()}
            snapshot.outbox_oldest_age = {
                n: c.oldest_age_seconds or 0.0 for n, c in outbox.consumers.items()
            }
            snapshot.outbox_dropped = {"cap": outbox.dropped_by_cap, "age": outbox.dropped_by_age}
        if self.storage.influx is not None:
            snapshot.influx_points = self.storage.influx.points_written
            snapshot.influx_dropped = {str(k): v for k, v in self.storage.influx.dropped.items()}
        return snapshot

    async def metrics_text(self) -> bytes:
        return render(await self.snapshot())

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        tasks: list[tuple[str, Coroutine[Any, Any, None]]] = []
        if self.writer is not None:
            tasks.append(("writer", self.writer.run()))
            tasks += self.storage.drains(self.site)
        if self.mqtt is not None:
            tasks.append(("collector[mqtt]", self.mqtt.run()))
        if self.modbus is not None:
            tasks.append(("collector[modbus]", self.modbus.run()))
        if self.election is not None:
            tasks.append(("rules.election", self.election.run(self._lead)))
        if self._api is not None:
            tasks.append(("api", self._serve_api(self._api)))
        return tasks

    async def _lead(self) -> None:
        """What only the elected rules engine does: evaluate the plans, send and retry the
        notices, and apply retention (all idempotent, so a brief overlap at a takeover is
        harmless)."""
        assert self.rules is not None
        async with asyncio.TaskGroup() as group:
            group.create_task(self.rules.run(self.site.rules.tick), name="rules")
            group.create_task(self.storage.retention(self.site, self.clock), name="store.retention")
            if self.dispatcher is not None:
                group.create_task(self.dispatcher.run(), name="notify.retry")

    async def _serve_api(self, server: _ApiServer) -> None:
        """Serve until cancelled, then let uvicorn finish its requests and close its socket."""
        assert self._api_socket is not None
        serving = asyncio.create_task(server.serve(sockets=[self._api_socket]), name="api.serve")
        try:
            await asyncio.shield(serving)
        except asyncio.CancelledError:
            server.should_exit = True
            await serving
            raise


async def run_until(
    stop: asyncio.Event, tasks: list[tuple[str, Coroutine[Any, Any, None]]]
) -> None:
    """Run every task in one TaskGroup until ``stop`` is set or one fails; then cancel and await
    them all. A task's failure propagates; a requested stop does not."""

    started: list[asyncio.Task[None]] = []

    async def stopper() -> None:
        await stop.wait()
        asyncio.get_running_loop().call_later(SLOW_STOP, _report_slow_stop, started)
        raise _Stopped

    try:
        async with asyncio.TaskGroup() as group:
            for name, coroutine in tasks:
                started.append(group.create_task(coroutine, name=name))
            group.create_task(stopper(), name="stopper")
    except* _Stopped:
        pass


def _report_slow_stop(tasks: list[asyncio.Task[None]]) -> None:
    """Name what a stop is still waiting for, so a hang can be told from a slow goodbye."""
    pending = [task for task in tasks if not task.done()]
    if pending:
        log.warning(
            "still stopping after %gs; waiting for %d task(s): %s",
            SLOW_STOP,
            len(pending),
            ", ".join(task.get_name() for task in pending[:10]),
        )
        for task in pending[:3]:
            frames = task.get_stack(limit=8)
            where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
            log.warning("  %s at %s", task.get_name(), where)
