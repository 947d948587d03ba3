"""Work orders: list, open, change, complete. Every change is written to the audit log by the
records, in the same transaction, with the caller's name as the actor."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status

from api.auth import ADMIN, TECHNICIAN, Principal, require
from api.deps import CatalogueDep, ClockDep, Reader, RecordsDep
from api.pagination import CursorQuery, LimitQuery, decode_id_cursor, encode_cursor
from api.params import IdPath, check_time
from api.schemas import (
    WorkOrderCompletion,
    WorkOrderDraftIn,
    WorkOrderOut,
    WorkOrderPage,
    WorkOrderState,
    WorkOrderUpdate,
)
from core.db import UNSET, WorkOrder, WorkOrderDraft
from core.errors import NotFound
from core.records import MetricKind

router = APIRouter(prefix="/work-orders", tags=["work orders"])

Worker = Annotated[Principal, Depends(require(TECHNICIAN, ADMIN))]
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "The order's state does not allow this (the reason names where it can go)"}
}


def _out(order: WorkOrder) -> WorkOrderOut:
    return WorkOrderOut.model_validate(dataclasses.asdict(order))


@router.get("", response_model=WorkOrderPage, summary="Work orders, oldest first")
async def list_work_orders(
    _: Reader,
    records: RecordsDep,
    device_id: Annotated[str | None, Query(max_length=200)] = None,
    state: WorkOrderState | None = None,
    kind: Literal["pm", "corrective"] | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 100,
) -> WorkOrderPage:
    after = decode_id_cursor("work-orders", cursor)
    page = await records.work_orders(
        device_id=device_id, state=state, kind=kind, after=after, limit=limit
    )
    next_cursor = (
        encode_cursor("work-orders", [page.next_after]) if page.next_after is not None else None
    )
    return WorkOrderPage(items=[_out(order) for order in page.items], next_cursor=next_cursor)


@router.get("/{work_order_id}", response_model=WorkOrderOut, summary="One work order")
async def get_work_order(work_order_id: IdPath, _: Reader, records: RecordsDep) -> WorkOrderOut:
    order = await records.work_order(work_order_id)
    if order is None:
        raise NotFound(f"no work order {work_order_id}")
    return _out(order)


@router.post(
    "",
    response_model=WorkOrderOut,
    status_code=status.HTTP_201_CREATED,
    summary="Open a work order",
    description=(
        "Opens a corrective order, or a preventive (pm) one for a plan's occurrence "
        "(plan_id and cycle). Opening a pm order for an occurrence that has one already "
        "returns that one, with 200 rather than 201."
    ),
    responses={200: {"model": WorkOrderOut, "description": "The occurrence's existing order"}},
)
async def open_work_order(
    body: WorkOrderDraftIn,
    response: Response,
    principal: Worker,
    catalogue: CatalogueDep,
    records: RecordsDep,
) -> WorkOrderOut:
    if body.device_id not in catalogue.devices:
        raise HTTPException(422, f"device_id: no device with id {body.device_id!r}")
    if body.plan_id is not None:
        info = catalogue.plans.get(body.plan_id)
        if info is None or info.device.id != body.device_id:
            raise HTTPException(
                422, f"plan_id: device {body.device_id!r} has no plan {body.plan_id!r}"
            )
    for name in ("due_from", "due_to"):
        moment = getattr(body, name)
        if moment is not None:
            check_time(name, moment)
    draft = WorkOrderDraft(
        kind=body.kind,
        device_id=body.device_id,
        title=body.title,
        plan_id=body.plan_id,
        cycle=body.cycle,
        priority=body.priority,
        assignee=body.assignee,
        due_from=body.due_from,
        due_to=body.due_to,
        notes=body.notes,
    )
    order, created = await records.open_work_order(draft, principal.name)
    if not created:
        response.status_code = status.HTTP_200_OK
    return _out(order)


@router.patch(
    "/{work_order_id}",
    response_model=WorkOrderOut,
    summary="Change a work order's state or fields",
    description=(
        "A field left out stays as it is; null clears it (assignee, due window, codes). "
        "States go open -> in_progress|cancelled, in_progress -> on_hold|cancelled, on_hold "
        "-> in_progress|cancelled; done is reached through /complete."
    ),
    responses=CONFLICT,
)
async def update_work_order(
    work_order_id: IdPath, body: WorkOrderUpdate, principal: Worker, records: RecordsDep
) -> WorkOrderOut:
    given = body.model_fields_set
    for name in ("priority", "notes"):
        if name in given and getattr(body, name) is None:
            raise HTTPException(422, f"{name}: cannot be cleared; give a value or leave it out")
    for name in ("due_from", "due_to"):
        moment = getattr(body, name)
        if moment is not None:
            check_time(name, moment)

    def field(name: str) -> Any:
        return getattr(body, name) if name in given else UNSET

    order = await records.update_work_order(
        work_order_id,
        actor=principal.name,
        state=body.state,
        assignee=field("assignee"),
        priority=field("priority"),
        notes=field("notes"),
        due_from=field("due_from"),
        due_to=field("due_to"),
        problem_code=field("problem_code"),
        cause_code=field("cause_code"),
        remedy_code=field("remedy_code"),
    )
    return _out(order)


@router.post(
    "/{work_order_id}/complete",
    response_model=WorkOrderOut,
    summary="Complete a work order, with the counter values at service and failure codes",
    description=(
        "From in_progress or on_hold. `counters` gives each counter's value at service "
        "(metric -> value): a meter plan counts its next interval from there. A preventive "
        "order's due occurrence closes with it."
    ),
    responses=CONFLICT,
)
async def complete_work_order(
    work_order_id: IdPath,
    body: WorkOrderCompletion,
    principal: Worker,
    catalogue: CatalogueDep,
    records: RecordsDep,
    clock: ClockDep,
) -> WorkOrderOut:
    order = await records.work_order(work_order_id)
    if order is None:
        raise NotFound(f"no work order {work_order_id}")
    device = catalogue.devices.get(order.device_id)
    counters = catalogue.metrics_of.get(order.device_id, {}) if device is not None else {}
    for metric in body.counters:
        if counters.get(metric) is not MetricKind.COUNTER:
            known = ", ".join(sorted(m for m, k in counters.items() if k is MetricKind.COUNTER))
            raise HTTPException(
                422,
                f"counters.{metric}: not a counter of device {order.device_id!r} "
                f"(its counters: {known or 'none'})",
            )
    completed_at = (
        check_time("completed_at", body.completed_at)
        if body.completed_at is not None
        else clock.now()
    )
    done = await records.complete_work_order(
        work_order_id,
        actor=principal.name,
        completed_at=completed_at,
        counters=body.counters,
        problem_code=body.problem_code,
        cause_code=body.cause_code,
        remedy_code=body.remedy_code,
        notes=body.notes,
    )
    return _out(done)
