"""What the API tests share (no tests here): the API over a real SQLite store and a real
records database in one file, as ``equipwatch run`` keeps them, with a token per role, and
plan standings worked out by the real rules (``rules.plans``), as the engine would hand them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from fastapi import FastAPI

from api.app import create_app
from api.auth import ALL_ROLES, Role
from api.deps import PlanStanding, PlanStandings
from core.clock import Clock, ManualClock
from core.config import SiteConfig
from core.db import RecordStore, StoredPlanState, records_url, upgrade
from core.records import Reading
from core.store import SqliteStore
from rules.plans import assess, new_state, observe, state_from_json
from tests.support import sample_site

__all__ = ["NOW", "ApiEnv", "api_env", "rules_standings", "save_meter_readings"]

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TOKEN_NAMES: dict[Role, str] = {
    "technician": "tom",
    "manager": "mia",
    "integration": "cmms",
    "admin": "ada",
}


def rules_standings(site: SiteConfig, records: RecordStore, clock: Clock) -> PlanStandings:
    """Every plan assessed now from its stored state, by the rules' own functions: what the
    engine's last pass would hand the API."""
    zone = ZoneInfo(site.site.timezone)

    async def standings() -> Mapping[str, PlanStanding]:
        stored = await records.plan_states()
        now = clock.now()
        found = {}
        for device in site.devices:
            for plan in site.device_plans(device):
                document = stored.get(plan.id)
                state = (
                    state_from_json(plan, document.state)
                    if document is not None
                    else new_state(plan, now)
                )
                found[plan.id] = assess(plan, state, now, zone)
        return found

    return standings


async def save_meter_readings(
    site: SiteConfig, records: RecordStore, plan_id: str, readings: list[Reading]
) -> None:
    """Fold readings into a plan's state and store it, as the engine does on a tick."""
    for device in site.devices:
        for plan in site.device_plans(device):
            if plan.id != plan_id:
                continue
            state = new_state(plan, readings[0].ts)
            for reading in readings:
                state = observe(plan, state, reading)
            document = state.to_json()
            stored = StoredPlanState(plan.id, device.id, 0, document, readings[-1].ts)
            await records.save_plan_states([stored])
            return
    raise AssertionError(f"no plan {plan_id}")


@dataclass
class ApiEnv:
    app: FastAPI
    http: httpx.AsyncClient
    series: SqliteStore
    records: RecordStore
    clock: ManualClock
    site: SiteConfig
    tokens: dict[Role, str]

    def auth(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def get(
        self, path: str, role: Role = "admin", **params: str | int | float
    ) -> httpx.Response:
        return await self.http.get(path, headers=self.auth(role), params=params or None)


@asynccontextmanager
async def api_env(
    directory: Path, *, site: SiteConfig | None = None, standings: bool = True
) -> AsyncIterator[ApiEnv]:
    site = site or sample_site()
    clock = ManualClock(NOW)
    path = directory / "equipwatch.sqlite"
    url = records_url(path)
    async with SqliteStore(path) as series:
        await upgrade(url)
        async with RecordStore.open(url, clock=clock) as records:
            await records.sync_devices(site.devices)
            tokens: dict[Role, str] = {}
            for role in ALL_ROLES:
                _, tokens[role] = await records.create_token(TOKEN_NAMES[role], role)
            app = create_app(
                site=site,
                series=series,
                records=records,
                clock=clock,
                plan_standings=rules_standings(site, records, clock) if standings else None,
            )
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                yield ApiEnv(app, http, series, records, clock, site, tokens)
