"""The simulators as a new user meets them, through independent tools on the wire: mbpoll (a C
Modbus master) reads the documented registers; mosquitto_sub sees the documented topics, JSON,
retained status and last will. Then a scenario plays out on the wire."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest

from collector.modbus_client import ModbusEndpoint
from core.clock import AcceleratedClock
from core.config import ModbusSource, MqttSource, SiteConfig
from core.errors import DeviceRefused, DeviceTimeout
from simulators.behaviour import Window
from simulators.devices.compressor import CompressorModel
from simulators.devices.ups import UpsModel
from simulators.devices.usage import ClinicHours
from simulators.fleet import FleetSpec, SimulatedFleet, generate_site
from simulators.modbus import ModbusUnit
from simulators.scenario import ScenarioRunner, load_scenario
from tests.support import modbus_gateway, require_binary, wait_for

LONDON = ZoneInfo("Europe/London")
TUESDAY_10 = datetime(2026, 11, 24, 10, 0, tzinfo=LONDON)  # clinic open: the compressor runs


# --- mbpoll reads the documented register maps -------------------------------------------


@dataclass
class Gateway:
    port: int
    ups: UpsModel
    compressor: CompressorModel


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    """A UPS (unit 1) and a compressor (unit 2) behind one port, as the sample config has."""
    hours = ClinicHours(LONDON)
    ups = UpsModel(seed=3, start=TUESDAY_10, hours=hours)
    ups.inject_fault("REPLACE_BATTERY", None)
    compressor = CompressorModel(seed=3, start=TUESDAY_10, hours=hours)
    units = {1: ModbusUnit(ups), 2: ModbusUnit(compressor)}
    async with modbus_gateway(units, start=TUESDAY_10) as port:
        yield Gateway(port, ups, compressor)


async def mbpoll(
    port: int, unit: int, table: str, address: int, count: int, *flags: str
) -> list[str]:
    """What mbpoll prints for each address, zero-based (``-0``), one poll (``-1``)."""
    binary = require_binary("mbpoll", "mbpoll")
    process = await asyncio.create_subprocess_exec(
        binary, "-m", "tcp", "-p", str(port), "-a", str(unit), "-t", table,
        "-r", str(address), "-c", str(count), "-0", "-1", *flags, "127.0.0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0, err.decode()
    values = re.findall(r"^\[(\d+)\]:\s+(\S+)", out.decode(), re.MULTILINE)
    assert [int(a) for a, _ in values] == list(range(address, address + count)), out.decode()
    return [v for _, v in values]


async def test_mbpoll_reads_the_ups_as_documented(gateway: Gateway) -> None:
    values = gateway.ups.values()
    port = gateway.port
    holding = [int(v) for v in await mbpoll(port, 1, "4", 0, 8)]
    assert holding[0] == values["battery_status"]
    assert holding[1] == values["line_fail_count"]
    assert holding[4:8] == [
        values["load_pct"],
        round(float(values["battery_temp_c"]) * 10),  # int16, scale 0.1
        values["runtime_min"],
        values["seconds_on_battery"],
    ]
    # uint32 in big word order (-B), scale 0.1
    [run_hours] = await mbpoll(port, 1, "4:int", 2, 1, "-B")
    assert int(run_hours) == round(float(values["run_hours"]) * 10)
    # float32 in both word orders: little (mbpoll's default) then big
    [input_v] = await mbpoll(port, 1, "3:float", 0, 1)
    [output_v] = await mbpoll(port, 1, "3:float", 2, 1, "-B")
    assert float(input_v) == pytest.approx(values["input_voltage_v"], abs=0.01)
    assert float(output_v) == pytest.approx(values["output_voltage_v"], abs=0.01)
    # the model name: eight registers of ASCII, two characters each, high byte first
    words = [int(v, 16) for v in await mbpoll(port, 1, "4:hex", 10, 8)]
    text = b"".join(w.to_bytes(2, "big") for w in words).rstrip(b"\0").decode()
    assert text == values["model"]
    # alarm bits as discrete inputs
    bits = [int(v) for v in await mbpoll(port, 1, "1", 0, 3)]
    assert bits == [values["on_battery"], values["battery_low"], values["replace_battery"]]
    assert bits[2] == 1  # REPLACE_BATTERY was injected


async def test_mbpoll_reads_the_compressor_as_documented(gateway: Gateway) -> None:
    values = gateway.compressor.values()
    port = gateway.port
    # uint32 little word order (mbpoll's default) and big word order (-B)
    [run_hours] = await mbpoll(port, 2, "4:int", 0, 1)
    [starts] = await mbpoll(port, 2, "4:int", 2, 1, "-B")
    assert int(run_hours) == round(float(values["run_hours"]) * 10)
    assert int(starts) == values["starts_total"]
    state, pressure = (int(v) for v in await mbpoll(port, 2, "4", 4, 2))
    assert state == values["state"]
    assert pressure == round(float(values["pressure_bar"]) * 100)
    [discharge] = await mbpoll(port, 2, "3:float", 0, 1, "-B")
    [filter_dp] = await mbpoll(port, 2, "3:float", 2, 1)
    assert float(discharge) == pytest.approx(values["discharge_temp_c"], abs=0.01)
    assert float(filter_dp) == pytest.approx(values["filter_dp_kpa"], abs=0.01)
    coils = [int(v) for v in await mbpoll(port, 2, "0", 0, 2)]
    assert coils == [values["motor_running"], values["alarm_relay"]]
    discrete = [int(v) for v in await mbpoll(port, 2, "1", 0, 2)]
    assert discrete == [values["high_temp"], values["filter_clogged"]]


# --- mosquitto_sub sees the documented topics -------------------------------------------


def _fleet_site(name: str, mqtt_url: str, devices: dict[str, int], interval: float) -> SiteConfig:
    spec = FleetSpec.model_validate(
        {"site": {"name": name, "timezone": "Europe/London"}, "devices": devices,
         "interval": interval}
    )  # fmt: skip
    return generate_site(spec, mqtt_url=mqtt_url)


class Subscriber:
    """mosquitto_sub printing every message as ``topic retained payload``."""

    def __init__(self, mqtt_url: str, topic: str) -> None:
        self.url = urlsplit(mqtt_url)
        self.topic = topic
        self.lines: list[tuple[str, bool, str]] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        binary = require_binary("mosquitto_sub", "mosquitto-clients")
        self._process = await asyncio.create_subprocess_exec(
            binary, "-h", str(self.url.hostname), "-p", str(self.url.port), "-t", self.topic,
            "-q", "1", "-F", "%t %r %p",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        async for raw in self._process.stdout:
            topic, retained, payload = raw.decode().rstrip("\n").split(" ", 2)
            self.lines.append((topic, retained == "1", payload))

    async def __aexit__(self, *exc: object) -> None:
        assert self._process is not None
        assert self._reader is not None
        self._process.terminate()
        await self._process.wait()
        await asyncio.gather(self._reader, return_exceptions=True)

    def payloads(self, topic: str) -> list[str]:
        return [payload for t, _, payload in self.lines if t == topic]


async def test_mosquitto_sub_sees_documented_json_status_and_last_will(
    mqtt_url: str, topic_prefix: str
) -> None:
    site = _fleet_site(topic_prefix.replace("/", "-"), mqtt_url, {"autoclave": 2}, 0.1)
    first, second = site.devices
    assert isinstance(first.source, MqttSource)
    assert isinstance(second.source, MqttSource)
    telemetry, status = first.source.topic, first.source.status_topic
    will_topic = second.source.status_topic
    assert telemetry is not None
    assert status is not None
    assert will_topic is not None
    slug = str(first.source.topic).split("/")[1]
    assert first.source.topic == f"clinic/{slug}/devices/{first.id}/telemetry"
    assert first.source.status_topic == f"clinic/{slug}/devices/{first.id}/status"
    clock = AcceleratedClock(datetime(2026, 11, 24, 9, 0, tzinfo=UTC), 60.0)
    fleet = SimulatedFleet(site, mqtt_url=mqtt_url, clock=clock)
    # the second device loses power one simulated minute in: no goodbye, the broker's will
    power_cut = clock.now() + timedelta(minutes=1)
    outage = Window("offline", power_cut, power_cut + timedelta(minutes=1))
    fleet.targets[second.id].behaviour.add(outage)
    tasks = [asyncio.create_task(coro, name=name) for name, coro in fleet.tasks()]
    try:
        async with Subscriber(mqtt_url, f"clinic/{slug}/devices/#") as sub:

            async def three_messages_and_a_will() -> bool:
                return len(sub.payloads(telemetry)) >= 3 and "offline" in sub.payloads(will_topic)

            await wait_for(three_messages_and_a_will, timeout=20, what="telemetry and a will")
        message = json.loads(sub.payloads(telemetry)[-1])
        documented = {"ts", *(f.field for f in first.source.fields)}
        assert set(message) == documented
        assert datetime.fromisoformat(message["ts"]).tzinfo is not None
        assert isinstance(message["faults"], list)
        assert "online" in sub.payloads(status)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # stopped cleanly: a newcomer is told "offline" by the retained status
    async with Subscriber(mqtt_url, status) as late:

        async def retained_offline() -> bool:
            return (status, True, "offline") in late.lines

        await wait_for(retained_offline, timeout=10, what="the retained offline status")


# --- a scenario on the wire ----------------------------------------------------------------

SCENARIO = """\
name: wire test
events:
  - {at: 1h, device: ups-001, action: wrap, counter: line_fail_count, by: 2}
  - {at: 2h, device: ups-001, action: count, counter: line_fail_count, by: 3}
  - {at: 2h, device: autoclave-001, action: reset, counter: cycles_total}
  - {at: 3h, device: ups-001, action: exception, code: 6, for: 2h}
  - {at: 3h, device: autoclave-001, action: malformed, count: 3}
  - {at: 4h, device: autoclave-001, action: offline, for: 2h}
"""


async def test_a_scenario_shows_on_the_wire(
    mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    site = _fleet_site(topic_prefix.replace("/", "-"), mqtt_url, {"autoclave": 1, "ups": 1}, 0.1)
    autoclave, ups = site.devices
    assert isinstance(autoclave.source, MqttSource)
    assert isinstance(ups.source, ModbusSource)
    unit, status, telemetry = ups.source.unit, autoclave.source.status_topic, autoclave.source.topic
    assert status
    assert telemetry
    origin = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    clock = AcceleratedClock(origin, 3600.0)  # a simulated hour a second
    (tmp_path / "scenario.yaml").write_text(SCENARIO)
    scenario = load_scenario(tmp_path / "scenario.yaml", site, origin)
    fleet = SimulatedFleet(site, mqtt_url=mqtt_url, clock=clock)
    runner = ScenarioRunner(scenario, fleet.targets, clock=clock, origin=origin)
    line_fails: list[int] = []
    answers: list[str] = []
    endpoint = ModbusEndpoint("127.0.0.1", ups.source.port, timeout=0.3)

    async def poll_ups() -> None:
        while True:
            try:
                [count] = await endpoint.read("holding", 1, 1, unit)
                line_fails.append(count)
                answers.append("ok")
            except DeviceRefused as exc:
                answers.append(f"exception {exc.code}")
            except DeviceTimeout:
                answers.append("timeout")
            except Exception:
                answers.append("unreachable")
            await asyncio.sleep(0.05)

    async with Subscriber(mqtt_url, f"clinic/{telemetry.split('/')[1]}/#") as sub:
        tasks = [asyncio.create_task(coro, name=name) for name, coro in fleet.tasks()]
        tasks.append(asyncio.create_task(runner.run()))
        tasks.append(asyncio.create_task(poll_ups()))
        try:

            async def offline_and_back() -> bool:
                statuses = sub.payloads(status)
                return "offline" in statuses and statuses[-1] == "online" and len(statuses) >= 3

            await wait_for(offline_and_back, timeout=30, what="the autoclave to go and come back")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            endpoint.close()

    assert runner.applied == 4
    _assert_wrapped(line_fails)
    # the Modbus exception response, and answers again after the window
    assert "exception 6" in answers
    assert answers[-1] == "ok"
    _assert_reset_and_malformed(sub.payloads(telemetry))
    # the will said offline with no goodbye; the device said online when it came back
    statuses = sub.payloads(status)
    assert statuses.index("offline") < len(statuses) - 1


def _assert_wrapped(line_fails: list[int]) -> None:
    """The uint16 counter wrapped: 65534 (2 before the wrap), then 3 events later 1 (or 2, if
    the simulated line failed once more by itself meanwhile)."""
    after = line_fails[line_fails.index(65534) :]
    wrapped_at = next(i for i, count in enumerate(after) if count < 65534)
    assert set(after[:wrapped_at]) <= {65534, 65535}
    assert after[wrapped_at] in (1, 2)
    assert max(after[wrapped_at:]) < 10


def _assert_reset_and_malformed(telemetry: list[str]) -> None:
    parsed = []
    malformed = []
    for payload in telemetry:
        try:
            message = json.loads(payload)
        except json.JSONDecodeError:
            malformed.append("bad_json")
            continue
        if not isinstance(message.get("cycles_total"), int):
            malformed.append("missing" if "cycles_total" not in message else "wrong_type")
            continue
        parsed.append(message["cycles_total"])
    assert malformed == ["bad_json", "missing", "wrong_type"]
    assert min(parsed) < 5 < max(parsed)  # it counted from thousands, then from zero
    drop = next(i for i in range(1, len(parsed)) if parsed[i] < parsed[i - 1])
    assert parsed[drop] <= 2
