"""Scale run of the simulators: N devices in one process, each reporting every interval, for a
given time. Checks that nothing falls behind and reports the simulator's CPU and memory.

    .venv/bin/python -m bench.fleet --devices 1000 --interval 10 --minutes 10

The simulator runs as its own process (``equipwatch simulate``) against a Mosquitto this
script starts on a free port (or ``--mqtt-url``). In this process a bare paho subscriber counts
every device's messages and a pymodbus client polls every Modbus device each interval. The
baseline is a bare paho publisher sending the same number of messages of the same size; the
ratio printed is the simulator's CPU per message against it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from collector.modbus import plan_requests
from collector.modbus_client import ModbusEndpoint
from core.config import ModbusSource, MqttSource, SiteConfig, load_config
from tests.support import mosquitto, wait_for_port

TICKS = os.sysconf("SC_CLK_TCK")


def _proc(pid: int) -> tuple[float, int]:
    """(CPU seconds, resident bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


class Counter:
    """A bare paho subscriber: every message's arrival time per device."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-fleet-counter")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("clinic/+/devices/+/telemetry", qos=1)
        self.client.connect(host, int(port))
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.arrivals[message.topic.split("/")[3]].append(time.monotonic())

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def poll_modbus(
    site: SiteConfig, interval: float, until: float, latencies: list[float], failures: list[str]
) -> None:
    endpoints: dict[tuple[str, int], ModbusEndpoint] = {}
    devices = [d for d in site.devices if isinstance(d.source, ModbusSource)]

    async def poll(device_index: int) -> None:
        device = devices[device_index]
        source = device.source
        assert isinstance(source, ModbusSource)
        key = (source.host, source.port)
        endpoint = endpoints.setdefault(key, ModbusEndpoint(*key, timeout=2.0))
        requests = plan_requests(source.registers)
        await asyncio.sleep(interval * device_index / len(devices))
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                for request in requests:
                    await endpoint.read(request.table, request.address, request.count, source.unit)
                latencies.append(time.monotonic() - started)
            except Exception as exc:  # counted and reported
                failures.append(f"{device.id}: {exc}")
            await asyncio.sleep(max(interval - (time.monotonic() - started), 0))

    await asyncio.gather(*(poll(i) for i in range(len(devices))))
    for endpoint in endpoints.values():
        endpoint.close()


def baseline(url: str, messages: int, payload: bytes) -> float:
    """CPU seconds per message of a bare paho publisher (QoS 1, bounded window)."""
    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-fleet-baseline")
    client.connect(host, int(port))
    client.loop_start()
    started = time.process_time()
    window = []
    for index in range(messages):
        window.append(client.publish(f"bench/baseline/{index % 1000}", payload, qos=1))
        if len(window) >= 100:
            window.pop(0).wait_for_publish(10)
    for info in window:
        info.wait_for_publish(10)
    cpu = time.process_time() - started
    client.loop_stop()
    client.disconnect()
    return cpu / messages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--mqtt-url", help="use this broker instead of starting Mosquitto")
    args = parser.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # failures are counted instead
    with tempfile.TemporaryDirectory() as tmp:
        if args.mqtt_url:
            return run(args, args.mqtt_url, Path(tmp))
        with mosquitto(Path(tmp) / "mosquitto") as url:
            return run(args, url, Path(tmp))


def start_simulator(args: argparse.Namespace, url: str, config: Path) -> subprocess.Popen[bytes]:
    """``equipwatch simulate`` in its own process, once its config is written and its Modbus
    gateways listen."""
    command = [
        sys.executable, "-m", "equipwatch", "simulate", "--fleet", str(args.devices),
        "--interval", f"{args.interval}s", "--mqtt-url", url, "--write-config", str(config),
        "--stats-every", "60s",
    ]  # fmt: skip
    simulator = subprocess.Popen(command)
    while not config.exists() or not config.stat().st_size:
        if simulator.poll() is not None:
            raise SystemExit("the simulator exited before writing its config")
        time.sleep(0.1)
    site = load_config(config)
    for port in {d.source.port for d in site.devices if isinstance(d.source, ModbusSource)}:
        wait_for_port(port, timeout=30, process=simulator)
    return simulator


def run(args: argparse.Namespace, url: str, tmp: Path) -> int:
    config = tmp / "fleet.yaml"
    duration = args.minutes * 60
    counter = Counter(url)
    simulator = start_simulator(args, url, config)
    site = load_config(config)
    mqtt_ids = [d.id for d in site.devices if isinstance(d.source, MqttSource)]
    started = time.monotonic()
    until = started + duration
    samples: list[tuple[float, float, int]] = []
    latencies: list[float] = []
    failures: list[str] = []
    poller = threading.Thread(
        target=lambda: asyncio.run(poll_modbus(site, args.interval, until, latencies, failures))
    )
    poller.start()
    while time.monotonic() < until:
        cpu, rss = _proc(simulator.pid)
        samples.append((time.monotonic(), cpu, rss))
        time.sleep(min(10.0, max(until - time.monotonic(), 0.01)))
    cpu, rss = _proc(simulator.pid)
    samples.append((time.monotonic(), cpu, rss))
    poller.join()
    simulator.send_signal(signal.SIGINT)  # as Ctrl-C: every device says goodbye
    simulator.wait(timeout=60)
    counter.stop()

    window = (started + args.interval, until - args.interval)  # whole intervals only
    expected = (window[1] - window[0]) / args.interval
    counts, gaps = [], []
    for device_id in mqtt_ids:
        times = [t for t in counter.arrivals.get(device_id, []) if window[0] <= t <= window[1]]
        counts.append(len(times))
        gaps += [b - a for a, b in itertools.pairwise(times)]
    messages = sum(len(v) for v in counter.arrivals.values())
    sim_cpu = samples[-1][1] - samples[0][1]
    wall = samples[-1][0] - samples[0][0]
    fields = {f"field_{i}": 1234.5 for i in range(6)}
    payload = json.dumps({"ts": "2026-11-23T08:45:00.000+00:00", **fields}).encode()
    raw = baseline(url, 20_000, payload)
    per_message = sim_cpu / max(messages, 1)
    ports = {
        (d.source.host, d.source.port) for d in site.devices if isinstance(d.source, ModbusSource)
    }
    report = [
        f"devices: {len(site.devices)} ({len(mqtt_ids)} MQTT, "
        f"{len(site.devices) - len(mqtt_ids)} Modbus on {len(ports)} ports), "
        f"every {args.interval:g}s for {wall / 60:.1f} min",
        f"MQTT messages received: {messages}; per device in the window: min {min(counts)}, "
        f"median {statistics.median(counts)}, expected {expected:.0f}",
        f"largest gap between one device's messages: {max(gaps):.2f}s "
        f"(interval {args.interval:g}s)",
    ]
    if latencies:
        q = statistics.quantiles(latencies, n=100)
        report.append(
            f"Modbus polls answered: {len(latencies)}, failed: {len(failures)}; "
            f"latency p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms"
        )
    report += [
        f"simulator CPU: {sim_cpu / wall:.1%} of one core; "
        f"peak RSS {max(s[2] for s in samples) / 2**20:.0f} MiB",
        f"CPU per message: simulator {per_message * 1e6:.0f} us, "
        f"bare paho publisher {raw * 1e6:.0f} us, ratio {per_message / raw:.1f}x",
    ]
    behind = min(counts) < expected - 1 or max(gaps) > 2 * args.interval or bool(failures)
    report.append("RESULT: " + ("fell behind" if behind else "kept up"))
    print("\n".join(report))
    return 1 if behind else 0


if __name__ == "__main__":
    sys.exit(main())
