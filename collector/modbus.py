"""The polled source: devices read over Modbus TCP on a schedule."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from collector.base import CollectorStats, FaultTracker, OnlineTracker, RecordSink
from collector.modbus_client import ModbusEndpoint, Table
from core.aio import raise_if_cancelling
from core.clock import Clock
from core.config import Device, ModbusSource, RegisterSpec
from core.errors import DeviceError, DeviceRefused, DeviceTimeout
from core.records import MetricKind, Quality, Reading, Record
from core.registers import DataType, decode

__all__ = ["ModbusCollector", "ReadRequest", "plan_requests"]

log = logging.getLogger(__name__)

MAX_REGISTERS = 125  # the protocol's limit for one read of registers
MAX_BITS = 2000


@dataclass(frozen=True, slots=True)
class ReadRequest:
    table: Table
    address: int
    count: int
    registers: tuple[RegisterSpec, ...]


def plan_requests(registers: Sequence[RegisterSpec], max_gap: int = 0) -> list[ReadRequest]:
    """Merge a device's registers into as few reads as possible, never more than the protocol
    allows in one read and never bridging more than ``max_gap`` unused addresses."""
    requests: list[ReadRequest] = []
    by_table: dict[Table, list[RegisterSpec]] = {}
    for spec in registers:
        by_table.setdefault(spec.table, []).append(spec)
    for table, specs in by_table.items():
        limit = MAX_BITS if table in ("coil", "discrete") else MAX_REGISTERS
        specs.sort(key=lambda s: s.address)
        group: list[RegisterSpec] = []
        start = end = 0
        for spec in specs:
            spec_end = spec.address + spec.registers
            if group and spec.address - end <= max_gap and max(end, spec_end) - start <= limit:
                group.append(spec)
                end = max(end, spec_end)
                continue
            if group:
                requests.append(ReadRequest(table, start, end - start, tuple(group)))
            group, start, end = [spec], spec.address, spec_end
        if group:
            requests.append(ReadRequest(table, start, end - start, tuple(group)))
    return requests


def decode_register(spec: RegisterSpec, words: list[int]) -> tuple[float, int | None]:
    """The scaled value of one register spec and, for counters, the raw integer."""
    value = decode(words, spec.type, byte_order=spec.byte_order, word_order=spec.word_order)
    if isinstance(value, str):
        raise ValueError(f"{spec.name} is a string; strings are not readings")
    raw = int(value) if spec.kind is MetricKind.COUNTER else None
    return value * spec.scale + spec.offset, raw


class ModbusCollector:
    """Polls every Modbus device on its own interval, one task per device.

    Devices behind the same host:port share one connection. After
    ``offline_after_failures`` consecutive failed polls a device is marked offline; the
    first good poll marks it online again. No error ends a polling task.
    """

    def __init__(
        self,
        devices: Sequence[Device],
        *,
        sink: RecordSink,
        clock: Clock,
        stats: CollectorStats | None = None,
    ) -> None:
        self._devices = list(devices)
        self._sink = sink
        self._clock = clock
        self.stats = stats or CollectorStats()
        self._online = OnlineTracker()
        self._faults = FaultTracker()
        self._endpoints: dict[tuple[str, int], ModbusEndpoint] = {}
        for device in self._devices:
            source = device.source
            assert isinstance(source, ModbusSource)
            key = (source.host, source.port)
            if key not in self._endpoints:
                self._endpoints[key] = ModbusEndpoint(
                    source.host, source.port, timeout=source.timeout
                )

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                for device in self._devices:
                    tasks.create_task(self._poll_forever(device), name=f"modbus[{device.id}].poll")
        finally:
            for endpoint in self._endpoints.values():
                endpoint.close()

    async def _poll_forever(self, device: Device) -> None:
        source = device.source
        assert isinstance(source, ModbusSource)
        endpoint = self._endpoints[(source.host, source.port)]
        requests = plan_requests(source.registers)
        loop = asyncio.get_running_loop()
        failures = 0
        next_poll = loop.time()
        while True:
            try:
                records = await self.poll(device, endpoint, requests)
            except DeviceError as exc:
                failures += 1
                reason = _failure_reason(exc)
                self.stats.polls_failed[reason] += 1
                log.debug("modbus %s: %s", device.id, exc)
                if failures >= source.offline_after_failures:
                    await self._emit(
                        self._online.mark(device.id, False, self._clock.now(), f"{reason}: {exc}")
                    )
            else:
                failures = 0
                self.stats.polls_ok += 1
                await self._emit(
                    self._online.mark(device.id, True, self._clock.now(), "answered") + records
                )
            raise_if_cancelling()  # pymodbus's connect can swallow one (wait_for, 3.11)
            next_poll += source.interval
            # after a long stall, skip the missed polls rather than firing them back to back
            next_poll = max(next_poll, loop.time())
            await asyncio.sleep(next_poll - loop.time())

    async def poll(
        self, device: Device, endpoint: ModbusEndpoint, requests: Sequence[ReadRequest]
    ) -> list[Record]:
        source = device.source
        assert isinstance(source, ModbusSource)
        records: list[Record] = []
        active_faults: set[str] = set()
        has_faults = False
        ts = self._clock.now()
        for request in requests:
            words = await endpoint.read(
                request.table,
                request.address,
                request.count,
                source.unit,
            )
            for spec in request.registers:
                offset = spec.address - request.address
                chunk = words[offset : offset + spec.registers]
                if spec.type is DataType.STRING:
                    continue  # identification text (model, firmware), not a reading
                value, raw = decode_register(spec, chunk)
                if spec.kind is MetricKind.FAULT:
                    # a fault register names its code: bit on_battery set -> ON_BATTERY active
                    has_faults = True
                    if value:
                        active_faults.add(spec.name.upper())
                    continue
                records.append(
                    Reading(device.id, spec.name, value, ts, Quality.GOOD, raw, spec.width)
                )
        if has_faults:
            records += self._faults.update(device.id, active_faults, ts)
        return records

    async def _emit(self, records: Sequence[Record]) -> None:
        if records:
            self.stats.records += len(records)
            await self._sink.put(records)


def _failure_reason(exc: DeviceError) -> str:
    if isinstance(exc, DeviceTimeout):
        return "timeout"
    if isinstance(exc, DeviceRefused):
        return f"exception_{exc.code}"
    return "unreachable"
