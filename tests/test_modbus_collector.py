"""The Modbus collector against a real pymodbus server hosting a simulated UPS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from collector.modbus import ModbusCollector, plan_requests
from collector.modbus_client import ModbusEndpoint
from core.clock import AcceleratedClock, ManualClock
from core.config import Device, ModbusSource, SiteConfig
from core.errors import DeviceRefused
from core.net import free_port
from core.records import DeadLetter, FaultEvent, MetricKind, Reading, Record, StatusChange
from core.registers import DataType
from simulators.devices.ups import UpsModel
from simulators.devices.usage import ClinicHours
from simulators.modbus import ModbusSimServer, ModbusUnit
from tests.support import sample_site, wait_for

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class ListSink:
    def __init__(self) -> None:
        self.records: list[Record] = []

    async def put(self, records: Sequence[Record]) -> None:
        self.records.extend(records)

    async def dead_letter(self, letter: DeadLetter) -> None:
        raise AssertionError(f"unexpected dead letter {letter}")


def ups_device(site: SiteConfig, device_id: str, port: int, unit: int = 1) -> Device:
    template = site.device("ups-1")
    assert template is not None
    assert isinstance(template.source, ModbusSource)
    source = template.source.model_copy(
        update={"host": "127.0.0.1", "port": port, "unit": unit, "interval": 0.05, "timeout": 0.2}
    )
    return template.model_copy(update={"id": device_id, "source": source, "plans": []})


@pytest.fixture
async def ups_server() -> AsyncIterator[tuple[int, UpsModel]]:
    model = UpsModel(
        seed=3,
        start=START,
        hours=ClinicHours(ZoneInfo("UTC")),
        initial={"run_hours": 18250.5, "line_fail_count": 65534},
    )
    model.inject_fault("REPLACE_BATTERY", None)
    port = free_port()
    # speed 1e-9: simulated time stands still, so the model is what the test set up
    clock = AcceleratedClock(START, 1e-9)
    server = ModbusSimServer("127.0.0.1", port, {1: ModbusUnit(model)}, clock=clock)
    task = asyncio.create_task(server.serve())
    endpoint = ModbusEndpoint("127.0.0.1", port, timeout=0.5)

    async def answering() -> bool:
        try:
            await endpoint.read("holding", 0, 1, 1)
        except Exception:
            return False
        return True

    await wait_for(answering, timeout=10, what="the simulated UPS to answer")
    endpoint.close()
    yield port, model
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_the_sample_ups_map_is_read_in_one_request_per_table() -> None:
    site = sample_site()
    device = site.device("ups-1")
    assert device is not None
    assert isinstance(device.source, ModbusSource)
    requests = plan_requests(device.source.registers, max_gap=2)
    assert [(r.table, r.address, r.count) for r in requests] == [
        ("holding", 0, 18),
        ("input", 0, 4),
        ("discrete", 0, 3),
    ]


async def test_poll_decodes_exactly_what_the_simulator_holds(
    ups_server: tuple[int, UpsModel],
) -> None:
    port, model = ups_server
    site = sample_site()
    device = ups_device(site, "ups-1", port)
    assert isinstance(device.source, ModbusSource)
    collector = ModbusCollector([device], sink=ListSink(), clock=ManualClock(START))
    endpoint = ModbusEndpoint("127.0.0.1", port, timeout=0.5)
    try:
        records = await collector.poll(device, endpoint, plan_requests(device.source.registers))
    finally:
        endpoint.close()
    values = {r.metric: r.value for r in records if isinstance(r, Reading)}
    specs = device.source.registers
    expected = {
        name: value
        for name, value in model.values().items()
        if next(s for s in specs if s.name == name).kind is not MetricKind.FAULT
        and next(s for s in specs if s.name == name).type is not DataType.STRING
    }
    assert values == pytest.approx(expected, rel=1e-6)  # float32 voltages
    faults = {(r.code, r.active) for r in records if isinstance(r, FaultEvent)}
    assert faults == {("REPLACE_BATTERY", True)}
    line_fails = next(
        r for r in records if isinstance(r, Reading) and r.metric == "line_fail_count"
    )
    assert (line_fails.raw, line_fails.width) == (65534, 16)


async def test_unknown_unit_is_an_exception_response_not_a_crash(
    ups_server: tuple[int, UpsModel],
) -> None:
    port, _ = ups_server
    endpoint = ModbusEndpoint("127.0.0.1", port, timeout=0.5)
    try:
        with pytest.raises(DeviceRefused) as refused:
            await endpoint.read("holding", 0, 8, unit=9)
        # the connection survives: the next read of a hosted unit works
        assert len(await endpoint.read("holding", 0, 8, unit=1)) == 8
    finally:
        endpoint.close()
    assert refused.value.code in (4, 10, 11)


async def test_a_dead_device_goes_offline_while_a_live_one_keeps_reporting(
    ups_server: tuple[int, UpsModel],
) -> None:
    port, _ = ups_server
    site = sample_site()
    live = ups_device(site, "ups-live", port)
    dead = ups_device(site, "ups-dead", free_port())  # nothing listens there
    sink = ListSink()
    collector = ModbusCollector([live, dead], sink=sink, clock=ManualClock(START))
    task = asyncio.create_task(collector.run())
    try:

        async def dead_is_offline() -> bool:
            return any(
                isinstance(r, StatusChange) and r.device_id == "ups-dead" and not r.online
                for r in sink.records
            )

        await wait_for(dead_is_offline, timeout=15, what="the dead UPS to go offline")

        def live_readings() -> int:
            return sum(isinstance(r, Reading) and r.device_id == "ups-live" for r in sink.records)

        seen = live_readings()

        async def live_keeps_reporting() -> bool:
            return live_readings() >= seen + 9 * 3  # three more polls of nine readings

        await wait_for(live_keeps_reporting, timeout=15, what="the live UPS to keep reporting")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert collector.stats.polls_failed["unreachable"] >= live.source.offline_after_failures  # type: ignore[union-attr]
    assert not any(isinstance(r, Reading) and r.device_id == "ups-dead" for r in sink.records)
