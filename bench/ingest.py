"""Ingest throughput of the MQTT source, end to end, against a bare paho subscriber.

    .venv/bin/python -m bench.ingest [--messages 100000] [--devices 100] [--qos 0|1] [--profile]

Starts Mosquitto on a free port and, for each QoS asked for, publishes the same stream twice:
small JSON messages (``{"ts": <ms>, "v": <number>}``, one reading each) from one C publisher per
device (``mosquitto_pub -l``; a paho publisher process with a bounded window when it is not
installed). The first time a bare paho subscriber in this process counts them; the second time
equipwatch takes them: MqttCollector -> BatchWriter -> SqliteStore (a temporary file), counting
the readings whose transaction has committed. It prints both rates and their ratio.

The rates run from the first message received to the last one counted, so they measure the
subscriber, not the publishers' start-up. At QoS 1 equipwatch acknowledges each message only
after its commit, so its rate includes that round trip; the bare subscriber acknowledges on
receipt.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.base import OnDurable
from collector.mqtt import MqttCollector
from collector.writer import BatchWriter, StoreTarget
from core.clock import SystemClock
from core.config import Device, MqttSettings, MqttSource, PayloadField, StoreSettings
from core.records import DeadLetter, Reading, Record
from core.store import SqliteStore
from tests.support import mosquitto

RECEIVE_MAXIMUM = 10_000  # the same window for both subscribers (MQTT 5 Receive Maximum)
WRITER_QUEUE = 50_000  # BatchWriter's max_pending default: put() waits beyond it
PUBLISH_WINDOW = 100  # QoS 1 messages a paho publisher keeps unacknowledged, at most
BASE_MS = 1_790_000_000_000  # the first message's timestamp; each message adds a millisecond

# Mosquitto drops messages for a subscriber that falls behind by more than this many queued
# messages (default 1000); the bench measures the subscribers, so the broker keeps them all
BROKER = {"max_queued_messages": 0}


def topic(device: int) -> str:
    return f"bench/dev{device:04d}/telemetry"


def lines(device: int, count: int) -> bytes:
    """One device's messages, one JSON object a line, each with its own timestamp."""
    return b"".join(
        b'{"ts": %d, "v": %.1f}\n' % (BASE_MS + index, 20 + (index % 100) / 10)
        for index in range(count)
    )


def devices(count: int) -> list[Device]:
    return [
        Device(
            id=f"dev{index:04d}",
            kind="vaccine_fridge",
            source=MqttSource(
                protocol="mqtt",
                topic=topic(index),
                timestamp_field="ts",
                fields=[PayloadField(field="v", metric="temperature_c")],
            ),
        )
        for index in range(count)
    ]


# --- publishers ------------------------------------------------------------------------------


def start_publishers(
    url: str, qos: int, device_count: int, per_device: int, tmp: Path
) -> list[subprocess.Popen[bytes]]:
    """One publisher process per device, all at once."""
    host, port = url.removeprefix("mqtt://").split(":")
    c_publisher = shutil.which("mosquitto_pub")
    processes = []
    for device in range(device_count):
        if c_publisher is not None:
            feed = tmp / f"dev{device:04d}.jsonl"
            if not feed.exists():
                feed.write_bytes(lines(device, per_device))
            with feed.open("rb") as stdin:
                command = [
                    c_publisher, "-h", host, "-p", port, "-q", str(qos), "-t", topic(device),
                    "-l", "-i", f"bench-pub-{device}", "-M", str(PUBLISH_WINDOW),
                ]  # fmt: skip
                processes.append(subprocess.Popen(command, stdin=stdin))
        else:
            command = [
                sys.executable, "-m", "bench.ingest", "--publisher", url,
                "--qos", str(qos), "--device", str(device), "--messages", str(per_device),
            ]  # fmt: skip
            processes.append(subprocess.Popen(command))
    return processes


def paho_publisher(url: str, qos: int, device: int, count: int) -> None:
    """Publish one device's messages with paho, keeping at most PUBLISH_WINDOW in flight (paho
    refuses more than 65,535 unacknowledged messages)."""
    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{device}")
    client.max_inflight_messages_set(PUBLISH_WINDOW)
    client.connect(host, int(port))
    client.loop_start()
    window: list[mqtt.MQTTMessageInfo] = []
    for line in lines(device, count).splitlines():
        window.append(client.publish(topic(device), line, qos=qos))
        if len(window) >= PUBLISH_WINDOW:
            window.pop(0).wait_for_publish(30)
    for info in window:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()


def wait_publishers(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.wait(timeout=600) != 0:
            raise SystemExit(f"a publisher exited with {process.returncode}")


# --- (a) the bare paho subscriber ------------------------------------------------------------


def raw_rate(url: str, qos: int, args: argparse.Namespace, tmp: Path) -> float:
    """Messages per second a bare paho subscriber receives (MQTT 5, the same receive window)."""
    host, port = url.removeprefix("mqtt://").split(":")
    total: int = args.devices * args.per_device
    received = 0
    first = last = 0.0
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe("bench/+/telemetry", qos=qos)

    def on_subscribe(*_: object) -> None:
        subscribed.set()

    def on_message(c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        nonlocal received, first, last
        received += 1
        if received == 1:
            first = time.perf_counter()
        if received == total:
            last = time.perf_counter()
            c.disconnect()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.ReceiveMaximum = RECEIVE_MAXIMUM
    client.connect(host, int(port), clean_start=True, properties=properties)
    loop = threading.Thread(target=client.loop_forever, name="bench-raw", daemon=True)
    loop.start()
    try:
        if not subscribed.wait(10):
            raise SystemExit("the bare subscriber did not subscribe")
        wait_publishers(start_publishers(url, qos, args.devices, args.per_device, tmp))
        loop.join(timeout=120)
        if received != total:
            raise SystemExit(f"the bare subscriber received {received} of {total} messages")
    finally:
        client.disconnect()
    return total / (last - first)


# --- (b) equipwatch ----------------------------------------------------------------------------


class CountingSink:
    """Passes everything to the writer and counts the readings whose commit it is told about."""

    def __init__(self, writer: BatchWriter, target: int) -> None:
        self._writer = writer
        self._target = target
        self.durable = 0
        self.first = 0.0
        self.done = asyncio.Event()
        self.done_at = 0.0

    async def put(self, records: Sequence[Record], on_durable: OnDurable | None = None) -> None:
        if not self.first:
            self.first = time.perf_counter()
        readings = sum(isinstance(record, Reading) for record in records)

        def durable() -> None:
            if on_durable is not None:
                on_durable()
            self.durable += readings
            if self.durable >= self._target and not self.done.is_set():
                self.done_at = time.perf_counter()
                self.done.set()

        await self._writer.put(records, on_durable=durable)

    async def dead_letter(self, letter: DeadLetter, on_durable: OnDurable | None = None) -> None:
        await self._writer.dead_letter(letter, on_durable)


async def equipwatch_rate(
    url: str, qos: int, args: argparse.Namespace, tmp: Path
) -> tuple[float, int]:
    """Readings per second equipwatch commits, and how many batches it took."""
    total: int = args.devices * args.per_device
    store_settings = StoreSettings()
    async with SqliteStore(tmp / f"bench-qos{qos}.sqlite") as store:
        writer = BatchWriter(
            StoreTarget(store),
            batch_size=args.batch_size or store_settings.batch_size,
            flush_interval=store_settings.flush_interval,
        )
        sink = CountingSink(writer, total)
        settings = MqttSettings(
            url=url,
            client_id=f"bench-equipwatch-{qos}",
            qos=qos,  # type: ignore[arg-type]
            session_expiry=0,
            receive_maximum=RECEIVE_MAXIMUM,
        )
        collector = MqttCollector(
            devices(args.devices), settings=settings, sink=sink, clock=SystemClock()
        )
        async with asyncio.TaskGroup() as tasks:
            running = [
                tasks.create_task(writer.run(), name="bench.writer"),
                tasks.create_task(collector.run(), name="bench.collector"),
            ]
            await asyncio.wait_for(collector.connected.wait(), timeout=10)
            profiler = start_profiler(args, tmp, qos)
            cpu_before = thread_cpu()
            depths: list[int] = []
            sampler = tasks.create_task(sample_depth(writer, depths), name="bench.depth")
            # started from a thread, as for the bare subscriber: a hundred forks would stall the
            # event loop, which is what is measured
            publishers = await asyncio.to_thread(
                start_publishers, url, qos, args.devices, args.per_device, tmp
            )
            await asyncio.wait_for(sink.done.wait(), timeout=600)
            sampler.cancel()
            stop_profiler(profiler)
            wall = sink.done_at - sink.first
            cpu = {
                name: seconds - cpu_before.get(name, 0.0) for name, seconds in thread_cpu().items()
            }
            print(
                f"        this process's CPU over those {wall:.1f}s: "
                + ", ".join(f"{name} {seconds / wall:.0%}" for name, seconds in cpu.items())
                + f"; writer queue depth mean {sum(depths) / max(len(depths), 1):,.0f}, "
                f"max {max(depths, default=0):,} (full at {WRITER_QUEUE:,})",
                flush=True,
            )
            await asyncio.to_thread(wait_publishers, publishers)
            for task in running:
                task.cancel()
        stats = collector.mqtt_stats
        if qos and stats.acks_sent < total:
            raise SystemExit(f"only {stats.acks_sent} of {total} messages were acknowledged")
        return total / (sink.done_at - sink.first), writer.batches


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads so far: the event loop's, and the others' (the
    SQLite writer's thread above all)."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        kind = "event loop" if task.name == str(os.getpid()) else "other threads"
        totals[kind] = totals.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return totals


async def sample_depth(writer: BatchWriter, depths: list[int]) -> None:
    while True:
        depths.append(writer.depth)
        await asyncio.sleep(0.1)


def start_profiler(args: argparse.Namespace, tmp: Path, qos: int) -> subprocess.Popen[bytes] | None:
    if not args.profile:
        return None
    spy = Path(sys.executable).with_name("py-spy")
    suffix = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[args.profile_format]
    output = Path(args.profile) / f"ingest-qos{qos}.{suffix}"
    print(f"profiling into {output}", flush=True)
    command = [
        str(spy), "record", "-o", str(output), "--pid", str(os.getpid()), "--rate", "200",
        "--threads", "--format", args.profile_format,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is not None:
        profiler.send_signal(2)  # SIGINT: py-spy writes its flame graph and exits
        profiler.wait(timeout=60)


# --- the report ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--qos", type=int, choices=(0, 1), action="append")
    parser.add_argument("--batch-size", type=int, help="BatchWriter batch size (default: site's)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy profiles of (b) into DIR")
    parser.add_argument(
        "--profile-format", choices=("flamegraph", "raw", "speedscope"), default="flamegraph"
    )
    parser.add_argument("--publisher", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--device", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher:
        paho_publisher(args.publisher, args.qos[0], args.device, args.messages)
        return 0
    logging.basicConfig(level=logging.WARNING)
    args.per_device = max(1, args.messages // args.devices)
    total = args.per_device * args.devices
    publisher = "mosquitto_pub -l" if shutil.which("mosquitto_pub") else "paho (Python)"
    print(
        f"{total} messages from {args.devices} devices, publisher {publisher}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        with mosquitto(tmp / "mosquitto", settings=BROKER) as url:
            for qos in args.qos or [0, 1]:
                raw = raw_rate(url, qos, args, tmp)
                print(f"QoS {qos}: bare paho subscriber   {raw:>9,.0f} msg/s", flush=True)
                ours, batches = asyncio.run(equipwatch_rate(url, qos, args, tmp))
                print(
                    f"QoS {qos}: equipwatch end to end {ours:>9,.0f} readings/s "
                    f"({batches} batches)  ratio {ours / raw:.2f}",
                    flush=True,
                )
                results.append((qos, raw, ours))
    print("\ntarget: >= 0.6 x the bare subscriber and >= 8,000 readings/s at each QoS")
    ok = True
    for qos, raw, ours in results:
        met = ours >= 0.6 * raw and ours >= 8000
        ok &= met
        print(f"  QoS {qos}: {ours / raw:.2f} x, {ours:,.0f}/s: {'met' if met else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
