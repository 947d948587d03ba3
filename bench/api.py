"""API benchmark: the device list and a 24-hour history over HTTP, on 1,000 devices and 10
million readings in the embedded SQLite store, next to the same store queries called directly.

    .venv/bin/python -m bench.api [--devices 1000 --per-series 1000] [--requests 300]
        [--concurrency 8] [--data DIR] [--quick]

The readings are ``bench.store``'s (its generator: 1,000 devices x 10 metrics x 1,000 readings
over 30 days, and one device, dev0000, every 10 s over the last 24 hours), loaded through the
store's own ``write`` and rollups; ``--data DIR`` keeps the file there and reuses it on the
next run with the same shape. Every device gets a meter plan and a calendar plan, so the list
carries each device's next maintenance and its usage since service.

The API runs as ``equipwatch run`` runs it (uvicorn, the store and the records database in one
SQLite file, a bearer token checked on every request, the plan standings an engine would hand
it), in a process of its own; this process is the client, a bare keep-alive HTTP/1.1
connection per worker (see ``Connection``). Measured, after warm-ups:

1. ``GET /api/v1/devices``, the default page of 100 devices: latency p50 and p99 with one
   client, and requests/s with ``--concurrency`` clients. Baseline: the store reads behind
   it, called directly (``statuses()`` and ``latest()`` of the page's devices). Target: p99
   < 20 ms. All 1,000 devices in one page are measured too, for comparison: there most of
   the time is building and serializing 1,000 summaries.
2. ``GET /api/v1/devices/{id}/history`` for 24 hours at a 60 s step (mean): dev0000 (8,640
   raw readings in the window, served from the minute rollups) and a sparse device. Baseline:
   ``store.history`` with the same arguments. Target: p99 < 50 ms.

The ratio printed is the API's p50 over the baseline's: what HTTP, auth, validation and JSON
add to the store's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from multiprocessing.queues import Queue
from pathlib import Path
from zoneinfo import ZoneInfo

import uvicorn

from api.app import create_app
from api.deps import PlanStanding
from bench.store import COUNTERS, END, Shape, load
from core.clock import ManualClock
from core.config import SiteConfig, parse_config
from core.db import RecordStore, records_url, upgrade
from core.store import SqliteStore
from rules.plans import assess, new_state

DEVICE_LIST_MS, HISTORY_MS = 20.0, 50.0
NOW = END  # the data ends here: "the last 24 hours" is the dense stretch

FULL = {"devices": 1000, "per_series": 1000, "requests": 300}
QUICK = {"devices": 100, "per_series": 100, "requests": 60}
KINDS = ("autoclave", "vaccine_fridge", "infusion_pump", "ups", "copier", "compressor")


def site_yaml(shape: Shape) -> str:
    """A site whose devices report exactly the generator's metrics."""
    fields = "".join(
        f"        - {{field: {metric}, kind: counter, width: 32}}\n"
        if metric in COUNTERS
        else f"        - {{field: {metric}, unit: '°C'}}\n"
        for metric in shape.metric_names()
    )
    devices = "".join(
        f"""  - id: {device}
    kind: {KINDS[index % len(KINDS)]}
    manufacturer: Bench
    model: B-{index % 7}
    serial: SN{index:06d}
    location: Room {index % 40}
    risk_class: {("low", "medium", "high")[index % 3]}
    source:
      protocol: mqtt
      topic: clinic/bench/devices/{device}/telemetry
      fields:
{fields}    plans:
      - {{id: {device}-service, name: Service, type: meter, metric: cycles, every: 500, lead: 50}}
      - {{id: {device}-check, name: Safety check, type: calendar, every: 6 months}}
"""
        for index, device in enumerate(shape.device_ids())
    )
    return (
        "site: {name: Bench practice, timezone: UTC}\n"
        "mqtt: {url: 'mqtt://127.0.0.1:1883'}\n"
        f"devices:\n{devices}"
    )


# --- the data --------------------------------------------------------------------------------


async def prepare(shape: Shape, directory: Path, site: SiteConfig) -> tuple[Path, str]:
    """The store file (loaded, or reused when ``directory`` holds one of this shape) with the
    records at the head, the devices registered, and a fresh token."""
    path = directory / "equipwatch.sqlite"
    marker = directory / "shape.json"
    wanted = json.dumps([shape.devices, shape.metrics, shape.per_series, shape.dense])
    if not (path.exists() and marker.exists() and marker.read_text() == wanted):
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        print(f"loading {shape.total:,} readings into {path} (bench.store's data)", flush=True)
        async with SqliteStore(path, rollup_interval=None) as store:
            # load() brings the rollups up to date at its end, as the store would
            result = await load(store, shape, 20_000, "SQLite")
        print(f"   loaded in {result.seconds:.0f}s, rollups included", flush=True)
        marker.write_text(wanted)
    else:
        print(f"reusing {path} ({shape.total:,} readings)", flush=True)
    url = records_url(path)
    await upgrade(url)
    async with RecordStore.open(url) as records:
        await records.sync_devices(site.devices)
        name = f"bench-{os.getpid()}-{time.time_ns()}"
        _, token = await records.create_token(name, "integration")
    return path, token


# --- the server --------------------------------------------------------------------------------


def _standings(site: SiteConfig) -> dict[str, PlanStanding]:
    """Every plan assessed once, as an engine's last pass leaves them for the API."""
    zone = ZoneInfo(site.site.timezone)
    return {
        plan.id: assess(plan, new_state(plan, NOW - timedelta(days=30)), NOW, zone)
        for device in site.devices
        for plan in site.device_plans(device)
    }


async def _serve(path: Path, site_text: str, listener: socket.socket, ready: Queue[int]) -> None:
    site = parse_config(site_text, "bench-site.yaml")
    standings = _standings(site)

    async def plan_standings() -> Mapping[str, PlanStanding]:
        return standings

    clock = ManualClock(NOW)
    async with (
        SqliteStore(path, rollup_interval=None) as series,
        RecordStore.open(records_url(path), clock=clock) as records,
    ):
        app = create_app(
            site=site, series=series, records=records, clock=clock, plan_standings=plan_standings
        )
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        # what start-up built (the site, its indexes, the standings) lives as long as the
        # process: out of the collector's way, its full collections stay short
        gc.collect()
        gc.freeze()
        ready.put(listener.getsockname()[1])
        await uvicorn.Server(config).serve(sockets=[listener])


def serve(path: Path, site_text: str, ready: Queue[int]) -> None:
    """The server process: binds a free port, says which, serves until terminated."""
    # IPPROTO_TCP named outright: asyncio sets TCP_NODELAY only on sockets whose protocol says
    # TCP, and without it every answer waits ~40 ms for the client's delayed ACK
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    asyncio.run(_serve(path, site_text, listener, ready))


# --- measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    p50_ms: float
    p99_ms: float
    per_second: float | None = None


def _percentile(sorted_ms: list[float], share: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, math.ceil(share * len(sorted_ms)) - 1)]


class Connection:
    """A bare HTTP/1.1 keep-alive client: a request written, the answer read by its
    Content-Length. A full client costs about a millisecond of CPU per request, which on a
    machine of two cores is taken from the server it measures."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.head = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> bytes:
        try:
            return await self._get(path)
        except (asyncio.IncompleteReadError, ConnectionError):
            # the server closes a connection idle for a few seconds (uvicorn's keep-alive)
            await self.close()
            return await self._get(path)

    async def _get(self, path: str) -> bytes:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(f"GET {path} HTTP/1.1\r\n{self.head}".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await self.reader.readexactly(length)
        if status != 200:
            raise AssertionError(f"GET {path}: {status} {body[:200]!r}")
        return body

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def timed(run: Callable[[], Awaitable[object]], repeats: int, warmups: int) -> Stats:
    for _ in range(warmups):
        await run()
    times: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        await run()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return Stats(statistics.median(times), _percentile(times, 0.99))


async def rate(port: int, token: str, path: str, total: int, workers: int) -> float:
    """Requests per second with ``workers`` clients, each on its own connection."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        connection = Connection(port, token)
        try:
            while remaining > 0:
                remaining -= 1
                await connection.get(path)
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return total / (time.perf_counter() - started)


@dataclass(frozen=True)
class Case:
    label: str
    path: str
    target_ms: float | None
    """None: shown for comparison, with no target of its own."""
    raw: Callable[[SqliteStore], Awaitable[object]]


def cases(shape: Shape) -> list[Case]:
    ids = shape.device_ids()
    gauge = shape.metric_names()[2]
    page = ids[:100]

    def device_list(devices: list[str]) -> Callable[[SqliteStore], Awaitable[object]]:
        async def run(store: SqliteStore) -> object:
            return await store.statuses(), await store.latest(devices)

        return run

    def history(device: str) -> Callable[[SqliteStore], Awaitable[object]]:
        async def run(store: SqliteStore) -> object:
            return await store.history(
                device,
                gauge,
                start=NOW - timedelta(days=1),
                end=NOW,
                step_seconds=60,
                aggregate="mean",
            )

        return run

    query = f"metric={gauge}&step=60&aggregate=mean"
    sparse = ids[min(1, len(ids) - 1)]
    return [
        Case(
            f"device list, page of {len(page)}",
            "/api/v1/devices",
            DEVICE_LIST_MS,
            device_list(page),
        ),
        Case(
            f"device list, all {len(ids):,} in one page",
            f"/api/v1/devices?limit={len(ids)}",
            None,
            device_list(ids),
        ),
        Case(
            f"history 24 h @60 s, {ids[0]} (dense)",
            f"/api/v1/devices/{ids[0]}/history?{query}",
            HISTORY_MS,
            history(ids[0]),
        ),
        Case(
            f"history 24 h @60 s, {sparse}",
            f"/api/v1/devices/{sparse}/history?{query}",
            HISTORY_MS,
            history(sparse),
        ),
    ]


async def measure(
    path: Path, port: int, token: str, shape: Shape, args: argparse.Namespace
) -> bool:
    ok = True
    connection = Connection(port, token)
    async with SqliteStore(path, rollup_interval=None) as store:
        for case in cases(shape):
            items = len(json.loads(await connection.get(case.path))["items"])
            api = await timed(partial(connection.get, case.path), args.requests, args.warmups)
            raw = await timed(partial(case.raw, store), args.requests, args.warmups)
            per_second = await rate(port, token, case.path, args.requests, args.concurrency)
            met = case.target_ms is None or api.p99_ms < case.target_ms
            ok = ok and met
            verdict = (
                "(for comparison)"
                if case.target_ms is None
                else f"{'OK' if met else 'MISSED'} (p99 < {case.target_ms:g} ms)"
            )
            print(
                f"   {case.label:<36} {items:>5} items  API p50 {api.p50_ms:6.2f} ms "
                f"p99 {api.p99_ms:6.2f} ms  {per_second:7.0f} req/s ({args.concurrency} "
                f"clients) | store p50 {raw.p50_ms:6.2f} ms p99 {raw.p99_ms:6.2f} ms | "
                f"x{api.p50_ms / raw.p50_ms:.1f}  {verdict}",
                flush=True,
            )
    await connection.close()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int)
    parser.add_argument("--per-series", type=int, help="readings per series over 30 days")
    parser.add_argument("--requests", type=int, help="timed requests per case")
    parser.add_argument("--warmups", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8, help="clients for requests/s")
    parser.add_argument("--data", type=Path, help="keep (and reuse) the store file here")
    parser.add_argument("--quick", action="store_true", help="a small run, for a smoke test")
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    shape = Shape(args.devices, 10, args.per_series, True)
    site_text = site_yaml(shape)
    site = parse_config(site_text, "bench-site.yaml")
    load_average = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{shape.total:,} readings, {shape.devices:,} devices; load average {load_average}")
    with tempfile.TemporaryDirectory(prefix="bench-api-") as temporary:
        directory = args.data or Path(temporary)
        directory.mkdir(parents=True, exist_ok=True)
        path, token = asyncio.run(prepare(shape, directory, site))
        context = multiprocessing.get_context("spawn")
        ready: Queue[int] = context.Queue()
        server = context.Process(target=serve, args=(path, site_text, ready), name="api")
        server.start()
        try:
            port = ready.get(timeout=120)
            print(
                f"API (a process of its own) on http://127.0.0.1:{port}; client: this process",
                flush=True,
            )
            ok = asyncio.run(measure(path, port, token, shape, args))
        finally:
            server.terminate()
            server.join(timeout=30)
    print("all targets met" if ok else "SOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
