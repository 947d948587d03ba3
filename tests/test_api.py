"""The API over a real SQLite store: what it returns, and clear 4xx answers to bad requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.clock import ManualClock
from core.records import Reading, StatusChange
from core.store import SqliteStore
from tests.support import sample_site

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "api.sqlite") as opened:
        yield opened


@pytest.fixture
async def client(store: SqliteStore) -> AsyncIterator[tuple[httpx.AsyncClient, ManualClock]]:
    site = sample_site()
    clock = ManualClock(NOW)
    app = create_app(site=site, store=store, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http, clock


async def test_a_device_that_stopped_reporting_shows_offline_not_its_last_value(
    store: SqliteStore, client: tuple[httpx.AsyncClient, ManualClock]
) -> None:
    http, clock = client
    await store.write([Reading("autoclave-1", "cycles_total", 4490, NOW, raw=4490, width=32)])
    fresh = (await http.get("/api/v1/devices/autoclave-1")).json()
    assert fresh["status"] == "online"
    assert fresh["latest"]["cycles_total"] == {
        "value": 4490.0,
        "unit": "cycles",
        "kind": "counter",
        "ts": "2026-03-02T09:00:00Z",
        "quality": "good",
        "stale": False,
    }
    clock.advance(timedelta(seconds=7))  # three expected intervals of 2 s, and more
    silent = (await http.get("/api/v1/devices/autoclave-1")).json()
    assert silent["status"] == "offline"
    assert silent["latest"]["cycles_total"]["stale"] is True


async def test_a_status_change_to_offline_wins_over_recent_data(
    store: SqliteStore, client: tuple[httpx.AsyncClient, ManualClock]
) -> None:
    http, _ = client
    await store.write(
        [
            Reading("ups-1", "load_pct", 35, NOW),
            StatusChange("ups-1", False, NOW, "timeout: no answer"),
        ]
    )
    ups = (await http.get("/api/v1/devices/ups-1")).json()
    assert (ups["status"], ups["status_reason"]) == ("offline", "timeout: no answer")


async def test_devices_list_names_every_configured_device(
    client: tuple[httpx.AsyncClient, ManualClock],
) -> None:
    http, _ = client
    devices = (await http.get("/api/v1/devices")).json()
    assert [(d["id"], d["protocol"], d["status"]) for d in devices] == [
        ("autoclave-1", "mqtt", "unknown"),
        ("fridge-1", "mqtt", "unknown"),
        ("xray-1", "mqtt", "unknown"),
        ("pump-1", "mqtt", "unknown"),
        ("copier-1", "mqtt", "unknown"),
        ("ups-1", "modbus", "unknown"),
        ("compressor-1", "modbus", "unknown"),
    ]


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        ("/api/v1/devices/nope", 404, "no device with id 'nope'"),
        ("/api/v1/devices/ups-1/readings?metric=nope", 404, "has no metric 'nope'"),
        (
            "/api/v1/devices/ups-1/readings?start=2026-03-02T10:00:00Z&end=2026-03-02T09:00:00Z",
            400,
            "start must be before end",
        ),
        ("/api/v1/devices/ups-1/readings?start=2026-03-02T08:00:00", 400, "time zone offset"),
        ("/api/v1/devices/ups-1/readings?limit=0", 422, "query.limit"),
        ("/api/v1/devices/ups-1/readings?start=yesterday", 422, "query.start"),
        ("/api/v1/alarms?active=maybe", 422, "query.active"),
    ],
    ids=[
        "unknown-device",
        "unknown-metric",
        "reversed-range",
        "naive-time",
        "limit-too-small",
        "unparseable-time",
        "bad-boolean",
    ],
)
async def test_bad_requests_get_a_problem_with_a_reason(
    client: tuple[httpx.AsyncClient, ManualClock], path: str, status: int, detail: str
) -> None:
    http, _ = client
    response = await http.get(path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert detail in body["detail"]


async def test_readings_in_a_range(
    store: SqliteStore, client: tuple[httpx.AsyncClient, ManualClock]
) -> None:
    http, _ = client
    await store.write(
        [Reading("ups-1", "load_pct", float(m), NOW - timedelta(minutes=m)) for m in range(90)]
    )
    body = (await http.get("/api/v1/devices/ups-1/readings?metric=load_pct")).json()
    # the default range is the hour before now, half open: minutes 60 ago .. 1 ago
    assert len(body["readings"]) == 60
    assert body["readings"][0]["value"] == 60.0
    assert body["readings"][-1]["value"] == 1.0


async def test_openapi_documents_the_endpoints(
    client: tuple[httpx.AsyncClient, ManualClock],
) -> None:
    http, _ = client
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert {
        "/api/v1/devices",
        "/api/v1/devices/{device_id}",
        "/api/v1/devices/{device_id}/readings",
        "/api/v1/maintenance/due",
        "/api/v1/alarms",
    } <= set(paths)
    assert (await http.get("/docs")).status_code == 200


async def test_readyz_answers_503_with_the_failed_check(store: SqliteStore) -> None:
    checks = {"store": {"ok": False, "error": "connection refused"}}

    async def not_ready() -> tuple[bool, dict[str, Any]]:
        return False, checks

    app = create_app(site=sample_site(), store=store, clock=ManualClock(NOW), readiness=not_ready)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not ready", "checks": checks}
