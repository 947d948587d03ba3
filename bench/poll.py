"""Polling benchmark: N simulated Modbus devices of ten holding registers each, polled every
interval by the ModbusCollector, with a sink that only counts.

    .venv/bin/python -m bench.poll --devices 1000 --seconds 60 --interval 1

The devices are served in a separate process (this module with ``--serve``): simulators.modbus
servers on ``--ports`` ports, the devices spread evenly over them as unit ids, as behind
gateways. A trivial device model keeps the simulator cheap, so that what is measured here is
the collector. First, in the same run, a bare ``AsyncModbusTcpClient`` loop (one client per
port, one request in flight each, as the collector has) measures the raw request rate the
servers and this machine give; then the collector polls for ``--seconds``. Printed: the share
of polls that started on time (within 10% of the interval), the raw and the collector's request
rates side by side, the collector's CPU and its peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar
from zoneinfo import ZoneInfo

from pymodbus.client import AsyncModbusTcpClient

from collector.base import OnDurable
from collector.modbus import LATE_FRACTION, ModbusCollector
from core.clock import AcceleratedClock, SystemClock
from core.config import Device, RegisterSpec
from core.net import free_port
from core.records import DeadLetter, MetricKind, Record
from core.registers import DataType
from simulators.devices.base import Channel, DeviceModel, Value
from simulators.devices.registermap import spec
from simulators.devices.usage import ClinicHours
from simulators.modbus import ModbusSimServer, ModbusUnit

REGISTERS = 10
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

log = logging.getLogger("bench.poll")


# --- the simulated side (its own process) -----------------------------------------------


class TenRegisters(DeviceModel):
    """A device of ten steady uint16 holding registers: nothing to simulate, so the server
    spends its time answering."""

    kind = "bench"
    transport = "modbus"
    channels = tuple(Channel(f"r{i}", MetricKind.GAUGE) for i in range(REGISTERS))
    fault_codes = ()
    register_map: ClassVar[tuple[RegisterSpec, ...]] = tuple(
        spec(f"r{i}", "holding", i, DataType.UINT16, MetricKind.GAUGE) for i in range(REGISTERS)
    )

    def _simulate(self, start: datetime, end: datetime) -> None:
        return

    def _gauges(self) -> dict[str, Value]:
        return {f"r{i}": float(self.seed % 1000 + i) for i in range(REGISTERS)}


async def serve(ports: Sequence[int], units: int) -> None:
    """Serve ``units`` devices on each port until killed; say "ready" once all listen."""
    start = datetime.now(UTC)
    clock = AcceleratedClock(start, 1.0)
    hours = ClinicHours(ZoneInfo("UTC"))
    servers = [
        ModbusSimServer(
            "127.0.0.1",
            port,
            {
                unit: ModbusUnit(TenRegisters(seed=index * units + unit, start=start, hours=hours))
                for unit in range(1, units + 1)
            },
            clock=clock,
        )
        for index, port in enumerate(ports)
    ]
    async with asyncio.TaskGroup() as tasks:
        for server in servers:
            tasks.create_task(server.serve(), name=f"sim[{server.port}]")
        async with asyncio.timeout(30):
            for port in ports:
                await _listening(port)
        print("ready", flush=True)


async def _listening(port: int) -> None:
    """Return once ``port`` accepts a connection."""
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


@dataclass
class Simulator:
    """The server process, started and stopped by the benchmark."""

    process: asyncio.subprocess.Process
    ports: list[int]

    @classmethod
    async def start(cls, ports: list[int], units: int) -> Simulator:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.poll", "--serve", ",".join(map(str, ports)),
            "--units", str(units),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        async with asyncio.timeout(60):
            line = await process.stdout.readline()
        if line.strip() != b"ready":
            raise SystemExit(f"the simulator did not start (exit code {process.returncode})")
        return cls(process, ports)

    def cpu_seconds(self) -> float:
        return _proc_cpu(self.process.pid)

    async def stop(self) -> None:
        self.process.terminate()
        await self.process.wait()


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# --- the measuring side -----------------------------------------------------------------


class CountingSink:
    """Takes records and only counts them: the benchmark measures the collector, not a store."""

    def __init__(self) -> None:
        self.records = 0
        self.dead_letters = 0

    async def put(self, records: Sequence[Record], on_durable: OnDurable | None = None) -> None:
        self.records += len(records)

    async def dead_letter(self, letter: DeadLetter, on_durable: OnDurable | None = None) -> None:
        self.dead_letters += 1


async def raw_rate(ports: Sequence[int], units: int, seconds: float) -> float:
    """Requests per second of bare pymodbus clients, one per port, each reading ten registers
    of its units in turn, one request at a time."""
    clients = [AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0) for port in ports]
    for client in clients:
        if not await client.connect():
            raise SystemExit(f"raw client cannot connect to {client}")
    counts = [0] * len(clients)
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds

    async def hammer(index: int) -> None:
        client = clients[index]
        while loop.time() < until:
            response = await client.read_holding_registers(
                0, count=REGISTERS, device_id=counts[index] % units + 1
            )
            if response.isError():
                raise SystemExit(f"raw client got {response}")
            counts[index] += 1

    started = loop.time()
    try:
        async with asyncio.TaskGroup() as tasks:
            for index in range(len(clients)):
                tasks.create_task(hammer(index), name=f"raw[{ports[index]}]")
    finally:
        for client in clients:
            client.close()
    return sum(counts) / (loop.time() - started)


def bench_devices(ports: Sequence[int], units: int, interval: float) -> list[Device]:
    registers = list(TenRegisters.register_map)
    return [
        Device.model_validate(
            {
                "id": f"bench-{index * units + unit:04d}",
                "kind": "ups",  # any kind will do: only the source matters here
                "source": {
                    "protocol": "modbus",
                    "host": "127.0.0.1",
                    "port": port,
                    "unit": unit,
                    "interval": interval,
                    "timeout": min(1.0, interval),
                    "registers": registers,
                },
            }
        )
        for index, port in enumerate(ports)
        for unit in range(1, units + 1)
    ]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(args: argparse.Namespace) -> int:
    units = args.devices // args.ports
    if units < 1 or units > 247 or units * args.ports != args.devices:
        raise SystemExit("--devices must be a multiple of --ports, with 1..247 per port")
    ports = [free_port() for _ in range(args.ports)]
    simulator = await Simulator.start(ports, units)
    try:
        raw = await raw_rate(ports, units, args.raw_seconds)

        devices = bench_devices(ports, units, args.interval)
        sink = CountingSink()
        collector = ModbusCollector(devices, sink=sink, clock=SystemClock())
        loop = asyncio.get_running_loop()
        cpu_before, sim_before, started = _cpu(), simulator.cpu_seconds(), loop.time()
        task = asyncio.create_task(collector.run(), name="collector[modbus]")
        await asyncio.sleep(args.seconds)  # the run's length, not a wait for a condition
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        wall = loop.time() - started
        cpu, sim_cpu = _cpu() - cpu_before, simulator.cpu_seconds() - sim_before
    finally:
        await simulator.stop()

    stats, polls = collector.stats, collector.poll_stats
    requests = sum(endpoint.requests for endpoint in collector.endpoints.values())
    achieved = requests / wall
    expected_polls = args.devices * args.seconds / args.interval
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    on_time = polls.on_time_ratio
    failed = dict(stats.polls_failed)
    report = [
        f"bench.poll: {args.devices} devices x {REGISTERS} holding registers on {args.ports} "
        f"ports, every {args.interval:g} s for {wall:.1f} s",
        f"raw pymodbus ({args.ports} clients, {args.raw_seconds:g} s): {raw:,.0f} requests/s",
        f"collector: {achieved:,.0f} requests/s achieved (the schedule asks "
        f"{args.devices / args.interval:,.0f}/s: {achieved / raw:.0%} of the raw rate)",
        f"polls: {polls.polls_started:,} started (~{expected_polls:,.0f} expected), "
        f"{stats.polls_ok:,} ok, failed {failed or 'none'}; {sink.records:,} records",
        f"on time (started within {LATE_FRACTION:.0%} of the interval): {on_time:.2%} "
        f"(late {polls.polls_late}, skipped {polls.polls_skipped}, worst lag "
        f"{polls.lag_max * 1000:.0f} ms)",
        f"collector CPU: {cpu / wall:.1%} of one core ({cpu / max(requests, 1) * 1e6:.0f} us per "
        f"request); peak RSS {peak_rss / 2**20:.0f} MiB",
        f"simulator CPU: {sim_cpu / wall:.1%} of one core (separate process)",
    ]
    ok = on_time >= 0.99 and peak_rss < 200 * 2**20 and not failed
    report.append("RESULT: " + ("kept up" if ok else "fell short"))
    print("\n".join(report))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--ports", type=int, default=10, help="simulated gateways")
    parser.add_argument("--raw-seconds", type=float, default=10.0)
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the simulator process
    parser.add_argument("--units", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # failures are counted instead
    if args.serve:
        asyncio.run(serve([int(p) for p in args.serve.split(",")], args.units))
        return 0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
