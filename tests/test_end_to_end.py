"""The whole path on real parts: simulated autoclave (MQTT, real Mosquitto) and UPS (Modbus
TCP) -> collectors -> SQLite -> rules -> API."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from collector.writer import StoreTarget
from core.clock import AcceleratedClock, SystemClock
from core.config import SiteConfig
from core.db import RecordStore, prepare, records_url
from core.store import SqliteStore
from equipwatch.runtime import Service, bind_api_socket, run_until
from equipwatch.storage import Storage
from simulators.fleet import SimulatedFleet, localize_modbus_endpoints
from tests.support import sample_site, wait_for

SPEED = 36_000.0  # ten simulated hours a real second: the meter plan falls due in about a second


def local_sample_site(topic_prefix: str) -> SiteConfig:
    site, _ = localize_modbus_endpoints(sample_site(topic_prefix))
    return site


@dataclass
class Running:
    api: httpx.AsyncClient
    site: SiteConfig
    store: SqliteStore
    records: RecordStore


@pytest.fixture
async def running(mqtt_url: str, topic_prefix: str, tmp_path: Path) -> AsyncIterator[Running]:
    site = local_sample_site(topic_prefix)
    start = datetime(2026, 11, 23, 7, 55, tzinfo=UTC)  # a Monday, just before the clinic opens
    fleet = SimulatedFleet(site, mqtt_url=mqtt_url, clock=AcceleratedClock(start, SPEED))
    stop = asyncio.Event()
    path = tmp_path / "site.sqlite"
    assert await prepare(records_url(path), None) is not None  # a new file is created at head
    async with (
        SqliteStore(path) as store,
        RecordStore.open(records_url(path), clock=SystemClock()) as records,
    ):
        _, token = await records.create_token("end-to-end", "admin")
        sock = bind_api_socket("127.0.0.1", 0, fall_back=False)
        port = sock.getsockname()[1]
        storage = Storage(store=store, target=StoreTarget(store))
        service = Service(
            site, storage, records, clock=SystemClock(), mqtt_url=mqtt_url, api_socket=sock
        )
        runner = asyncio.create_task(run_until(stop, fleet.tasks() + service.tasks()))
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
        ) as api:
            try:
                assert service.mqtt is not None
                # a message published before the collector subscribed would never reach it
                await asyncio.wait_for(service.mqtt.connected.wait(), timeout=20)
                yield Running(api, site, store, records)
            finally:
                stop.set()
                await asyncio.wait_for(runner, timeout=15)


async def _json(api: httpx.AsyncClient, path: str) -> Any:
    response = await api.get(path)
    response.raise_for_status()
    return response.json()


async def test_both_protocols_reach_the_api_and_a_plan_falls_due(running: Running) -> None:
    async def both_devices_reporting() -> list[dict[str, Any]] | None:
        try:
            page = await _json(running.api, "/api/v1/devices")
        except httpx.TransportError:
            return None
        devices: list[dict[str, Any]] = page["items"]
        if not all(d["health"]["status"] == "online" for d in devices):
            return None
        return [await _json(running.api, f"/api/v1/devices/{d['id']}") for d in devices]

    devices = await wait_for(both_devices_reporting, timeout=30, what="both devices online")
    by_id = {d["id"]: d for d in devices}
    assert by_id["autoclave-1"]["protocol"] == "mqtt"
    assert by_id["autoclave-1"]["latest"]["cycles_total"]["value"] >= 4490
    ups = by_id["ups-1"]
    assert ups["protocol"] == "modbus"
    assert ups["latest"]["battery_status"]["value"] in (2, 3)
    # run_hours is a uint32 across two registers with scale 0.1, starting at 18,250.5 h
    assert ups["latest"]["run_hours"]["value"] >= 18250.5
    assert ups["latest"]["run_hours"]["unit"] == "h"

    async def service_due() -> list[dict[str, Any]] | None:
        page = await _json(running.api, "/api/v1/maintenance/due")
        due: list[dict[str, Any]] = page["items"]
        recorded = [d for d in due if d["plan_id"] == "autoclave-1-service" and d["occurrence_id"]]
        return due if recorded else None

    due = await wait_for(service_due, timeout=30, what="the autoclave service to fall due")
    item = next(d for d in due if d["plan_id"] == "autoclave-1-service")
    assert item["basis"] == "meter"
    assert item["due_value"] == 4500  # the plan's first-due point
    orders = (await running.records.work_orders(device_id="autoclave-1")).items
    assert [(o.kind, o.plan_id, o.state) for o in orders] == [("pm", "autoclave-1-service", "open")]

    readings = await _json(
        running.api, "/api/v1/devices/ups-1/readings?metric=line_fail_count&limit=5"
    )
    assert readings["items"], "the UPS's counter readings are stored"
    assert all(r["metric"] == "line_fail_count" for r in readings["items"])


async def test_malformed_payload_is_dead_lettered_and_collection_goes_on(
    running: Running, mqtt_url: str, topic_prefix: str
) -> None:
    host, port = mqtt_url.removeprefix("mqtt://").split(":")
    topic = f"{topic_prefix}/devices/autoclave-1/telemetry"
    async with aiomqtt.Client(host, int(port), identifier="test-bad-publisher") as client:
        await client.publish(topic, b'{"cycles_total": 12', qos=1)
        await client.publish(topic, b'{"cycles_total": "many"}', qos=1)

    async def letters() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = (await _json(running.api, "/api/v1/dead-letters"))["items"]
        return found if len(found) >= 2 else None

    found = await wait_for(letters, timeout=20, what="two dead letters")
    assert {f["reason"] for f in found} == {"bad_json", "missing_field"}
    assert all(f["topic"] == topic for f in found)

    count_before = len(await running.store.readings_after("autoclave-1", "cycles_total", None))

    async def more_readings() -> bool:
        after = await running.store.readings_after("autoclave-1", "cycles_total", None)
        return len(after) > count_before

    await wait_for(more_readings, timeout=20, what="readings after the bad payloads")


async def test_demo_command_serves_then_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """`equipwatch demo` as a user runs it: embedded broker, prints where to look, Ctrl-C."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "equipwatch", "demo",
        "--data-dir", str(tmp_path), "--port", "0", "--speed", str(SPEED),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        url = token = None
        while url is None or token is None:
            line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
            assert line, "the demo exited before printing its URL and token"
            if "Devices:" in line:
                url = line.split()[-1]
            elif "API token:" in line:
                token = line.split()[2]
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:

            async def due() -> bool:
                response = await client.get(url.replace("/devices", "/maintenance/due"))
                response.raise_for_status()
                return any(item["occurrence_id"] for item in response.json()["items"])

            await wait_for(due, timeout=60, what="a due item from the demo")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), timeout=20)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
    stderr = (await process.stderr.read()).decode()
    rest = (await process.stdout.read()).decode()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "equipwatch demo stopped." in rest
