"""A device's health as the API reports it: online or not, last seen, open alarms, the next
maintenance and the usage since the last service; and where plans stand."""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import get_args

from fastapi import Request

from api.catalogue import Catalogue, PlanInfo
from api.deps import PlanStanding, PlanStandings
from api.schemas import (
    DeviceHealth,
    DeviceState,
    MeterUsage,
    NextMaintenance,
    PlanStatusName,
    Standing,
)
from core.config import Device
from core.db import MaintenanceDue, RecordStore
from core.store.models import DeviceStatus, LatestValue

__all__ = [
    "PlanView",
    "Standings",
    "device_health",
    "device_state",
    "load_standings",
    "open_alarm_counts",
    "standing_out",
]

_STATUSES: tuple[PlanStatusName, ...] = get_args(PlanStatusName)
_RANK = {status: rank for rank, status in enumerate(_STATUSES)}
_NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class PlanView:
    """One plan's standing, from the rules engine or from the records' open occurrence."""

    plan_id: str
    status: PlanStatusName
    basis: str
    cycle: int
    detail: str
    due_at: datetime | None
    due_value: float | None
    usage: float | None
    upcoming_at: datetime | None
    overdue_at: datetime | None
    forecast_at: datetime | None
    source: str

    @property
    def rank(self) -> int:
        return _RANK[self.status]

    @property
    def when(self) -> float:
        """The plan's date as a sort key: when due, else when forecast; never otherwise."""
        moment = self.due_at or self.forecast_at
        return moment.timestamp() if moment is not None else _NEVER


def _status(value: str) -> PlanStatusName:
    for status in _STATUSES:
        if status == value:
            return status
    raise ValueError(f"a plan standing's status must be one of {_STATUSES}, not {value!r}")


def _from_rules(standing: PlanStanding) -> PlanView:
    return PlanView(
        plan_id=standing.plan_id,
        status=_status(str(standing.status)),
        basis=str(standing.basis),
        cycle=standing.cycle,
        detail=standing.detail,
        due_at=standing.due_at,
        due_value=standing.due_value,
        usage=standing.usage,
        upcoming_at=standing.upcoming_at,
        overdue_at=standing.overdue_at,
        forecast_at=standing.forecast_at,
        source="rules",
    )


def _from_due(due: MaintenanceDue) -> PlanView:
    return PlanView(
        plan_id=due.plan_id,
        status="due",
        basis=due.basis,
        cycle=due.cycle,
        detail=due.detail,
        due_at=due.due_at,
        due_value=due.due_value,
        usage=None,
        upcoming_at=None,
        overdue_at=None,
        forecast_at=None,
        source="records",
    )


class Standings:
    """Plan standings by plan id, each converted on first use: a page of devices looks at a
    few of a site's thousands of plans."""

    def __init__(
        self,
        known: Container[str],
        rules: Mapping[str, PlanStanding] | None = None,
        records: dict[str, PlanView] | None = None,
    ) -> None:
        self._known = known
        self.rules = rules
        self._views: dict[str, PlanView] = dict(records or {})

    def get(self, plan_id: str) -> PlanView | None:
        view = self._views.get(plan_id)
        if view is None and self.rules is not None and plan_id in self._known:
            standing = self.rules.get(plan_id)
            if standing is not None:
                view = self._views[plan_id] = _from_rules(standing)
        return view

    def items(self) -> Iterator[tuple[str, PlanView]]:
        plan_ids = self.rules if self.rules is not None else list(self._views)
        for plan_id in plan_ids:
            view = self.get(plan_id)
            if view is not None:
                yield plan_id, view


async def load_standings(
    request: Request, records: RecordStore, open_dues: list[MaintenanceDue] | None = None
) -> Standings:
    """Every configured plan's standing that is known: the engine's, when the app was given
    them, else each open due occurrence's (the oldest open one of a plan)."""
    catalogue: Catalogue = request.app.state.catalogue
    provider: PlanStandings | None = request.app.state.plan_standings
    if provider is not None:
        found = await provider()
        # the engine hands out a new mapping per assessment: between two, every request
        # shares what was derived from the last one
        last: Standings | None = request.app.state.last_standings
        if last is None or last.rules is not found:
            last = request.app.state.last_standings = Standings(catalogue.plans, rules=found)
        return last
    dues = await records.maintenance_due() if open_dues is None else open_dues
    views: dict[str, PlanView] = {}
    for due in dues:
        if due.plan_id in catalogue.plans and due.plan_id not in views:
            views[due.plan_id] = _from_due(due)
    return Standings(catalogue.plans, records=views)


def standing_out(view: PlanView | None) -> Standing | None:
    if view is None:
        return None
    return Standing(
        status=view.status,
        basis=view.basis,
        cycle=view.cycle,
        detail=view.detail,
        due_at=view.due_at,
        due_value=view.due_value,
        usage=view.usage,
        upcoming_at=view.upcoming_at,
        overdue_at=view.overdue_at,
        forecast_at=view.forecast_at,
        source="rules" if view.source == "rules" else "records",
    )


def device_state(
    device: Device,
    status: DeviceStatus | None,
    last_seen: datetime | None,
    now: datetime,
    offline_after: float | None = None,
) -> tuple[DeviceState, str | None]:
    """Online, offline or unknown, and why. A reported offline status wins over recent data;
    a device silent for longer than its ``offline_after`` is offline whatever it said last."""
    if status is not None and not status.online:
        return "offline", status.reason
    if last_seen is None:
        return "unknown", "no data yet"
    silence = device.offline_after if offline_after is None else offline_after
    if (now - last_seen).total_seconds() > silence:
        return "offline", f"no data since {last_seen.isoformat(timespec='seconds')}"
    return "online", status.reason if status else None


async def open_alarm_counts(records: RecordStore) -> Counter[str]:
    """Active alarms per device."""
    counts: Counter[str] = Counter()
    after: int | None = None
    while True:
        page = await records.alarms(active=True, after=after, limit=1000)
        counts.update(alarm.device_id for alarm in page.items)
        if page.next_after is None:
            return counts
        after = page.next_after


def _next_maintenance(plans: Iterable[PlanInfo], standings: Standings) -> NextMaintenance | None:
    best: tuple[PlanInfo, PlanView] | None = None
    for info in plans:
        view = standings.get(info.id)
        if view is None or (view.status == "ok" and view.when == _NEVER):
            continue
        if best is None or (-view.rank, view.when, info.id) < (
            -best[1].rank,
            best[1].when,
            best[0].id,
        ):
            best = (info, view)
    if best is None:
        return None
    info, view = best
    return NextMaintenance.model_construct(
        plan_id=info.id,
        plan_name=info.name,
        status=view.status,
        basis=view.basis,
        due_at=view.due_at,
        due_value=_number(view.due_value),
        forecast_at=view.forecast_at,
    )


def _number(value: float | None) -> float | None:
    return None if value is None else float(value)


def device_health(
    catalogue: Catalogue,
    device: Device,
    status: DeviceStatus | None,
    latest: list[LatestValue],
    open_alarms: int,
    standings: Standings,
    now: datetime,
) -> DeviceHealth:
    last_seen = max((value.ts for value in latest), default=None)
    state, reason = device_state(
        device, status, last_seen, now, catalogue.offline_after.get(device.id)
    )
    # built without validation (model_construct): every value here is already of its field's
    # type, and a page of 100 devices would otherwise spend a fifth of its time re-checking
    # them; the numbers are made floats, as validation would
    usage = []
    for info, metric, every in catalogue.meters_of[device.id]:
        view = standings.get(info.id)
        usage.append(
            MeterUsage.model_construct(
                plan_id=info.id,
                metric=metric,
                usage=None if view is None else _number(view.usage),
                every=float(every),
            )
        )
    return DeviceHealth.model_construct(
        status=state,
        status_reason=reason,
        last_seen=last_seen,
        open_alarms=open_alarms,
        next_maintenance=_next_maintenance(catalogue.plans_of[device.id], standings),
        usage_since_service=usage,
    )
