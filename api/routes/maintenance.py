"""Maintenance that is due."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SiteDep, StoreDep
from api.schemas import MaintenanceDueOut

router = APIRouter(prefix="/maintenance", tags=["maintenance"])


@router.get(
    "/due", response_model=list[MaintenanceDueOut], summary="Maintenance due and not yet done"
)
async def maintenance_due(store: StoreDep, site: SiteDep) -> list[MaintenanceDueOut]:
    names = {plan.id: plan.name for device in site.devices for plan in site.device_plans(device)}
    return [
        MaintenanceDueOut(
            id=item.id,
            plan_id=item.plan_id,
            plan_name=names.get(item.plan_id, item.plan_id),
            device_id=item.device_id,
            basis=item.basis,
            detail=item.detail,
            due_at=item.due_at,
            due_value=item.due_value,
            detected=item.detected,
        )
        for item in await store.maintenance_due()
    ]
