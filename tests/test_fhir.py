"""The FHIR R4 view: every resource it emits validates against the R4 models of
``fhir.resources`` (its R4B package: R4's resources as amended, the same for these four) and
uses the codes R4 requires; searches page through Bundles; errors are OperationOutcomes."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class

from core.db import WorkOrderDraft
from core.records import Quality, Reading, StatusChange
from tests.test_api_support import NOW, ApiEnv, api_env

FHIR_JSON = "application/fhir+json"

# codes from R4's required bindings (fhir.resources checks the shapes, not these)
REQUIRED_CODES: dict[tuple[str, str], set[str]] = {
    ("Device", "status"): {"active", "inactive", "entered-in-error", "unknown"},
    ("DeviceMetric", "category"): {"measurement", "setting", "calculation", "unspecified"},
    ("DeviceMetric", "operationalStatus"): {"on", "off", "standby", "entered-in-error"},
    ("Observation", "status"): {
        "registered", "preliminary", "final", "amended", "corrected", "cancelled",
        "entered-in-error", "unknown",
    },
    ("Task", "status"): {
        "draft", "requested", "received", "accepted", "rejected", "ready", "cancelled",
        "in-progress", "on-hold", "failed", "completed", "entered-in-error",
    },
    ("Task", "intent"): {
        "unknown", "proposal", "plan", "order", "original-order", "reflex-order",
        "filler-order", "instance-order", "option",
    },
    ("Task", "priority"): {"routine", "urgent", "asap", "stat"},
}  # fmt: skip
DEVICE_NAME_TYPES = {
    "udi-label-name",
    "user-friendly-name",
    "patient-reported-name",
    "manufacturer-name",
    "model-name",
    "other",
}


def valid(resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` after checking it against its R4 model and R4's required codes."""
    kind = resource["resourceType"]
    get_fhir_model_class(kind).model_validate(resource)
    for (owner, name), codes in REQUIRED_CODES.items():
        if owner == kind and name in resource:
            assert resource[name] in codes, f"{kind}.{name} = {resource[name]!r}"
    if kind == "Device":
        assert {n["type"] for n in resource.get("deviceName", [])} <= DEVICE_NAME_TYPES
    return resource


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    async with api_env(tmp_path) as opened:
        await opened.series.write(
            [
                *(
                    Reading("autoclave-1", "cycles_total", 4400 + i, NOW - timedelta(minutes=i))
                    for i in range(1, 6)
                ),
                Reading("autoclave-1", "chamber_temp_c", 134.1, NOW - timedelta(minutes=1)),
                Reading(
                    "autoclave-1",
                    "pressure_kpa",
                    301.0,
                    NOW - timedelta(minutes=1),
                    quality=Quality.UNCERTAIN,
                ),
                Reading("ups-1", "load_pct", 35.0, NOW - timedelta(seconds=1)),
                StatusChange("xray-1", False, NOW - timedelta(hours=1), "last will"),
            ]
        )
        records = opened.records
        await records.open_work_order(
            WorkOrderDraft(
                kind="pm",
                device_id="autoclave-1",
                title="Autoclave service",
                plan_id="autoclave-1-service",
                cycle=0,
                assignee="tom",
                due_from=NOW - timedelta(days=10),
                due_to=NOW - timedelta(days=1),
                notes="bring the gasket kit",
            ),
            "rules",
        )
        done, _ = await records.open_work_order(
            WorkOrderDraft(kind="corrective", device_id="ups-1", title="Battery swap"), "tom"
        )
        await records.update_work_order(done.id, actor="tom", state="in_progress")
        await records.complete_work_order(
            done.id,
            actor="tom",
            completed_at=NOW,
            counters={"line_fail_count": 12},
            problem_code="BATT",
        )
        yield opened


async def fhir(env: ApiEnv, url: str, **params: Any) -> httpx.Response:
    response = await env.http.get(url, headers=env.auth("integration"), params=params or None)
    assert response.headers["content-type"] == FHIR_JSON
    return response


async def search(env: ApiEnv, url: str, **params: Any) -> list[dict[str, Any]]:
    """Every resource of a search, following the Bundles' next links; each Bundle valid."""
    found: list[dict[str, Any]] = []
    response = await fhir(env, url, **params)
    while True:
        assert response.status_code == 200, response.text
        page = valid(response.json())
        assert page["type"] == "searchset"
        found += [entry["resource"] for entry in page.get("entry", [])]
        links = {link["relation"]: link["url"] for link in page["link"]}
        if "next" not in links:
            return found
        response = await fhir(env, links["next"])


async def test_every_resource_the_view_emits_is_valid_r4(env: ApiEnv) -> None:
    seen: Counter[str] = Counter()
    statement = (await fhir(env, "/fhir/metadata")).json()
    valid(statement)
    seen[statement["resourceType"]] += 1
    devices = await search(env, "/fhir/Device", _count=2)
    assert len(devices) == len(env.site.devices)
    for device in devices:
        valid(device)
        read = (await fhir(env, f"/fhir/Device/{device['id']}")).json()
        assert valid(read) == device
        for observation in await search(
            env, "/fhir/Observation", subject=f"Device/{device['id']}", _count=3
        ):
            valid(observation)
            again = (await fhir(env, f"/fhir/Observation/{observation['id']}")).json()
            assert valid(again) == observation
            seen["Observation"] += 1
    for metric in await search(env, "/fhir/DeviceMetric", _count=7):
        valid(metric)
        assert valid((await fhir(env, f"/fhir/DeviceMetric/{metric['id']}")).json()) == metric
        seen["DeviceMetric"] += 1
    for task in await search(env, "/fhir/Task", _count=1):
        valid(task)
        assert valid((await fhir(env, f"/fhir/Task/{task['id']}")).json()) == task
        seen["Task"] += 1
    seen["Device"] = len(devices)
    assert seen == {
        "CapabilityStatement": 1,
        "Device": 7,
        "Observation": 8,
        "DeviceMetric": sum(
            1 for d in env.site.devices for k in d.metrics.values() if k.value != "fault"
        ),
        "Task": 2,
    }


async def test_a_device_carries_its_facts_status_and_pm_intervals(env: ApiEnv) -> None:
    autoclave = valid((await fhir(env, "/fhir/Device/autoclave-1")).json())
    assert autoclave["identifier"][0]["value"] == "autoclave-1"
    assert (autoclave["manufacturer"], autoclave["modelNumber"], autoclave["serialNumber"]) == (
        "Melag",
        "Vacuklav 31 B+",
        "VK31-204518",
    )
    # silent for a minute, three times its 2 s interval and more
    assert autoclave["statusReason"][0]["coding"][0]["code"] == "offline"
    ups = valid((await fhir(env, "/fhir/Device/ups-1")).json())
    assert ups["statusReason"][0]["coding"][0]["code"] == "online"
    assert autoclave["location"] == {"display": "Sterilisation room"}
    properties = {p["type"]["text"]: p for p in autoclave["property"]}
    assert properties["Risk class"]["valueCode"][0]["text"] == "medium"
    intervals = sorted(
        (q["value"], q.get("code"), q["unit"])
        for p in autoclave["property"]
        for q in p.get("valueQuantity", [])
    )
    assert intervals == [(1, "wk", "weeks"), (6, "mo", "months"), (500, None, "cycles")]
    xray = valid((await fhir(env, "/fhir/Device/xray-1")).json())
    assert xray["statusReason"][0]["coding"][0]["code"] == "offline"
    assert xray["statusReason"][0]["text"] == "last will"
    found = await search(env, "/fhir/Device", identifier="urn:equipwatch:asset-tag|ups-1")
    assert [d["id"] for d in found] == ["ups-1"]
    kinds = await search(env, "/fhir/Device", type="autoclave")
    assert [d["id"] for d in kinds] == ["autoclave-1"]


async def test_observations_by_device_metric_and_date(env: ApiEnv) -> None:
    subject = "Device/autoclave-1"
    everything = await search(env, "/fhir/Observation", subject=subject)
    assert len(everything) == 7
    first = everything[0]
    assert first["subject"] == {"reference": "Device/autoclave-1"}
    assert first["device"] == {"reference": "DeviceMetric/autoclave-1.cycles-total"}
    assert first["valueQuantity"] == {"value": 4405.0, "unit": "cycles"}
    assert first["effectiveDateTime"] == "2026-03-02T08:55:00Z"
    pressure = next(o for o in everything if o["code"]["text"] == "pressure_kpa")
    assert pressure["status"] == "preliminary"
    temperature = next(o for o in everything if o["code"]["text"] == "chamber_temp_c")
    assert temperature["valueQuantity"]["code"] == "Cel"

    in_window = await env.http.get(
        "/fhir/Observation",
        headers=env.auth("integration"),
        params=[
            ("subject", subject),
            ("code", "cycles_total"),
            ("date", "ge2026-03-02T08:56:00Z"),
            ("date", "lt2026-03-02T08:59:00Z"),
        ],
    )
    values = [e["resource"]["valueQuantity"]["value"] for e in in_window.json()["entry"]]
    assert values == [4404.0, 4403.0, 4402.0]
    by_metric = await search(
        env, "/fhir/Observation", device="DeviceMetric/autoclave-1.cycles-total", _count=2
    )
    assert len(by_metric) == 5
    day = await search(env, "/fhir/Observation", subject=subject, date="2026-03-01")
    assert day == []


async def test_tasks_show_overdue_and_the_completion(env: ApiEnv) -> None:
    tasks = {t["description"]: t for t in await search(env, "/fhir/Task")}
    service = tasks["Autoclave service"]
    assert (service["status"], service["businessStatus"]["text"]) == ("ready", "overdue")
    assert service["focus"]["reference"] == "Device/autoclave-1"
    assert service["restriction"]["period"] == {
        "start": "2026-02-20T09:00:00Z",
        "end": "2026-03-01T09:00:00Z",
    }
    assert service["owner"] == {"display": "tom"}
    swap = tasks["Battery swap"]
    assert (swap["status"], swap["executionPeriod"]) == (
        "completed",
        {"end": "2026-03-02T09:00:00Z"},
    )
    assert {"type": {"text": "counter at service: line_fail_count"}, "valueDecimal": 12.0} in swap[
        "output"
    ]
    ready = await search(env, "/fhir/Task", status="ready", focus="Device/autoclave-1")
    assert [t["description"] for t in ready] == ["Autoclave service"]


@pytest.mark.parametrize(
    ("url", "status", "code", "diagnostics"),
    [
        ("/fhir/Device/nope", 404, "not-found", "no Device/nope"),
        ("/fhir/Observation/nope-1", 404, "not-found", "no Observation/nope-1"),
        ("/fhir/Task/12x", 404, "not-found", "no Task/12x"),
        ("/fhir/Observation", 400, "invalid", "needs subject=Device/<id>"),
        (
            "/fhir/Observation?subject=Device/ups-1&date=yesterday",
            400,
            "invalid",
            "date=yesterday: give [ge|gt|le|lt|eq]YYYY-MM-DD",
        ),
        ("/fhir/Observation?subject=Patient/1", 400, "invalid", "not a reference to a Device"),
        ("/fhir/Device?_count=0", 422, "invalid", "query._count"),
        ("/fhir/Task?_cursor=xyz", 400, "invalid", "not a cursor of the fhir-task listing"),
    ],
    ids=[
        "unknown-device",
        "unknown-observation",
        "task-id",
        "no-subject",
        "bad-date",
        "wrong-reference",
        "count",
        "cursor",
    ],
)
async def test_errors_are_operation_outcomes(
    env: ApiEnv, url: str, status: int, code: str, diagnostics: str
) -> None:
    response = await fhir(env, url)
    assert response.status_code == status
    outcome = valid(response.json())
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == code
    assert diagnostics in outcome["issue"][0]["diagnostics"]
