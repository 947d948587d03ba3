"""Who may call what: every endpoint of the app, with every role and with no token.

The endpoints come from the app's own routes, and each one's roles from the ``require`` it
declares; a route without a sample request here, or without a role requirement, fails the
test, so a new endpoint cannot be left out of the matrix."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from api.app import routes_of
from api.auth import ALL_ROLES, Requirement
from core.db import WorkOrderDraft
from core.records import Reading
from tests.test_api_support import NOW, ApiEnv, api_env

PUBLIC = {("GET", "/healthz")}
"""Endpoints that need no token (the documentation is not an APIRoute, so not listed)."""


@dataclass
class Call:
    url: str
    json: dict[str, Any] | None = None
    ok: int = 200


Sample = Callable[[ApiEnv], Awaitable[Call]]
_serial = count(1)


async def _order(env: ApiEnv, state: str | None = None) -> int:
    order, _ = await env.records.open_work_order(
        WorkOrderDraft(kind="corrective", device_id="autoclave-1", title=f"t{next(_serial)}"), "x"
    )
    if state is not None:
        await env.records.update_work_order(order.id, actor="x", state=state)
    return order.id


async def _alarm(env: ApiEnv) -> int:
    alarm, _ = await env.records.raise_alarm("ups-1", f"fault:F{next(_serial)}", "major", "m", NOW)
    return alarm.id


def fixed(url: str) -> Sample:
    async def sample(_: ApiEnv) -> Call:
        return Call(url)

    return sample


async def observation(env: ApiEnv) -> Call:
    at = NOW - timedelta(minutes=1)
    await env.series.write([Reading("ups-1", "load_pct", 30.0, at)])
    ids = env.app.state.fhir_ids
    return Call(
        f"/fhir/Observation/{ids.observation('ups-1', 'load_pct', int(at.timestamp() * 1000))}"
    )


async def work_order(env: ApiEnv) -> Call:
    return Call(f"/api/v1/work-orders/{await _order(env)}")


async def task(env: ApiEnv) -> Call:
    return Call(f"/fhir/Task/{await _order(env)}")


async def open_order(_: ApiEnv) -> Call:
    return Call("/api/v1/work-orders", {"device_id": "ups-1", "title": f"t{next(_serial)}"}, ok=201)


async def start_order(env: ApiEnv) -> Call:
    return Call(f"/api/v1/work-orders/{await _order(env)}", {"state": "in_progress"})


async def complete_order(env: ApiEnv) -> Call:
    order = await _order(env, "in_progress")
    return Call(f"/api/v1/work-orders/{order}/complete", {"counters": {}})


async def alarm(env: ApiEnv) -> Call:
    return Call(f"/api/v1/alarms/{await _alarm(env)}")


async def acknowledge(env: ApiEnv) -> Call:
    return Call(f"/api/v1/alarms/{await _alarm(env)}/acknowledge")


async def clear(env: ApiEnv) -> Call:
    return Call(f"/api/v1/alarms/{await _alarm(env)}/clear")


SAMPLES: dict[tuple[str, str], Sample] = {
    ("GET", "/api/v1/me"): fixed("/api/v1/me"),
    ("GET", "/readyz"): fixed("/readyz"),
    ("GET", "/metrics"): fixed("/metrics"),
    ("GET", "/api/v1/devices"): fixed("/api/v1/devices"),
    ("GET", "/api/v1/devices/{device_id}"): fixed("/api/v1/devices/ups-1"),
    ("GET", "/api/v1/devices/{device_id}/readings"): fixed("/api/v1/devices/ups-1/readings"),
    ("GET", "/api/v1/devices/{device_id}/history"): fixed(
        "/api/v1/devices/ups-1/history?metric=load_pct"
    ),
    ("GET", "/api/v1/devices/{device_id}/faults"): fixed("/api/v1/devices/ups-1/faults"),
    ("GET", "/api/v1/devices/{device_id}/status-history"): fixed(
        "/api/v1/devices/ups-1/status-history"
    ),
    ("GET", "/api/v1/maintenance/plans"): fixed("/api/v1/maintenance/plans"),
    ("GET", "/api/v1/maintenance/due"): fixed("/api/v1/maintenance/due"),
    ("GET", "/api/v1/maintenance/forecasts"): fixed("/api/v1/maintenance/forecasts"),
    ("GET", "/api/v1/reports/pm-compliance"): fixed("/api/v1/reports/pm-compliance"),
    ("GET", "/api/v1/work-orders"): fixed("/api/v1/work-orders"),
    ("GET", "/api/v1/work-orders/{work_order_id}"): work_order,
    ("POST", "/api/v1/work-orders"): open_order,
    ("PATCH", "/api/v1/work-orders/{work_order_id}"): start_order,
    ("POST", "/api/v1/work-orders/{work_order_id}/complete"): complete_order,
    ("GET", "/api/v1/alarms"): fixed("/api/v1/alarms"),
    ("GET", "/api/v1/alarms/{alarm_id}"): alarm,
    ("POST", "/api/v1/alarms/{alarm_id}/acknowledge"): acknowledge,
    ("POST", "/api/v1/alarms/{alarm_id}/clear"): clear,
    ("GET", "/api/v1/audit"): fixed("/api/v1/audit"),
    ("GET", "/api/v1/dead-letters"): fixed("/api/v1/dead-letters"),
    ("GET", "/fhir/metadata"): fixed("/fhir/metadata"),
    ("GET", "/fhir/Device"): fixed("/fhir/Device"),
    ("GET", "/fhir/Device/{device_id}"): fixed("/fhir/Device/ups-1"),
    ("GET", "/fhir/DeviceMetric"): fixed("/fhir/DeviceMetric"),
    ("GET", "/fhir/DeviceMetric/{metric_id}"): fixed("/fhir/DeviceMetric/ups-1.load-pct"),
    ("GET", "/fhir/Observation"): fixed("/fhir/Observation?subject=Device/ups-1"),
    ("GET", "/fhir/Observation/{observation_id}"): observation,
    ("GET", "/fhir/Task"): fixed("/fhir/Task"),
    ("GET", "/fhir/Task/{task_id}"): task,
}

EXPECTED_ROLES = {
    ("POST", "/api/v1/work-orders"): {"technician", "admin"},
    ("PATCH", "/api/v1/work-orders/{work_order_id}"): {"technician", "admin"},
    ("POST", "/api/v1/work-orders/{work_order_id}/complete"): {"technician", "admin"},
    ("POST", "/api/v1/alarms/{alarm_id}/acknowledge"): {"technician", "manager", "admin"},
    ("POST", "/api/v1/alarms/{alarm_id}/clear"): {"admin"},
    ("GET", "/api/v1/reports/pm-compliance"): {"manager", "admin"},
}
"""The roles that differ from "everyone reads": the issue's access rules, spelled out."""


def requirements(dependant: Dependant) -> list[Requirement]:
    found = [dependant.call] if isinstance(dependant.call, Requirement) else []
    return found + [r for d in dependant.dependencies for r in requirements(d)]


@dataclass
class Endpoint:
    method: str
    path: str
    roles: set[str] = field(default_factory=set)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    async with api_env(tmp_path) as opened:
        yield opened


def endpoints(env: ApiEnv) -> list[Endpoint]:
    found = []
    for path, route in routes_of(env.app):
        if not isinstance(route, APIRoute):
            continue  # the documentation: /openapi.json, /docs, /redoc
        for method in sorted(route.methods or ()):
            needed = requirements(route.dependant)
            assert len(needed) <= 1, f"{method} {path} requires roles twice"
            roles: set[str] = set(needed[0].roles) if needed else set()
            found.append(Endpoint(method, path, roles))
    return found


async def test_every_endpoint_admits_exactly_its_roles(env: ApiEnv) -> None:
    found = endpoints(env)
    keys = {(e.method, e.path) for e in found}
    assert keys - PUBLIC == set(SAMPLES), "every endpoint needs a sample call here"
    for endpoint in found:
        key = (endpoint.method, endpoint.path)
        if key in PUBLIC:
            assert endpoint.roles == set(), f"{key} is public but requires roles"
        else:
            assert endpoint.roles, f"{key} does not require a role"
            assert endpoint.roles == EXPECTED_ROLES.get(key, set(ALL_ROLES)), key

    wrong: list[str] = []
    for endpoint in found:
        key = (endpoint.method, endpoint.path)
        if key in PUBLIC:
            response = await env.http.request(endpoint.method, endpoint.path)
            if response.status_code != 200:
                wrong.append(f"{key} without a token: {response.status_code}")
            continue
        call = await SAMPLES[key](env)
        anonymous = await env.http.request(endpoint.method, call.url, json=call.json)
        if anonymous.status_code != 401 or "www-authenticate" not in anonymous.headers:
            wrong.append(f"{key} without a token: {anonymous.status_code}")
        for role in ALL_ROLES:
            call = await SAMPLES[key](env)
            response = await env.http.request(
                endpoint.method, call.url, json=call.json, headers=env.auth(role)
            )
            expected = call.ok if role in endpoint.roles else 403
            if response.status_code != expected:
                wrong.append(f"{key} as {role}: {response.status_code}, not {expected}")
    assert wrong == []


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        ("Bearer ew_0123456789ab_not-the-secret", "the bearer token is unknown or revoked"),
        ("Bearer nonsense", "the bearer token is unknown or revoked"),
        ("Basic dG9tOnB3", "the Authorization header must be: Bearer <token>"),
    ],
    ids=["wrong-secret", "malformed", "other-scheme"],
)
async def test_a_bad_credential_is_refused_with_a_reason(
    env: ApiEnv, header: str, detail: str
) -> None:
    response = await env.http.get("/api/v1/devices", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json()["detail"] == detail
    fhir = await env.http.get("/fhir/Device", headers={"Authorization": header})
    assert fhir.status_code == 401
    assert fhir.json()["issue"][0]["code"] == "login"


async def test_a_revoked_token_stops_working_at_once(env: ApiEnv) -> None:
    assert (await env.get("/api/v1/me", role="technician")).json() == {
        "name": "tom",
        "role": "technician",
    }
    await env.records.revoke_token(name="tom")
    refused = await env.get("/api/v1/me", role="technician")
    assert (refused.status_code, refused.json()["detail"]) == (
        401,
        "the bearer token is unknown or revoked",
    )


async def test_a_forbidden_role_is_told_which_roles_may(env: ApiEnv) -> None:
    response = await env.http.post(
        "/api/v1/work-orders",
        headers=env.auth("integration"),
        json={"device_id": "ups-1", "title": "x"},
    )
    assert response.status_code == 403
    assert response.json()["detail"] == (
        "cmms has role integration; this needs one of: technician, admin"
    )
