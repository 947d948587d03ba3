"""At least once, end to end, at QoS 1: a stream survives a broker restart and a collector killed
without warning, with every message stored exactly once. Each test runs its own Mosquitto,
with persistence, so that it can be restarted on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.mqtt import MqttCollector, parse_mqtt_url
from collector.writer import BatchWriter, StoreTarget
from core.clock import SystemClock
from core.config import SiteConfig, parse_config
from core.store import SqliteStore
from tests.support import Mosquitto, wait_for

DEVICES = 5
MESSAGES = 3000  # in all, spread over the devices
BASE_MS = 1_795_420_800_000
# Mosquitto keeps at most 1000 queued messages per session by default and drops the rest: a
# collector that is away longer than that needs a broker configured for it (see the report)
BROKER = {"max_queued_messages": 100_000}


def site_yaml(url: str, directory: Path) -> str:
    devices = "".join(
        f"""\
  - id: pump-{index}
    kind: infusion_pump
    source:
      protocol: mqtt
      topic: stream/pump-{index}
      timestamp_field: ts
      fields:
        - {{field: seq, kind: counter, width: 32}}
"""
        for index in range(DEVICES)
    )
    return f"""\
mqtt:
  url: {url}
  client_id: durability-collector
  backoff_max: 500ms
store:
  path: {directory / "site.sqlite"}
  batch_size: 200
  flush_interval: 50ms
api:
  port: 0
devices:
{devices}"""


class StreamPublisher:
    """Publishes the stream at QoS 1 from paho's network thread, at most ``window`` messages
    unacknowledged. paho keeps what the broker has not acknowledged and sends it again after
    reconnecting, so a broker restart loses nothing on this side."""

    def __init__(self, url: str, *, window: int = 50) -> None:
        host, port, _ = parse_mqtt_url(url)
        self.published = 0
        self.acknowledged = 0
        self._window = threading.Semaphore(window)
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="durability-publisher", clean_session=False
        )
        self._client.on_publish = self._on_publish
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        self._client.connect(host, port)
        self._thread = threading.Thread(target=self._publish_all, name="test-publisher")
        self._failure: BaseException | None = None

    def _on_publish(self, *_: object) -> None:
        self.acknowledged += 1
        self._window.release()

    def start(self) -> None:
        self._client.loop_start()
        self._thread.start()

    def _publish_all(self) -> None:
        try:
            for seq in range(MESSAGES):
                if not self._window.acquire(timeout=60):
                    raise TimeoutError("the broker acknowledged nothing for a minute")
                payload = b'{"ts": %d, "seq": %d}' % (BASE_MS + seq, seq)
                # while the broker is away paho queues the message and says NO_CONN
                self._client.publish(f"stream/pump-{seq % DEVICES}", payload, qos=1)
                self.published += 1
        except BaseException as exc:
            self._failure = exc

    def stop(self) -> None:
        self._thread.join(timeout=60)
        self._client.loop_stop()
        self._client.disconnect()
        if self._failure is not None:
            raise self._failure


def stored_sequence(database: Path) -> list[int]:
    """Every stored reading's sequence number, read as another process would."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            return [int(row[0]) for row in db.execute("SELECT value FROM readings")]
    except sqlite3.OperationalError:
        return []  # not created yet


def until_stored(database: Path, count: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return len(await asyncio.to_thread(stored_sequence, database)) >= count

    return probe


async def wait_for_every_message(database: Path) -> None:
    try:
        await wait_for(until_stored(database, MESSAGES), timeout=90, what="every message")
    except AssertionError:
        assert_every_message_once(database)  # says what is missing
        raise


def assert_every_message_once(database: Path) -> None:
    stored = stored_sequence(database)
    assert len(stored) == len(set(stored)), "a message was stored twice"
    missing = sorted(set(range(MESSAGES)) - set(stored))
    assert not missing, f"{len(missing)} messages lost, e.g. {missing[:10]}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker", settings=BROKER)
    broker.start()
    yield broker
    broker.stop()


async def test_broker_restart_mid_stream_loses_and_repeats_nothing(
    broker: Mosquitto, tmp_path: Path
) -> None:
    site: SiteConfig = parse_config(site_yaml(broker.url, tmp_path), "site.yaml")
    database = site.store.path
    async with SqliteStore(database) as store:
        writer = BatchWriter(
            StoreTarget(store), batch_size=site.store.batch_size, flush_interval=0.05
        )
        collector = MqttCollector(
            site.devices, settings=site.mqtt, sink=writer, clock=SystemClock()
        )
        tasks = [asyncio.create_task(writer.run()), asyncio.create_task(collector.run())]
        publisher = StreamPublisher(broker.url)
        try:
            await asyncio.wait_for(collector.connected.wait(), timeout=15)
            publisher.start()
            await wait_for(until_stored(database, MESSAGES // 3), timeout=60, what="a third")
            await asyncio.to_thread(broker.stop)
            stored_when_stopped = len(await asyncio.to_thread(stored_sequence, database))
            assert stored_when_stopped < MESSAGES, "the stream ended before the restart"
            await asyncio.to_thread(broker.start)
            await wait_for_every_message(database)
        finally:
            await asyncio.to_thread(publisher.stop)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert collector.mqtt_stats.connections >= 2, "the collector never lost its broker"
    assert publisher.acknowledged >= MESSAGES
    assert_every_message_once(database)


async def test_collector_killed_mid_stream_loses_and_repeats_nothing(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """`equipwatch run` is killed (SIGKILL) while the stream flows and started again: what it
    had not acknowledged, the broker delivers again to its persistent session."""
    config = tmp_path / "site.yaml"
    config.write_text(site_yaml(broker.url, tmp_path))
    database = tmp_path / "site.sqlite"

    async def start(log: Path) -> asyncio.subprocess.Process:
        output = await asyncio.to_thread(log.open, "wb")
        with output:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "equipwatch", "run", "--config", str(config),
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

        async def subscribed() -> bool:
            text = await asyncio.to_thread(log.read_text)
            if process.returncode is not None:
                raise AssertionError(f"equipwatch run exited:\n{text}")
            return "subscribed to" in text

        await wait_for(subscribed, timeout=30, what="equipwatch run to subscribe")
        return process

    first = await start(tmp_path / "first.log")
    publisher = StreamPublisher(broker.url)
    second: asyncio.subprocess.Process | None = None
    try:
        publisher.start()
        await wait_for(until_stored(database, MESSAGES // 3), timeout=60, what="a third")
        first.send_signal(signal.SIGKILL)
        await asyncio.wait_for(first.wait(), timeout=10)
        stored_when_killed = len(await asyncio.to_thread(stored_sequence, database))
        assert stored_when_killed < MESSAGES, "the stream ended before the kill"
        second = await start(tmp_path / "second.log")
        await wait_for_every_message(database)
    finally:
        await asyncio.to_thread(publisher.stop)
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), timeout=20)
    assert second is not None
    log = await asyncio.to_thread((tmp_path / "second.log").read_text)
    assert second.returncode == 0, log
    assert first.returncode == -signal.SIGKILL
    assert_every_message_once(database)
