"""The InfluxDB stream: line protocol, a real VictoriaMetrics reading back what arrived, and the
error classification (retry, split, drop) against a server that answers as told."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from core.records import DeadLetter, FaultEvent, Quality, Reading, Record, StatusChange
from core.store.influx import InfluxSink, SinkUnavailable, to_lines
from core.store.outbox import Outbox
from tests.support import wait_for
from tests.vm import VictoriaMetrics, victoria_metrics

NOW = datetime.now(UTC).replace(microsecond=123000) - timedelta(hours=1)
KINDS = {"autoclave-1": "autoclave", "ups-1": "ups"}


def _sink(url: str) -> InfluxSink:
    return InfluxSink(url, token="t", org="o", bucket="b", site="Riverside", kinds=KINDS)


def test_readings_of_one_device_and_time_share_a_point() -> None:
    records: list[Record] = [
        Reading("autoclave-1", "cycles_total", 4491, NOW),
        Reading("autoclave-1", "chamber_temp_c", 134.2, NOW),
        Reading("autoclave-1", "chamber_temp_c", 33.0, NOW + timedelta(seconds=2)),
        Reading("ups-1", "load_pct", 35, NOW, Quality.UNCERTAIN),
        FaultEvent("autoclave-1", "DOOR OPEN", NOW, True),
        StatusChange("ups-1", False, NOW, "timeout"),
    ]
    ns = int(NOW.timestamp() * 1_000_000) * 1000
    tags = "site=Riverside,device=autoclave-1,kind=autoclave"
    assert sorted(to_lines(records, site="Riverside", kinds=KINDS)) == sorted(
        [
            f"autoclave,{tags} cycles_total=4491.0,chamber_temp_c=134.2 {ns}",
            f"autoclave,{tags} chamber_temp_c=33.0 {ns + 2_000_000_000}",
            f"ups,site=Riverside,device=ups-1,kind=ups,quality=uncertain load_pct=35.0 {ns}",
            f"fault,{tags},code=DOOR\\ OPEN active=1i {ns}",
            f"status,site=Riverside,device=ups-1,kind=ups online=0i {ns}",
        ]
    )


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    with victoria_metrics(tmp_path / "vm") as server:
        yield server


async def test_victoria_metrics_holds_exactly_what_was_written(vm: VictoriaMetrics) -> None:
    sink = _sink(vm.url)
    try:
        await sink.write(
            [
                Reading("autoclave-1", "cycles_total", 4491, NOW),
                Reading("autoclave-1", "cycles_total", 4492, NOW + timedelta(minutes=45)),
                Reading("autoclave-1", "chamber_temp_c", 134.2, NOW),
                FaultEvent("autoclave-1", "DOOR", NOW, True),
                FaultEvent("autoclave-1", "DOOR", NOW + timedelta(minutes=1), False),
                StatusChange("ups-1", False, NOW, "timeout"),
            ]
        )
    finally:
        sink.close()
    exported = {
        (s["metric"]["__name__"], s["metric"].get("code")): (
            s["values"],
            s["timestamps"],
            s["metric"],
        )
        for s in vm.export('{site="Riverside"}')
    }
    ms = int(NOW.timestamp() * 1000)
    assert exported[("autoclave_cycles_total", None)][:2] == ([4491, 4492], [ms, ms + 2_700_000])
    assert exported[("autoclave_chamber_temp_c", None)][:2] == ([134.2], [ms])
    assert exported[("fault_active", "DOOR")][:2] == ([1, 0], [ms, ms + 60_000])
    assert exported[("status_online", None)][:2] == ([0], [ms])
    assert exported[("autoclave_cycles_total", None)][2] == {
        "__name__": "autoclave_cycles_total",
        "site": "Riverside",
        "device": "autoclave-1",
        "kind": "autoclave",
    }
    assert sink.points_written == 5  # the two readings at NOW share one point


async def test_an_unreachable_server_is_worth_retrying(tmp_path: Path) -> None:
    server = VictoriaMetrics(tmp_path / "vm")  # never started: nothing listens on its port
    sink = _sink(server.url)
    try:
        with pytest.raises(SinkUnavailable):
            await sink.write([Reading("ups-1", "load_pct", 35, NOW)])
    finally:
        sink.close()


class _Scripted(BaseHTTPRequestHandler):
    """Answers each write with the next scripted status; 413 for bodies over ``limit``."""

    script: ClassVar[list[tuple[int, dict[str, str]]]] = []
    limit = 10**9
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if len(body) > self.limit:
            status, headers = 413, dict[str, str]()
        elif self.script:
            status, headers = self.script.pop(0)
        else:
            status, headers = 204, {}
        if status == 204:
            type(self).bodies.append(body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[_Scripted]]]:
    handler = type("Handler", (_Scripted,), {"script": [], "bodies": [], "limit": 10**9})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    thread.join()


def _readings(count: int) -> list[Record]:
    return [Reading("ups-1", "load_pct", i, NOW + timedelta(seconds=i)) for i in range(count)]


async def test_429_and_5xx_are_retried_honouring_retry_after(
    scripted: tuple[str, type[_Scripted]],
) -> None:
    url, handler = scripted
    handler.script[:] = [(429, {"Retry-After": "7"}), (503, {})]
    sink = _sink(url)
    try:
        with pytest.raises(SinkUnavailable) as busy:
            await sink.write(_readings(3))
        assert busy.value.retry_after == 7.0
        with pytest.raises(SinkUnavailable) as down:
            await sink.write(_readings(3))
        assert down.value.retry_after is None
        await sink.write(_readings(3))
    finally:
        sink.close()
    assert len(handler.bodies) == 1
    assert sink.points_written == 3


async def test_a_batch_too_large_is_split_until_it_fits(
    scripted: tuple[str, type[_Scripted]],
) -> None:
    url, handler = scripted
    handler.limit = 400  # bytes: a few points per request
    sink = _sink(url)
    try:
        await sink.write(_readings(40))
    finally:
        sink.close()
    sent = b"\n".join(handler.bodies).decode().splitlines()
    assert len(sent) == 40  # every point once, in order
    assert [line.split(" ")[1] for line in sent] == [f"load_pct={i}.0" for i in range(40)]
    assert all(len(body) <= 400 for body in handler.bodies)
    assert sink.splits > 0


async def test_other_4xx_drop_the_batch_and_count_it(
    scripted: tuple[str, type[_Scripted]],
) -> None:
    url, handler = scripted
    handler.script[:] = [(400, {})]
    sink = _sink(url)
    try:
        await sink.write(_readings(5))  # no exception: retrying would fail the same way
        await sink.write(_readings(2))
    finally:
        sink.close()
    assert sink.dropped == {"400": 5}
    assert sink.points_written == 2


async def test_an_outage_loses_nothing_through_the_outbox(tmp_path: Path) -> None:
    """Records keep arriving while VictoriaMetrics is down; once it is back every point arrives,
    in order, exactly once."""
    server = VictoriaMetrics(tmp_path / "vm")
    server.start()
    sink = _sink(server.url)
    written: list[int] = []

    async def handler(records: Sequence[Record | DeadLetter]) -> None:
        await sink.write(records)
        written.extend(int(r.value) for r in records if isinstance(r, Reading))

    batch = 0

    def readings(count: int) -> list[Record]:
        nonlocal batch
        batch += 1
        start = (batch - 1) * count
        return [
            Reading("ups-1", "line_fail_count", i, NOW + timedelta(seconds=i))
            for i in range(start, start + count)
        ]

    try:
        async with Outbox(
            tmp_path / "outbox.sqlite",
            max_records=10_000,
            max_age_seconds=3600,
            consumers=["influx"],
        ) as outbox:
            drain = asyncio.create_task(
                outbox.drain(
                    "influx", handler, poll_interval=0.05, retry_initial=0.05, retry_cap=0.2
                )
            )
            try:
                await outbox.append(readings(10))
                await wait_for(_count(written, 10), timeout=10, what="the first batch written")
                server.stop()  # the outage
                for _ in range(5):
                    await outbox.append(readings(10))
                assert (await outbox.stats()).depth == 50  # held, not lost
                assert len(written) == 10
                server.start()
                await wait_for(_count(written, 60), timeout=30, what="the backlog to drain")
            finally:
                drain.cancel()
                await asyncio.gather(drain, return_exceptions=True)
        [series] = server.export('{__name__="ups_line_fail_count"}')
        assert series["values"] == list(range(60))  # every point once, in order
        assert written == list(range(60))
    finally:
        sink.close()
        server.stop()


def _count(items: list[int], expected: int) -> Callable[[], Awaitable[bool]]:
    async def reached() -> bool:
        return len(items) >= expected

    return reached
