"""The page over the API's real stores, through the app in-process: sessions, escaping, CSRF
and roles. The browser test (test_page_browser.py) drives the same page in Chromium."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from api.auth import Role
from api.page import COOKIE
from core.config import parse_config
from core.db import WorkOrderDraft
from core.records import Reading
from equipwatch.cli import sample_config_path
from tests.test_api_support import NOW, ApiEnv, api_env

HOSTILE = "<script>alert('x')</script>"
PAGES = ["/", "/devices/autoclave-1", "/maintenance", "/alarms", "/work-orders", "/manager"]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    text = (
        sample_config_path()
        .read_text()
        .replace("location: Sterilisation room", f'location: "{HOSTILE}"')
    )
    async with api_env(tmp_path, site=parse_config(text, "site.yaml")) as opened:
        yield opened


@asynccontextmanager
async def browser(env: ApiEnv) -> AsyncIterator[httpx.AsyncClient]:
    """A client of its own, keeping its own cookies, as a browser would."""
    transport = httpx.ASGITransport(app=env.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def sign_in(client: httpx.AsyncClient, env: ApiEnv, role: Role) -> str:
    """Signs in as ``role``; returns the session's CSRF token, read off a page's form."""
    response = await client.post("/login", data={"token": env.tokens[role], "next": "/"})
    assert response.status_code == 303, response.text
    page = await client.get("/alarms")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


async def active_alarm(env: ApiEnv, message: str = "door seal worn") -> int:
    alarm, _ = await env.records.raise_alarm("autoclave-1", "fault:E12", "major", message, NOW)
    return alarm.id


async def started_order(env: ApiEnv) -> int:
    draft = WorkOrderDraft(kind="corrective", device_id="autoclave-1", title="replace seal")
    order, _ = await env.records.open_work_order(draft, "mia")
    await env.records.update_work_order(order.id, actor="tom", state="in_progress")
    return order.id


async def test_login_sets_an_httponly_samesite_session_cookie(env: ApiEnv) -> None:
    async with browser(env) as client:
        response = await client.post(
            "/login", data={"token": env.tokens["technician"], "next": "/alarms"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/alarms"
        cookie = response.headers["set-cookie"]
        attributes = {part.strip().lower() for part in cookie.split(";")}
        assert cookie.startswith(f"{COOKIE}=")
        assert {"httponly", "samesite=lax", "path=/"} <= attributes
        assert "secure" not in attributes  # plain http: a Secure cookie would never come back
        # the cookie is a random id, not the token
        assert env.tokens["technician"] not in cookie
        fleet = await client.get("/")
        assert fleet.status_code == 200
        assert "tom (technician)" in fleet.text
        assert 'data-device="autoclave-1"' in fleet.text


async def test_an_unknown_token_signs_nobody_in(env: ApiEnv) -> None:
    async with browser(env) as client:
        response = await client.post("/login", data={"token": "ew_0123456789ab_wrong"})
        assert response.status_code == 401
        assert "unknown or revoked" in response.text
        assert "set-cookie" not in response.headers
        assert (await client.get("/")).status_code == 303


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_needs_a_session(env: ApiEnv, path: str) -> None:
    async with browser(env) as client:
        response = await client.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=%2F")


async def test_an_action_without_a_session_changes_nothing(env: ApiEnv) -> None:
    alarm_id = await active_alarm(env)
    async with browser(env) as client:
        response = await client.post(f"/alarms/{alarm_id}/acknowledge", data={"csrf": "x"})
    assert response.status_code == 303
    alarm = await env.records.alarm(alarm_id)
    assert alarm is not None
    assert not alarm.acknowledged


async def test_a_login_never_redirects_off_the_site(env: ApiEnv) -> None:
    async with browser(env) as client:
        response = await client.post(
            "/login", data={"token": env.tokens["manager"], "next": "//evil.example/x"}
        )
    assert response.headers["location"] == "/"


async def test_device_text_and_alarm_messages_are_escaped(env: ApiEnv) -> None:
    await active_alarm(env, message=HOSTILE)
    async with browser(env) as client:
        await sign_in(client, env, "technician")
        for path in ("/", "/devices/autoclave-1", "/alarms"):
            text = (await client.get(path)).text
            assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in text, path
            assert "<script>" not in text, path


async def test_a_form_without_the_sessions_csrf_token_is_refused(env: ApiEnv) -> None:
    alarm_id = await active_alarm(env)
    async with browser(env) as client:
        csrf = await sign_in(client, env, "technician")
        for form in ({}, {"csrf": "not-the-token"}):
            response = await client.post(f"/alarms/{alarm_id}/acknowledge", data=form)
            assert response.status_code == 403
            assert "CSRF token" in response.text
            alarm = await env.records.alarm(alarm_id)
            assert alarm is not None
            assert not alarm.acknowledged
        response = await client.post(f"/alarms/{alarm_id}/acknowledge", data={"csrf": csrf})
    assert response.status_code == 303
    alarm = await env.records.alarm(alarm_id)
    assert alarm is not None
    assert alarm.acknowledged_by == "tom"


async def test_another_sessions_csrf_token_is_refused(env: ApiEnv) -> None:
    alarm_id = await active_alarm(env)
    async with browser(env) as first, browser(env) as second:
        await sign_in(first, env, "technician")
        others = await sign_in(second, env, "manager")
        response = await first.post(f"/alarms/{alarm_id}/acknowledge", data={"csrf": others})
    assert response.status_code == 403
    alarm = await env.records.alarm(alarm_id)
    assert alarm is not None
    assert not alarm.acknowledged


async def test_integration_reads_but_may_not_acknowledge(env: ApiEnv) -> None:
    alarm_id = await active_alarm(env)
    async with browser(env) as client:
        csrf = await sign_in(client, env, "integration")
        page = await client.get("/alarms")
        assert "door seal worn" in page.text
        assert "Acknowledge</button>" not in page.text
        response = await client.post(f"/alarms/{alarm_id}/acknowledge", data={"csrf": csrf})
    assert response.status_code == 403
    assert "cmms has role integration; this needs one of: technician, manager, admin" in (
        response.text
    )
    alarm = await env.records.alarm(alarm_id)
    assert alarm is not None
    assert not alarm.acknowledged


async def test_completing_a_work_order_records_counters_and_remedy(env: ApiEnv) -> None:
    order_id = await started_order(env)
    async with browser(env) as client:
        csrf = await sign_in(client, env, "technician")
        page = await client.get("/work-orders")
        assert f'name="counter:cycles_total" id="counter-{order_id}-cycles_total"' in page.text
        bad = await client.post(
            f"/work-orders/{order_id}/complete",
            data={"csrf": csrf, "counter:cycles_total": "lots", "remedy_code": "REPL"},
        )
        assert bad.status_code == 422
        assert "counters.cycles_total: &#39;lots&#39; is not a number" in bad.text
        done = await client.post(
            f"/work-orders/{order_id}/complete",
            data={"csrf": csrf, "counter:cycles_total": "4512", "remedy_code": "REPL"},
        )
        assert done.status_code == 303
        again = await client.post(
            f"/work-orders/{order_id}/complete", data={"csrf": csrf, "remedy_code": "REPL"}
        )
        assert again.status_code == 409
    order = await env.records.work_order(order_id)
    assert order is not None
    assert order.state == "done"
    assert order.counters == {"cycles_total": 4512.0}
    assert order.remedy_code == "REPL"
    assert order.completed_at == NOW


async def test_a_manager_may_not_complete_work_orders_as_in_the_api(env: ApiEnv) -> None:
    order_id = await started_order(env)
    async with browser(env) as client:
        csrf = await sign_in(client, env, "manager")
        response = await client.post(
            f"/work-orders/{order_id}/complete", data={"csrf": csrf, "remedy_code": "REPL"}
        )
    assert response.status_code == 403
    order = await env.records.work_order(order_id)
    assert order is not None
    assert order.state == "in_progress"


async def test_the_manager_view_shows_compliance_by_risk(env: ApiEnv) -> None:
    for device_id, plan_id, late in (
        ("pump-1", "pump-1-pm", False),
        ("autoclave-1", "autoclave-1-service", True),
    ):
        draft = WorkOrderDraft(
            kind="pm",
            device_id=device_id,
            plan_id=plan_id,
            cycle=1,
            title="annual service",
            due_from=NOW - timedelta(days=10),
            due_to=NOW - timedelta(days=5),
        )
        order, _ = await env.records.open_work_order(draft, "mia")
        await env.records.update_work_order(order.id, actor="tom", state="in_progress")
        done_at = NOW - timedelta(days=2 if late else 6)
        await env.records.complete_work_order(
            order.id, actor="tom", completed_at=done_at, counters={}
        )
    async with browser(env) as client:
        await sign_in(client, env, "manager")
        page = await client.get("/manager")
        assert page.status_code == 200
        high = page.text.split('id="compliance-high"')[1].split("</div>")[0]
        other = page.text.split('id="compliance-other"')[1].split("</div>")[0]
        assert "100.0 %" in high
        assert "1 of 1 on time" in high
        assert "0.0 %" in other
        assert "0 of 1 on time" in other
    async with browser(env) as client:
        await sign_in(client, env, "technician")
        assert (await client.get("/manager")).status_code == 403


async def test_the_fleet_filters_and_draws_a_sparkline(env: ApiEnv) -> None:
    readings = [
        Reading("autoclave-1", "cycles_total", 4000.0 + step, NOW - timedelta(hours=step))
        for step in range(6, 0, -1)
    ]
    await env.series.write(readings)
    async with browser(env) as client:
        await sign_in(client, env, "integration")
        page = (await client.get("/", params={"kind": "autoclave"})).text
        rows = re.findall(r'data-device="([^"]+)"', page)
        assert rows == ["autoclave-1"]
        spark = re.search(r'<svg class="chart spark"[^>]*>.*?points="([^"]+)"', page, re.S)
        assert spark is not None
        assert len(spark.group(1).split()) == 6
        high = (await client.get("/", params={"risk": "high"})).text
        assert "autoclave-1" not in re.findall(r'data-device="([^"]+)"', high)


async def test_the_json_api_takes_the_cookie_for_reads_only(env: ApiEnv) -> None:
    alarm_id = await active_alarm(env)
    async with browser(env) as client:
        await sign_in(client, env, "technician")
        me = await client.get("/api/v1/me")
        assert me.status_code == 200
        assert me.json() == {"name": "tom", "role": "technician"}
        change = await client.post(f"/api/v1/alarms/{alarm_id}/acknowledge")
        assert change.status_code == 401
    alarm = await env.records.alarm(alarm_id)
    assert alarm is not None
    assert not alarm.acknowledged


async def test_signing_out_or_revoking_the_token_ends_the_session(env: ApiEnv) -> None:
    async with browser(env) as client:
        csrf = await sign_in(client, env, "technician")
        response = await client.post("/logout", data={"csrf": csrf})
        assert response.status_code == 303
        assert (await client.get("/")).status_code == 303
    token_id, token = await env.records.create_token("ann", "technician")
    async with browser(env) as client:
        assert (await client.post("/login", data={"token": token})).status_code == 303
        assert (await client.get("/")).status_code == 200
        await env.records.revoke_token(token_id=token_id)
        assert (await client.get("/")).status_code == 303


async def test_the_reading_pages_render_and_an_unknown_device_is_a_404(env: ApiEnv) -> None:
    async with browser(env) as client:
        await sign_in(client, env, "integration")
        due = await client.get("/maintenance")
        assert due.status_code == 200
        # the sample's monthly spore test falls due within the page's 30 days
        assert "Biological (spore) test" in due.text
        device = await client.get("/devices/autoclave-1")
        assert device.status_code == 200
        assert "autoclave-1-service" in device.text
        missing = await client.get("/devices/no-such-device")
        assert missing.status_code == 404
        assert "no device with id &#39;no-such-device&#39;" in missing.text
