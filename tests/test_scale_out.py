"""Scaling out in separate OS processes, against a real Mosquitto and PostgreSQL: collectors
split an MQTT stream and a Modbus fleet without duplicates, and one rules engine leads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from core.net import free_port
from core.records import Reading
from core.store import PostgresStore
from equipwatch.runtime import Shard
from tests.pg import postgres_dsn
from tests.support import modbus_gateway, mosquitto, sample_site, wait_for
from tests.test_modbus_collector import START, ups
from tests.test_notify_channels import Inbox, smtp_server


@pytest.fixture(scope="module")
def server_dsn() -> Iterator[str]:
    with postgres_dsn() as dsn:
        yield dsn


@pytest.fixture
async def dsn(server_dsn: str) -> AsyncIterator[str]:
    """A database of the test's own on the shared server, dropped afterwards."""
    name = f"scale_{os.urandom(4).hex()}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = server_dsn.rpartition("/")
    yield f"{base}/{name}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    with mosquitto(tmp_path / "mosquitto") as url:
        yield url


@dataclass
class Process:
    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def processes(tmp_path: Path) -> Iterator[list[Process]]:
    """Processes started into the list are stopped (SIGTERM, then SIGKILL) on the way out."""
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in started:
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()


def start(
    started: list[Process], tmp_path: Path, config: Path, name: str, *arguments: str
) -> Process:
    port = free_port()
    log = tmp_path / f"{name}.log"
    # a working directory each: a collector's outbox file is its own
    workdir = tmp_path / name
    workdir.mkdir()
    command = [sys.executable, "-m", "equipwatch", "run", "--config", str(config)]
    command += ["--port", str(port), *arguments]
    with log.open("wb") as out:
        popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    process = Process(name, port, popen, log)
    started.append(process)
    return process


async def scrape(http: httpx.AsyncClient, process: Process) -> dict[tuple[str, str], float]:
    """name and the sorted label values joined by ',' → value."""
    response = await http.get(f"{process.url}/metrics")
    response.raise_for_status()
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(v for _, v in sorted(sample.labels.items()))
            found[(sample.name, labels)] = sample.value
    return found


async def ready(http: httpx.AsyncClient, process: Process) -> bool:
    if process.popen.poll() is not None:
        raise AssertionError(f"{process.name} exited:\n{process.output()}")
    try:
        return (await http.get(f"{process.url}/readyz")).status_code == 200
    except httpx.TransportError:
        return False


async def all_ready(http: httpx.AsyncClient, started: list[Process]) -> None:
    for process in started:

        async def probe(process: Process = process) -> bool:
            return await ready(http, process)

        await wait_for(probe, timeout=60, what=f"{process.name} to be ready")


def write_site(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def base_site(dsn: str) -> dict[str, Any]:
    data: dict[str, Any] = sample_site().model_dump(mode="json", exclude_none=True)
    data["store"] = {"backend": "postgresql", "postgresql": {"dsn": dsn}, "flush_interval": 0.05}
    data.pop("kind_plans", None)
    data.pop("simulation", None)
    return data


async def stored(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


# --- MQTT: two collectors on one shared subscription --------------------------------------

MESSAGES = 400


async def test_two_collectors_split_one_shared_subscription_and_store_each_message_once(
    dsn: str, broker: str, tmp_path: Path
) -> None:
    data = base_site(dsn)
    fridge = next(d for d in data["devices"] if d["id"] == "fridge-1")
    fridge["plans"] = []
    fridge["source"]["expected_interval"] = 3600
    fields = fridge["source"]["fields"]
    fridge["source"]["fields"] = [f for f in fields if f["field"] == "temperature_c"]
    data["devices"] = [fridge]
    data["mqtt"] = {"url": broker, "client_id": "collector", "shared_group": "equipwatch"}
    config = write_site(tmp_path / "site.yaml", data)
    topic = fridge["source"]["topic"]

    with processes(tmp_path) as started:
        one = start(started, tmp_path, config, "collector-1", "--role", "collector")
        two = start(
            started, tmp_path, config, "collector-2", "--role", "collector", "--client-id", "c2"
        )
        async with httpx.AsyncClient(timeout=5) as http:
            await all_ready(http, [one, two])
            await asyncio.to_thread(publish, broker, topic, MESSAGES)
            await wait_for(
                lambda: _count_at_least(
                    dsn,
                    "SELECT count(*) FROM equipwatch.readings WHERE metric = 'temperature_c'",
                    MESSAGES,
                ),
                timeout=60,
                what=f"{MESSAGES} stored readings",
            )
            shares = [
                (await scrape(http, p))[("equipwatch_messages_total", "")] for p in (one, two)
            ]
    # the store is idempotent on (device, metric, time), so the collectors' own counts are
    # what proves no message was delivered twice
    assert sum(shares) == MESSAGES
    assert min(shares) > 0, shares
    rows = await stored(
        dsn, "SELECT count(*) AS n FROM equipwatch.readings WHERE metric = 'temperature_c'"
    )
    assert rows[0]["n"] == MESSAGES


def publish(url: str, topic: str, count: int) -> None:
    start_ts = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    bodies = [
        json.dumps(
            {
                "ts": (start_ts + timedelta(seconds=i)).isoformat(),
                "temperature_c": 4.0 + (i % 7) / 10,
            }
        )
        for i in range(count)
    ]
    publish_all(url, topic, bodies)


async def _count_at_least(dsn: str, sql: str, wanted: int) -> bool | None:
    rows = await stored(dsn, sql)
    return (bool(rows) and rows[0][0] >= wanted) or None


# --- Modbus: two collectors sharding a hundred devices ------------------------------------

UNITS = 100


async def test_two_collector_shards_poll_every_modbus_device_exactly_once(
    dsn: str, tmp_path: Path
) -> None:
    data = base_site(dsn)
    template = next(d for d in data["devices"] if d["id"] == "ups-1")
    units = {unit: ups(unit) for unit in range(1, UNITS + 1)}
    async with modbus_gateway(units, start=START) as port:
        devices = []
        for unit in units:
            device = json.loads(json.dumps(template))
            device.update(id=f"ups-{unit:03d}", plans=[])
            device["source"].update(port=port, unit=unit, interval=1.0, timeout=0.5)
            devices.append(device)
        data["devices"] = devices
        data.pop("mqtt", None)
        config = write_site(tmp_path / "site.yaml", data)
        with processes(tmp_path) as started:
            shards = [
                start(
                    started,
                    tmp_path,
                    config,
                    f"shard-{k}",
                    "--role",
                    "collector",
                    "--shard",
                    f"{k}/2",
                )
                for k in (1, 2)
            ]
            async with httpx.AsyncClient(timeout=5) as http:
                await all_ready(http, shards)
                await wait_for(
                    lambda: _count_at_least(
                        dsn, "SELECT count(DISTINCT device_id) FROM equipwatch.readings", UNITS
                    ),
                    timeout=60,
                    what=f"readings from all {UNITS} devices",
                )
                polled = []
                for process in shards:
                    metrics = await scrape(http, process)
                    polled.append(
                        {
                            labels
                            for (name, labels), value in metrics.items()
                            if name == "equipwatch_device_online" and value == 1
                        }
                    )
    every = {f"ups-{unit:03d}" for unit in units}
    assert polled[0] | polled[1] == every
    assert not polled[0] & polled[1]
    # each shard took what the documented hash gives it, and both took a real share
    assert polled[0] == {d for d in every if Shard(1, 2).owns(d)}
    assert 20 < len(polled[0]) < 80


# --- rules: one leader, a takeover, one notice ----------------------------------------------

TAKEOVER = 3.0  # rules.takeover in the config below


def rules_site(dsn: str, smtp_port: int) -> dict[str, Any]:
    return {
        "site": {"name": "Riverside", "timezone": "Europe/London"},
        "store": {"backend": "postgresql", "postgresql": {"dsn": dsn}},
        "rules": {"tick": 0.2, "takeover": TAKEOVER},
        "notifications": {
            "smtp": {
                "host": "127.0.0.1",
                "port": smtp_port,
                "security": "none",
                "from_address": "equipwatch@clinic.example",
            },
            "recipients": [
                {"name": "mia", "role": "manager", "channels": {"email": "mia@x.example"}}
            ],
        },
        "devices": [
            {
                "id": "autoclave-1",
                "kind": "autoclave",
                "location": "Sterilisation room",
                "source": {
                    "protocol": "mqtt",
                    "topic": "clinic/riverside/devices/autoclave-1/telemetry",
                    "fields": [{"field": "cycles_total", "kind": "counter", "width": 32}],
                },
                "plans": [
                    {
                        "id": "autoclave-1-service",
                        "name": "Autoclave service",
                        "type": "meter",
                        "metric": "cycles_total",
                        "every": 500,
                        "first_due": 4500,
                    }
                ],
            }
        ],
    }


async def leaders(http: httpx.AsyncClient, started: list[Process]) -> list[Process]:
    found = []
    for process in started:
        if process.popen.poll() is not None:
            continue
        with contextlib.suppress(httpx.TransportError):
            if (await scrape(http, process)).get(("equipwatch_leader", "")) == 1:
                found.append(process)
    return found


async def test_one_rules_engine_leads_and_a_standby_takes_over_with_one_notice(
    dsn: str, tmp_path: Path
) -> None:
    inbox = Inbox()
    with smtp_server(inbox) as smtp_port, processes(tmp_path) as started:
        config = write_site(tmp_path / "site.yaml", rules_site(dsn, smtp_port))
        engines = [
            start(started, tmp_path, config, f"rules-{n}", "--role", "rules") for n in (1, 2)
        ]
        async with httpx.AsyncClient(timeout=5) as http, PostgresStore(dsn) as store:
            await all_ready(http, engines)

            async def one_leader() -> Process | None:
                found = await leaders(http, engines)
                return found[0] if len(found) == 1 else None

            leader = await wait_for(one_leader, timeout=30, what="exactly one leader")
            standby = next(p for p in engines if p is not leader)
            ts = datetime.now(UTC) - timedelta(minutes=5)
            await store.write(
                [Reading("autoclave-1", "cycles_total", 4400, ts, raw=4400, width=32)]
            )
            before = (await scrape(http, leader))[("equipwatch_rules_passes_total", "")]
            await wait_for(
                lambda: _passes_beyond(http, leader, before + 3), timeout=20, what="leader passes"
            )
            assert await leaders(http, engines) == [leader]

            # the leader dies; the plan falls due while nobody leads
            leader.popen.send_signal(signal.SIGKILL)
            killed = asyncio.get_running_loop().time()
            await asyncio.to_thread(leader.popen.wait)
            due = ts + timedelta(minutes=1)
            await store.write(
                [Reading("autoclave-1", "cycles_total", 4500, due, raw=4500, width=32)]
            )

            async def standby_leads() -> bool:
                return await leaders(http, [standby]) == [standby]

            await wait_for(standby_leads, timeout=30, what="the standby to take over")
            took = asyncio.get_running_loop().time() - killed
            assert took < TAKEOVER, f"took over after {took:.1f}s"

            async def mailed() -> bool:
                return bool(inbox.received)

            await wait_for(mailed, timeout=30, what="the due notice")
            passes = (await scrape(http, standby))[("equipwatch_rules_passes_total", "")]
            await wait_for(
                lambda: _passes_beyond(http, standby, passes + 10), timeout=30, what="more passes"
            )
    subjects = [message["Subject"] for _, _, message in inbox.received]
    assert len(subjects) == 1, subjects
    assert "Autoclave service" in subjects[0]


async def _passes_beyond(http: httpx.AsyncClient, process: Process, wanted: float) -> bool:
    return (await scrape(http, process))[("equipwatch_rules_passes_total", "")] >= wanted


# --- the three-process layout, as deploy/README.md shows it ----------------------------------

README = Path(__file__).resolve().parent.parent / "deploy" / "README.md"
README_PORTS = ("8101", "8090", "8000")


def readme_commands() -> list[str]:
    """The shell block of the README's "Three processes on one machine" section."""
    text = README.read_text()
    section = text[text.index("## Three processes on one machine") :]
    block = section[section.index("```sh\n") + len("```sh\n") :]
    return [line for line in block[: block.index("```")].splitlines() if line.strip()]


def test_the_readme_block_is_the_three_role_layout() -> None:
    commands = readme_commands()
    roles = [c.split("--role ")[1].split()[0] for c in commands if " run " in c]
    assert roles == ["collector", "rules", "api"]
    assert all(c.rstrip().endswith("&") for c in commands if " run " in c)


async def test_three_processes_on_one_machine_as_the_readme_shows(
    dsn: str, broker: str, tmp_path: Path
) -> None:
    data = base_site(dsn)
    autoclave = next(d for d in data["devices"] if d["id"] == "autoclave-1")
    autoclave["source"]["fields"] = [
        f for f in autoclave["source"]["fields"] if f["field"] == "cycles_total"
    ]
    autoclave["source"]["expected_interval"] = 3600
    autoclave["plans"] = [p for p in autoclave["plans"] if p["id"] == "autoclave-1-service"]
    data["devices"] = [autoclave]
    data["mqtt"] = {"url": broker, "client_id": "collector"}
    data["rules"] = {"tick": 0.2}
    write_site(tmp_path / "site.yaml", data)
    ports = {readme: str(free_port()) for readme in README_PORTS}
    token = ""
    api_port = ports["8000"]
    with processes(tmp_path) as started:
        curl = ""
        for command in readme_commands():
            line = command
            for readme, port in ports.items():
                line = line.replace(f"--port {readme}", f"--port {port}")
                line = line.replace(f":{readme}/", f":{port}/")
            words = line.rstrip(" &").split()
            if words[0] == "curl":
                curl = words[-1]  # made below, once the processes answer
                continue
            assert words[0] == "equipwatch", line
            if line.rstrip().endswith("&"):
                started.append(spawn(words, tmp_path))
            else:
                done = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "equipwatch", *words[1:]],
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert done.returncode == 0, f"{line}:\n{done.stdout}{done.stderr}"
                if words[1:3] == ["token", "create"]:
                    token = done.stdout.strip()
        assert token.startswith("ew_")
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=5, headers=headers) as http:
            await all_ready(http, started)
            listed = await http.get(curl)
            assert listed.status_code == 200, listed.text
            assert [d["id"] for d in listed.json()["items"]] == ["autoclave-1"]
            topic = autoclave["source"]["topic"]
            ts = datetime.now(UTC).replace(microsecond=0)
            body = json.dumps({"ts": ts.isoformat(), "cycles_total": 4500})
            await asyncio.to_thread(publish_all, broker, topic, [body])

            async def online() -> bool:
                url = f"http://127.0.0.1:{api_port}/api/v1/devices/autoclave-1"
                device = (await http.get(url)).json()
                return bool(device["health"]["status"] == "online")

            await wait_for(online, timeout=30, what="the autoclave online through the API")

            async def due() -> list[dict[str, Any]] | None:
                url = f"http://127.0.0.1:{api_port}/api/v1/maintenance/due"
                items: list[dict[str, Any]] = (await http.get(url)).json()["items"]
                return [i for i in items if i["occurrence_id"]] or None

            [item] = await wait_for(due, timeout=30, what="the service to fall due")
    assert item["plan_id"] == "autoclave-1-service"


def spawn(words: list[str], directory: Path) -> Process:
    """``equipwatch run ... --role R --port P`` in the background, as the shell's ``&``."""
    port = words[words.index("--port") + 1]
    name = words[words.index("--role") + 1]
    log = directory / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "equipwatch", *words[1:]],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
    return Process(name, int(port), popen, log)


def publish_all(url: str, topic: str, bodies: list[str]) -> None:
    """Publish at QoS 1 as one device would, and return once the broker has them all."""
    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="devices", protocol=mqtt.MQTTv5)
    client.connect(host, int(port))
    client.loop_start()
    try:
        for info in [client.publish(topic, body, qos=1) for body in bodies]:
            info.wait_for_publish(timeout=30)
    finally:
        client.loop_stop()
        client.disconnect()
