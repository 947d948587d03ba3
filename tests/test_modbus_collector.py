"""The Modbus collector against a real pymodbus server hosting a simulated UPS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest

from collector.modbus import ModbusCollector, plan_requests
from collector.modbus_client import ModbusEndpoint
from core.clock import ManualClock
from core.config import Device, ModbusSource, SiteConfig
from core.errors import DeviceRefused
from core.net import free_port
from core.records import DeadLetter, Reading, Record, StatusChange
from simulators.devices.ups import REGISTER_COUNT, UpsModel
from simulators.modbus import ModbusSimServer
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
    model = UpsModel(seed=3, start=START, run_hours=18250.5, line_fail_count=65534)
    port = free_port()
    server = ModbusSimServer("127.0.0.1", port, {1: (REGISTER_COUNT, model.registers)})
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


def test_the_sample_ups_map_is_read_in_one_request() -> None:
    site = sample_site()
    device = site.device("ups-1")
    assert device is not None
    assert isinstance(device.source, ModbusSource)
    [request] = plan_requests(device.source.registers)
    assert (request.table, request.address, request.count) == ("holding", 0, 8)


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
    assert values == pytest.approx(model.values())
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
            return live_readings() >= seen + 7 * 3  # three more polls of seven registers

        await wait_for(live_keeps_reporting, timeout=15, what="the live UPS to keep reporting")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert collector.stats.polls_failed["unreachable"] >= live.source.offline_after_failures  # type: ignore[union-attr]
    assert not any(isinstance(r, Reading) and r.device_id == "ups-dead" for r in sink.records)
