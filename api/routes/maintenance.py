"""Maintenance: the plans, what is due (or upcoming, or overdue) within a window, forecasts,
and the preventive-maintenance compliance report."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from api.auth import ADMIN, MANAGER, Principal, require
from api.catalogue import PlanInfo
from api.deps import CatalogueDep, ClockDep, Reader, RecordsDep
from api.health import PlanView, load_standings, standing_out
from api.pagination import CursorQuery, LimitQuery, page_by_key
from api.params import TimeQuery, ms, window
from api.schemas import (
    ComplianceGroup,
    ComplianceReport,
    DueItem,
    DuePage,
    ForecastOut,
    ForecastPage,
    PlanOut,
    PlanPage,
    PlanStatusName,
)
from core.db import WorkOrder
from core.db.records import MAX_PAGE

router = APIRouter(tags=["maintenance"])

_NEVER_MS = 2**62  # sorts a plan without a date after every dated one

WithinQuery = Annotated[
    float,
    Query(ge=0, le=3650, description="days ahead: what falls due before now + within"),
]


@router.get("/maintenance/plans", response_model=PlanPage, summary="Maintenance plans, by id")
async def list_plans(
    request: Request,
    _: Reader,
    catalogue: CatalogueDep,
    records: RecordsDep,
    device_id: Annotated[str | None, Query(max_length=200)] = None,
    type: Annotated[
        Literal["calendar", "meter", "whichever_first", "condition", "fault", "supplies"] | None,
        Query(description="only plans of this type"),
    ] = None,
    status: Annotated[PlanStatusName | None, Query(description="only plans standing so")] = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 100,
) -> PlanPage:
    if device_id is not None:
        catalogue.device(device_id)
    standings = await load_standings(request, records)

    def kept(info: PlanInfo) -> bool:
        if device_id is not None and info.device.id != device_id:
            return False
        if type is not None and info.type != type:
            return False
        view = standings.get(info.id)
        return status is None or (view.status if view is not None else None) == status

    plans = (info for info in catalogue.plans.values() if kept(info))
    page, next_cursor = page_by_key("plans", plans, lambda i: (i.id,), cursor, limit, (str,))
    return PlanPage(
        items=[
            PlanOut(
                id=info.id,
                name=info.name,
                type=info.type,
                device_id=info.device.id,
                metric=info.metric,
                schedule=info.schedule,
                standing=standing_out(standings.get(info.id)),
            )
            for info in page
        ],
        next_cursor=next_cursor,
    )


@router.get(
    "/maintenance/due",
    response_model=DuePage,
    summary="Maintenance overdue, due, or falling due within a window, most pressing first",
    description=(
        "Every plan that is overdue, due or upcoming now, and every plan whose due date (or "
        "forecast) falls before now + `within` days. Ordered by status (overdue first), then "
        "date. `status` narrows it to some statuses (repeat the parameter for several)."
    ),
)
async def maintenance_due(
    request: Request,
    _: Reader,
    catalogue: CatalogueDep,
    records: RecordsDep,
    clock: ClockDep,
    within: WithinQuery = 30,
    status: Annotated[list[PlanStatusName] | None, Query(description="only these")] = None,
    device_id: Annotated[str | None, Query(max_length=200)] = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 100,
) -> DuePage:
    if device_id is not None:
        catalogue.device(device_id)
    now = clock.now()
    window_end = now + timedelta(days=within)
    open_dues = await records.maintenance_due()
    occurrences = {(due.plan_id, due.cycle): due for due in open_dues}
    standings = await load_standings(request, records, open_dues)
    horizon = window_end.timestamp()
    wanted = set(status) if status else None

    def pressing(view: PlanView) -> bool:
        return view.status != "ok" or view.when < horizon

    rows: list[tuple[tuple[int, int, str], PlanInfo, PlanView]] = []
    for plan_id, view in standings.items():
        info = catalogue.plans[plan_id]
        if device_id is not None and info.device.id != device_id:
            continue
        if not pressing(view) or (wanted is not None and view.status not in wanted):
            continue
        moment = view.due_at or view.forecast_at
        when = ms(moment) if moment is not None else _NEVER_MS
        rows.append(((-view.rank, when, plan_id), info, view))
    rows.sort(key=lambda row: row[0])
    page, next_cursor = page_by_key("due", rows, lambda row: row[0], cursor, limit, (int, int, str))
    items = []
    for _key, info, view in page:
        occurrence = occurrences.get((info.id, view.cycle))
        items.append(
            DueItem(
                plan_id=info.id,
                plan_name=info.name,
                device_id=info.device.id,
                status=view.status,
                basis=view.basis,
                cycle=view.cycle,
                detail=view.detail,
                due_at=view.due_at,
                due_value=view.due_value,
                usage=view.usage,
                forecast_at=view.forecast_at,
                occurrence_id=None if occurrence is None else occurrence.id,
                detected=None if occurrence is None else occurrence.detected,
            )
        )
    return DuePage(items=items, next_cursor=next_cursor, window_end=window_end)


@router.get(
    "/maintenance/forecasts",
    response_model=ForecastPage,
    summary="When each meter plan will fall due at its recent rate of use, soonest first",
    responses={503: {"description": "No plan standings in this process (no rules engine)"}},
)
async def maintenance_forecasts(
    request: Request,
    _: Reader,
    catalogue: CatalogueDep,
    records: RecordsDep,
    device_id: Annotated[str | None, Query(max_length=200)] = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 100,
) -> ForecastPage:
    if device_id is not None:
        catalogue.device(device_id)
    if request.app.state.plan_standings is None:
        raise HTTPException(
            503,
            "forecasts come from the rules engine's assessment, which this API process was "
            "not given; ask the process that runs the rules",
        )
    standings = await load_standings(request, records)
    rows = []
    for info in catalogue.plans.values():
        meter = next((i for i in info.intervals if i.basis == "meter"), None)
        if meter is None or info.metric is None:
            continue
        if device_id is not None and info.device.id != device_id:
            continue
        view = standings.get(info.id)
        forecast = None if view is None else view.forecast_at
        key = (ms(forecast) if forecast is not None else _NEVER_MS, info.id)
        rows.append((key, info, view, meter.count))
    rows.sort(key=lambda row: row[0])
    page, next_cursor = page_by_key(
        "forecasts", rows, lambda row: row[0], cursor, limit, (int, str)
    )
    return ForecastPage(
        items=[
            ForecastOut(
                plan_id=info.id,
                plan_name=info.name,
                device_id=info.device.id,
                metric=info.metric or "",
                status=view.status if view is not None else "ok",
                usage=None if view is None else view.usage,
                every=every,
                due_value=None if view is None else view.due_value,
                forecast_at=None if view is None else view.forecast_at,
            )
            for _key, info, view, every in page
        ],
        next_cursor=next_cursor,
    )


async def _pm_orders(records: RecordsDep) -> list[WorkOrder]:
    orders: list[WorkOrder] = []
    after: int | None = None
    while True:
        page = await records.work_orders(kind="pm", after=after, limit=MAX_PAGE)
        orders += page.items
        if page.next_after is None:
            return orders
        after = page.next_after


def _group(orders: list[WorkOrder]) -> ComplianceGroup:
    on_time = sum(
        1
        for order in orders
        if order.state == "done"
        and order.completed_at is not None
        and order.due_to is not None
        and order.completed_at <= order.due_to
    )
    percent = round(100.0 * on_time / len(orders), 1) if orders else None
    return ComplianceGroup(due=len(orders), on_time=on_time, percent=percent)


@router.get(
    "/reports/pm-compliance",
    response_model=ComplianceReport,
    tags=["reports"],
    summary="Preventive maintenance done on time: PMs completed on time / PMs due x 100",
    description=(
        "Counts the preventive work orders whose due window ends in [start, end) (default: "
        "the last 30 days); one is on time when completed by the end of its window. High-risk "
        "devices are reported separately: they must be at 100 %."
    ),
)
async def pm_compliance(
    _: Annotated[Principal, Depends(require(MANAGER, ADMIN))],
    catalogue: CatalogueDep,
    records: RecordsDep,
    clock: ClockDep,
    start: TimeQuery = None,
    end: TimeQuery = None,
) -> ComplianceReport:
    start, end = window(start, end, clock.now(), timedelta(days=30))
    due = [
        order
        for order in await _pm_orders(records)
        if order.due_to is not None and start <= order.due_to < end and order.state != "cancelled"
    ]

    def risk(order: WorkOrder) -> str:
        device = catalogue.devices.get(order.device_id)
        return device.risk_class if device is not None else "unknown"

    classes = sorted({risk(order) for order in due})
    return ComplianceReport(
        start=start,
        end=end,
        all=_group(due),
        high_risk=_group([order for order in due if risk(order) == "high"]),
        by_risk_class={c: _group([o for o in due if risk(o) == c]) for c in classes},
    )
