"""The REST API over a real SQLite store and records database: what it returns, paging,
work orders and alarms through their lifecycles (audited), and a clear 4xx for bad requests."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from core.db import WorkOrderDraft
from core.records import DeadLetter, FaultEvent, Reading, StatusChange
from tests.test_api_support import NOW, ApiEnv, api_env, save_meter_readings


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    async with api_env(tmp_path) as opened:
        yield opened


async def all_pages(env: ApiEnv, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a listing, page after page; fails on a repeated cursor."""
    items: list[dict[str, Any]] = []
    cursors: set[str] = set()
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await env.get(path, **query)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
        assert cursor not in cursors
        cursors.add(cursor)


# --- devices -------------------------------------------------------------------------------------


async def test_a_device_that_stopped_reporting_shows_offline_and_its_values_stale(
    env: ApiEnv,
) -> None:
    await env.series.write([Reading("autoclave-1", "cycles_total", 4490, NOW, raw=4490, width=32)])
    fresh = (await env.get("/api/v1/devices/autoclave-1")).json()
    assert fresh["health"]["status"] == "online"
    assert fresh["health"]["last_seen"] == "2026-03-02T09:00:00Z"
    assert fresh["latest"]["cycles_total"] == {
        "value": 4490.0,
        "unit": "cycles",
        "kind": "counter",
        "ts": "2026-03-02T09:00:00Z",
        "quality": "good",
        "stale": False,
    }
    env.clock.advance(timedelta(seconds=7))  # three expected intervals of 2 s, and more
    silent = (await env.get("/api/v1/devices/autoclave-1")).json()
    assert silent["health"]["status"] == "offline"
    assert silent["health"]["status_reason"] == "no data since 2026-03-02T09:00:00+00:00"
    assert silent["latest"]["cycles_total"]["stale"] is True


async def test_a_status_change_to_offline_wins_over_recent_data(env: ApiEnv) -> None:
    await env.series.write(
        [Reading("ups-1", "load_pct", 35, NOW), StatusChange("ups-1", False, NOW, "timeout")]
    )
    health = (await env.get("/api/v1/devices/ups-1")).json()["health"]
    assert (health["status"], health["status_reason"]) == ("offline", "timeout")


async def test_device_list_pages_by_id_and_filters(env: ApiEnv) -> None:
    ids = [d["id"] for d in await all_pages(env, "/api/v1/devices", limit=2)]
    assert ids == sorted(d.id for d in env.site.devices)
    first = (await env.get("/api/v1/devices", limit=2)).json()
    assert len(first["items"]) == 2
    assert first["next_cursor"] is not None

    await env.series.write([Reading("ups-1", "load_pct", 35, NOW)])
    online = (await env.get("/api/v1/devices", status="online")).json()["items"]
    assert [d["id"] for d in online] == ["ups-1"]
    kinds = (await env.get("/api/v1/devices", kind="autoclave")).json()["items"]
    assert [d["id"] for d in kinds] == ["autoclave-1"]
    nothing = (await env.get("/api/v1/devices", kind="patient_monitor", status="online")).json()
    assert nothing == {"items": [], "next_cursor": None}
    assert (await env.get("/api/v1/devices", location="Nowhere")).json()["items"] == []
    high = [d["id"] for d in await all_pages(env, "/api/v1/devices", risk_class="high", limit=1)]
    assert high == sorted(d.id for d in env.site.devices if d.risk_class == "high")
    assert high  # the sample has high-risk devices, so the filter is exercised


async def test_device_health_counts_open_alarms_and_names_the_next_maintenance(
    env: ApiEnv,
) -> None:
    await env.records.raise_alarm("autoclave-1", "fault:DOOR", "major", "door open", NOW)
    await env.records.raise_alarm("autoclave-1", "fault:LOW_TEMP", "minor", "cold", NOW)
    cleared, _ = await env.records.raise_alarm("autoclave-1", "fault:X", "minor", "x", NOW)
    await env.records.clear_alarm_by_id(cleared.id, "ada", NOW)
    # 4,460 cycles: inside the 50-cycle lead of the service due at 4,500
    readings = [
        Reading("autoclave-1", "cycles_total", 4400 + 10 * i, NOW - timedelta(hours=6 - i))
        for i in range(7)
    ]
    await env.series.write(readings)
    await save_meter_readings(env.site, env.records, "autoclave-1-service", readings)
    health = (await env.get("/api/v1/devices/autoclave-1")).json()["health"]
    assert health["open_alarms"] == 2
    assert health["next_maintenance"]["plan_id"] == "autoclave-1-service"
    assert health["next_maintenance"]["status"] == "upcoming"
    assert health["next_maintenance"]["due_value"] == 4500
    usage = {u["plan_id"]: u for u in health["usage_since_service"]}
    assert usage["autoclave-1-service"]["usage"] == 60.0
    assert usage["autoclave-1-service"]["every"] == 500


async def test_readings_page_through_every_reading_once(env: ApiEnv) -> None:
    # three metrics sharing each time, so that pages split a time's readings
    await env.series.write(
        [
            Reading("ups-1", metric, float(m), NOW - timedelta(minutes=m))
            for m in range(1, 41)
            for metric in ("battery_temp_c", "input_voltage_v", "load_pct")
        ]
    )
    items = await all_pages(env, "/api/v1/devices/ups-1/readings", limit=7)
    keys = [(r["ts"], r["metric"]) for r in items]
    assert len(set(keys)) == len(keys) == 120
    assert keys == sorted(keys)
    one = await all_pages(env, "/api/v1/devices/ups-1/readings", metric="load_pct", limit=9)
    # the default range is the hour before now, half open
    assert [r["value"] for r in one] == [float(m) for m in range(40, 0, -1)]


async def test_readings_as_csv_with_a_link_to_the_next_page(env: ApiEnv) -> None:
    await env.series.write(
        [Reading("ups-1", "load_pct", float(m), NOW - timedelta(minutes=m)) for m in range(1, 6)]
    )
    response = await env.get("/api/v1/devices/ups-1/readings", format="csv", limit=3)
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["ts", "metric", "value", "quality"]
    assert [r[2] for r in rows[1:]] == ["5.0", "4.0", "3.0"]
    assert 'rel="next"' in response.headers["link"]
    next_url = response.headers["link"].split(">")[0].lstrip("<")
    rest = await env.http.get(next_url, headers=env.auth("integration"))
    assert [r[2] for r in list(csv.reader(io.StringIO(rest.text)))[1:]] == ["2.0", "1.0"]


async def test_history_aggregates_per_step_and_agrees_with_the_store(env: ApiEnv) -> None:
    start = NOW - timedelta(hours=2)
    await env.series.write(
        [
            Reading("fridge-1", "temperature_c", 4.0 + (s % 7) / 10, start + timedelta(seconds=s))
            for s in range(0, 7200, 30)
        ]
    )
    params: dict[str, Any] = {"metric": "temperature_c", "step": 600, "aggregate": "max"}
    body = (await env.get("/api/v1/devices/fridge-1/history", **params)).json()
    expected = await env.series.history(
        "fridge-1", "temperature_c", start=NOW - timedelta(days=1), end=NOW,
        step_seconds=600, aggregate="max",
    )  # fmt: skip
    assert [(b["start"], b["value"]) for b in body["items"]] == [
        (b.start.isoformat().replace("+00:00", "Z"), b.value) for b in expected
    ]
    assert len(body["items"]) == 12
    assert body["unit"] == "°C"
    paged = await all_pages(env, "/api/v1/devices/fridge-1/history", **params, limit=5)
    assert [(b["start"], b["value"]) for b in paged] == [
        (b["start"], b["value"]) for b in body["items"]
    ]
    counted = await env.get(
        "/api/v1/devices/fridge-1/history", metric="temperature_c", step=3600,
        aggregate="count", format="csv",
    )  # fmt: skip
    assert list(csv.reader(io.StringIO(counted.text)))[1:] == [
        ["2026-03-02T07:00:00+00:00", "120.0"],
        ["2026-03-02T08:00:00+00:00", "120.0"],
    ]


async def test_faults_and_status_history(env: ApiEnv) -> None:
    await env.series.write(
        [
            FaultEvent("autoclave-1", "DOOR", NOW - timedelta(hours=3)),
            FaultEvent("autoclave-1", "DOOR", NOW - timedelta(hours=2), active=False),
            FaultEvent("ups-1", "ON_BATTERY", NOW - timedelta(hours=1)),
            StatusChange("autoclave-1", False, NOW - timedelta(hours=5), "last will"),
            StatusChange("autoclave-1", True, NOW - timedelta(hours=4), "online"),
        ]
    )
    faults = await all_pages(env, "/api/v1/devices/autoclave-1/faults", limit=1)
    assert [(f["code"], f["active"]) for f in faults] == [("DOOR", True), ("DOOR", False)]
    changes = await all_pages(env, "/api/v1/devices/autoclave-1/status-history", limit=1)
    assert [(c["online"], c["reason"]) for c in changes] == [
        (False, "last will"),
        (True, "online"),
    ]


# --- maintenance ---------------------------------------------------------------------------------


async def test_maintenance_due_lists_what_falls_due_in_the_window(env: ApiEnv) -> None:
    readings = [
        Reading("autoclave-1", "cycles_total", 4400 + 60 * i, NOW - timedelta(days=3 - i))
        for i in range(4)
    ]  # 4,580 cycles: past 4,500
    await save_meter_readings(env.site, env.records, "autoclave-1-service", readings)
    await env.records.open_due(
        "autoclave-1-service", "autoclave-1", 0, "meter", "4500 cycles", None, 4500.0, NOW
    )
    due = (await env.get("/api/v1/maintenance/due", within=0)).json()["items"]
    service = next(d for d in due if d["plan_id"] == "autoclave-1-service")
    assert (service["status"], service["due_value"], service["usage"]) == ("due", 4500.0, 180.0)
    assert service["occurrence_id"] is not None
    assert due[0]["status"] in ("overdue", "due")  # most pressing first
    only_due = (await env.get("/api/v1/maintenance/due", status="due")).json()["items"]
    assert {d["status"] for d in only_due} == {"due"}
    # the weekly spore test falls due within 8 days (first seen now), not within 6
    plans = {
        d["plan_id"] for d in (await env.get("/api/v1/maintenance/due", within=8)).json()["items"]
    }
    assert "spore-test.autoclave-1" in plans
    soon = (await env.get("/api/v1/maintenance/due", within=6)).json()["items"]
    assert "spore-test.autoclave-1" not in {d["plan_id"] for d in soon}


async def test_forecast_from_the_recent_rate(env: ApiEnv) -> None:
    # 40 cycles a day for 5 days, from 4,200: at 4,400 the service (4,500) is 2.5 days away
    readings = [
        Reading("autoclave-1", "cycles_total", 4200 + 40 * day, NOW - timedelta(days=5 - day))
        for day in range(6)
    ]
    await save_meter_readings(env.site, env.records, "autoclave-1-service", readings)
    forecasts = (await env.get("/api/v1/maintenance/forecasts")).json()["items"]
    service = next(f for f in forecasts if f["plan_id"] == "autoclave-1-service")
    assert service["forecast_at"] == "2026-03-04T21:00:00Z"
    assert forecasts[0]["plan_id"] == "autoclave-1-service"  # soonest first
    plans = await all_pages(env, "/api/v1/maintenance/plans", limit=3)
    assert [p["id"] for p in plans] == sorted(env.app.state.catalogue.plans)
    standing = next(p for p in plans if p["id"] == "autoclave-1-service")["standing"]
    assert (standing["usage"], standing["source"]) == (200.0, "rules")


async def test_without_the_engine_due_comes_from_the_records(tmp_path: Path) -> None:
    async with api_env(tmp_path, standings=False) as env:
        await env.records.open_due(
            "autoclave-1-service", "autoclave-1", 0, "meter", "at 4500", None, 4500.0, NOW
        )
        due = (await env.get("/api/v1/maintenance/due")).json()["items"]
        assert [(d["plan_id"], d["status"], d["due_value"]) for d in due] == [
            ("autoclave-1-service", "due", 4500.0)
        ]
        refused = await env.get("/api/v1/maintenance/forecasts")
        assert refused.status_code == 503
        assert "rules engine" in refused.json()["detail"]


# --- work orders ---------------------------------------------------------------------------------


async def test_a_work_order_from_opening_to_completion_is_audited(env: ApiEnv) -> None:
    tech = env.auth("technician")
    created = await env.http.post(
        "/api/v1/work-orders",
        headers=tech,
        json={"device_id": "autoclave-1", "title": "Door seal leaks", "priority": "high"},
    )
    assert created.status_code == 201, created.text
    order = created.json()
    assert (order["state"], order["kind"], order["priority"]) == ("open", "corrective", "high")
    url = f"/api/v1/work-orders/{order['id']}"
    started = await env.http.patch(
        url, headers=tech, json={"state": "in_progress", "assignee": "tom"}
    )
    assert started.json()["state"] == "in_progress"
    done = await env.http.post(
        f"{url}/complete",
        headers=tech,
        json={
            "counters": {"cycles_total": 4512},
            "problem_code": "SEAL",
            "cause_code": "WEAR",
            "remedy_code": "REPLACED",
        },
    )
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["state"], body["counters"], body["remedy_code"]) == (
        "done", {"cycles_total": 4512.0}, "REPLACED"
    )  # fmt: skip
    assert body["completed_at"] == "2026-03-02T09:00:00Z"
    audit = (await env.get("/api/v1/audit", entity="work_order", entity_id=str(order["id"]))).json()
    assert [(e["actor"], e["action"]) for e in audit["items"]] == [
        ("tom", "opened"),
        ("tom", "in_progress"),
        ("tom", "done"),
    ]
    again = await env.http.patch(url, headers=tech, json={"state": "in_progress"})
    assert again.status_code == 409
    assert again.json()["detail"] == (
        f"work order {order['id']} cannot go from done to in_progress "
        "(from done it can go to: none: done is final)"
    )


async def test_a_pm_order_for_an_occurrence_is_opened_once(env: ApiEnv) -> None:
    body = {
        "device_id": "autoclave-1",
        "title": "Service",
        "kind": "pm",
        "plan_id": "autoclave-1-service",
        "cycle": 0,
    }
    first = await env.http.post("/api/v1/work-orders", headers=env.auth("admin"), json=body)
    second = await env.http.post("/api/v1/work-orders", headers=env.auth("admin"), json=body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    orders = await all_pages(env, "/api/v1/work-orders", kind="pm")
    assert [o["id"] for o in orders] == [first.json()["id"]]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"device_id": "nope", "title": "x"}, "device_id: no device with id 'nope'"),
        (
            {"device_id": "autoclave-1", "title": "x", "kind": "pm", "plan_id": "ups-1-battery"},
            "plan_id: device 'autoclave-1' has no plan 'ups-1-battery'",
        ),
        (
            {
                "device_id": "autoclave-1",
                "title": "x",
                "kind": "pm",
                "plan_id": "autoclave-1-service",
            },
            "a pm work order names its plan occurrence: plan_id and cycle",
        ),
        ({"device_id": "autoclave-1", "title": ""}, "body.title: String should have at least"),
        ({"device_id": "autoclave-1", "title": "x", "owner": "me"}, "body.owner: Extra inputs"),
        (
            {
                "device_id": "autoclave-1",
                "title": "x",
                "due_from": "2026-03-05T00:00:00Z",
                "due_to": "2026-03-04T00:00:00Z",
            },
            "due_to: 2026-03-04T00:00:00+00:00 is before due_from",
        ),
    ],
    ids=["unknown-device", "foreign-plan", "pm-without-cycle", "empty-title", "extra", "window"],
)
async def test_a_work_order_that_cannot_be_opened_says_why(
    env: ApiEnv, body: dict[str, Any], detail: str
) -> None:
    response = await env.http.post("/api/v1/work-orders", headers=env.auth("admin"), json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]


async def test_completing_with_a_counter_the_device_lacks_is_refused(env: ApiEnv) -> None:
    order, _ = await env.records.open_work_order(
        WorkOrderDraft(kind="corrective", device_id="autoclave-1", title="t"), "x"
    )
    await env.records.update_work_order(order.id, actor="x", state="in_progress")
    response = await env.http.post(
        f"/api/v1/work-orders/{order.id}/complete",
        headers=env.auth("technician"),
        json={"counters": {"chamber_temp_c": 1}},
    )
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "counters.chamber_temp_c: not a counter of device 'autoclave-1' "
        "(its counters: cycles_total, failed_cycles)"
    )


# --- alarms, dead letters ------------------------------------------------------------------------


async def test_alarms_are_acknowledged_and_cleared_by_name(env: ApiEnv) -> None:
    alarm, _ = await env.records.raise_alarm(
        "ups-1", "fault:ON_BATTERY", "major", "on battery", NOW
    )
    acked = await env.http.post(
        f"/api/v1/alarms/{alarm.id}/acknowledge", headers=env.auth("manager")
    )
    assert (acked.json()["acknowledged"], acked.json()["acknowledged_by"]) == (True, "mia")
    cleared = await env.http.post(f"/api/v1/alarms/{alarm.id}/clear", headers=env.auth("admin"))
    assert (cleared.json()["active"], cleared.json()["cleared_at"]) == (
        False,
        "2026-03-02T09:00:00Z",
    )
    active = (await env.get("/api/v1/alarms", active="true")).json()["items"]
    assert active == []
    audit = (await env.get("/api/v1/audit", entity="alarm")).json()["items"]
    assert [(e["actor"], e["action"]) for e in audit] == [
        ("rules", "raised"),
        ("mia", "acknowledged"),
        ("ada", "cleared"),
    ]
    missing = await env.http.post("/api/v1/alarms/999/acknowledge", headers=env.auth("admin"))
    assert (missing.status_code, missing.json()["detail"]) == (404, "no alarm 999")


async def test_dead_letters_newest_first_in_pages(env: ApiEnv) -> None:
    await env.series.write_dead_letters(
        [DeadLetter("mqtt", f"t/{i}", "{", "bad_json", "x", NOW) for i in range(5)]
    )
    letters = await all_pages(env, "/api/v1/dead-letters", limit=2)
    assert [d["topic"] for d in letters] == [f"t/{i}" for i in range(4, -1, -1)]


# --- refusals ------------------------------------------------------------------------------------


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
        ("/api/v1/devices/ups-1/readings?start=2026-03-02T08:00:00", 422, "timezone"),
        ("/api/v1/devices/ups-1/readings?start=0001-01-01T00:00:00Z", 400, "outside the times"),
        ("/api/v1/devices/ups-1/readings?limit=0", 422, "query.limit"),
        ("/api/v1/devices/ups-1/readings?start=yesterday", 422, "query.start"),
        ("/api/v1/devices/ups-1/history", 422, "query.metric: Field required"),
        ("/api/v1/devices/ups-1/history?metric=load_pct&aggregate=median", 422, "query.aggregate"),
        ("/api/v1/alarms?active=maybe", 422, "query.active"),
        ("/api/v1/alarms?cursor=bm9wZQ", 400, "not a cursor of the alarms listing"),
        ("/api/v1/work-orders/99999999999", 422, "path.work_order_id"),
        ("/api/v1/work-orders/5", 404, "no work order 5"),
        ("/api/v1/nowhere", 404, "Not Found"),
    ],
    ids=[
        "unknown-device",
        "unknown-metric",
        "reversed-range",
        "naive-time",
        "ancient-time",
        "limit-too-small",
        "unparseable-time",
        "history-without-metric",
        "unknown-aggregate",
        "bad-boolean",
        "foreign-cursor",
        "id-too-large",
        "unknown-work-order",
        "unknown-path",
    ],
)
async def test_bad_requests_get_a_problem_with_a_reason(
    env: ApiEnv, path: str, status: int, detail: str
) -> None:
    response = await env.get(path, role="integration")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert detail in body["detail"]


async def test_a_cursor_of_one_listing_is_refused_by_another(env: ApiEnv) -> None:
    cursor = (await env.get("/api/v1/devices", limit=1)).json()["next_cursor"]
    refused = await env.get("/api/v1/work-orders", cursor=cursor)
    assert refused.status_code == 400


# --- health, metrics, docs -----------------------------------------------------------------------


async def test_readyz_answers_503_with_the_failed_check(env: ApiEnv) -> None:
    checks = {"store": {"ok": False, "error": "connection refused"}}

    async def not_ready() -> tuple[bool, dict[str, Any]]:
        return False, checks

    app = create_app(
        site=env.site, series=env.series, records=env.records, clock=env.clock, readiness=not_ready
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        response = await http.get("/readyz", headers=env.auth("integration"))
        assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert response.status_code == 503
    assert response.json() == {"status": "not ready", "checks": checks}


async def test_metrics_add_the_api_counters_to_the_process_counters(tmp_path: Path) -> None:
    async def process() -> bytes:
        return (
            b"# TYPE equipwatch_collector_messages counter\nequipwatch_collector_messages_total 7\n"
        )

    async with api_env(tmp_path) as env:
        app = create_app(
            site=env.site, series=env.series, records=env.records, clock=env.clock, metrics=process
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as http:
            for _ in range(3):
                await http.get("/api/v1/devices/autoclave-1", headers=env.auth("admin"))
            await http.get("/api/v1/devices/nope", headers=env.auth("admin"))
            await http.get("/api/v1/devices")
            text = (await http.get("/metrics", headers=env.auth("integration"))).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    route = "/api/v1/devices/{device_id}"
    assert samples[("equipwatch_collector_messages_total", ())] == 7
    key = (
        "equipwatch_api_requests_total",
        (("method", "GET"), ("route", route), ("status", "200")),
    )
    assert samples[key] == 3
    assert samples[(key[0], (("method", "GET"), ("route", route), ("status", "404")))] == 1
    unauthorised = (("method", "GET"), ("route", "/api/v1/devices"), ("status", "401"))
    assert samples[(key[0], unauthorised)] == 1
    count = ("equipwatch_api_request_duration_seconds_count", (("method", "GET"), ("route", route)))
    assert samples[count] == 4


async def test_openapi_documents_every_endpoint_and_its_errors(env: ApiEnv) -> None:
    document = (await env.http.get("/openapi.json")).json()
    paths = document["paths"]
    assert {
        "/api/v1/devices",
        "/api/v1/devices/{device_id}/history",
        "/api/v1/maintenance/due",
        "/api/v1/work-orders/{work_order_id}/complete",
        "/api/v1/alarms/{alarm_id}/acknowledge",
        "/fhir/Observation",
    } <= set(paths)
    refusal = paths["/api/v1/devices"]["get"]["responses"]["401"]["content"]
    assert list(refusal) == ["application/problem+json"]
    fhir = paths["/fhir/Device"]["get"]["responses"]["404"]["content"]
    assert list(fhir) == ["application/fhir+json"]
    assert (await env.http.get("/docs")).status_code == 200
