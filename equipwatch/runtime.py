"""Runs the parts of equipwatch together in one process, and stops them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Coroutine, Iterator
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
from core.store import SqliteStore
from equipwatch.metrics import Snapshot, render
from equipwatch.storage import Storage
from rules.engine import RulesEngine

__all__ = ["Service", "bind_api_socket", "run_until"]

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
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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


class Service:
    """Collectors, the batch writer, the rules engine and the API over one store."""

    def __init__(
        self,
        site: SiteConfig,
        storage: Storage,
        *,
        clock: Clock,
        mqtt_url: str | None,
        api_socket: socket.socket | None,
    ) -> None:
        store = storage.store
        if not isinstance(store, SqliteStore):
            raise NotImplementedError("the rules and the API read the SQLite store for now")
        self.site = site
        self.storage = storage
        self.store = store
        self.clock = clock
        self.stats = CollectorStats()
        self.writer = BatchWriter(
            storage.target,
            batch_size=site.store.batch_size,
            flush_interval=site.store.flush_interval,
        )
        # every source writes through the metrics' report policies (deadband, heartbeat)
        self.report = ReportFilter(site.devices, self.writer)
        self.rules = RulesEngine(site, store, clock)
        mqtt_devices = [d for d in site.devices if isinstance(d.source, MqttSource)]
        modbus_devices = [d for d in site.devices if isinstance(d.source, ModbusSource)]
        self.mqtt: MqttCollector | None = None
        if mqtt_devices:
            if mqtt_url is None:
                raise ValueError("devices publish over MQTT but no broker URL is configured")
            self.mqtt = MqttCollector(
                mqtt_devices,
                settings=site.mqtt,
                url=mqtt_url,
                sink=self.report,
                clock=clock,
                stats=self.stats,
            )
        self.modbus = (
            ModbusCollector(modbus_devices, sink=self.report, clock=clock, stats=self.stats)
            if modbus_devices
            else None
        )
        self._api_socket = api_socket
        self._api: _ApiServer | None = None
        if api_socket is not None:
            app = create_app(
                site=site,
                store=store,
                clock=clock,
                readiness=self.readiness,
                metrics=self.metrics_text,
            )
            self._api = _ApiServer(uvicorn.Config(app, log_level="warning", lifespan="off"))

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        ready, checks = await self.storage.checks()
        if self.mqtt is not None:
            connected = self.mqtt.connected.is_set()
            checks["broker"] = {"ok": connected}
            ready = ready and connected
        return ready, checks

    async def snapshot(self) -> Snapshot:
        ready, _ = await self.readiness()
        snapshot = Snapshot(
            ready=ready,
            messages=self.stats.messages,
            records=self.stats.records,
            dead_letters=dict(self.stats.dead_letters),
            writer_queue_depth=self.writer.depth,
            writer_batches=self.writer.batches,
            writer_failed_attempts=self.writer.failed_attempts,
            rules_passes=self.rules.passes,
        )
        if self.modbus is not None:
            snapshot.polls = {"ok": self.stats.polls_ok, **self.stats.polls_failed}
            snapshot.polls_late = self.modbus.poll_stats.polls_late
            snapshot.breakers_open = self.modbus.poll_stats.breakers_open
        if self.mqtt is not None:
            snapshot.mqtt_connected = self.mqtt.connected.is_set()
            snapshot.mqtt_unacked = self.mqtt.mqtt_stats.unacked
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
        tasks: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("writer", self.writer.run()),
            *self.storage.tasks(self.site, self.clock),
            ("rules", self.rules.run(self.site.rules.tick)),
        ]
        if self.mqtt is not None:
            tasks.append(("collector[mqtt]", self.mqtt.run()))
        if self.modbus is not None:
            tasks.append(("collector[modbus]", self.modbus.run()))
        if self._api is not None:
            tasks.append(("api", self._serve_api(self._api)))
        return tasks

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
