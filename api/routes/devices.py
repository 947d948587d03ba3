"""Devices, their latest values and their readings."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from api.deps import ClockDep, SiteDep, StoreDep
from api.schemas import DeviceOut, MetricValue, ReadingOut, ReadingsOut
from core.clock import Clock
from core.config import Device, MqttSource
from core.store import DeviceStatus, LatestValue

router = APIRouter(prefix="/devices", tags=["devices"])

MAX_READINGS = 10_000


def _device_out(
    device: Device, status: DeviceStatus | None, latest: list[LatestValue], clock: Clock
) -> DeviceOut:
    last_seen = max((v.ts for v in latest), default=None)
    now = clock.now()
    state: str
    reason: str | None
    silent = last_seen is None or (now - last_seen).total_seconds() > device.offline_after
    if status is not None and not status.online:
        state, reason = "offline", status.reason
    elif last_seen is None:
        state, reason = "unknown", "no data yet"
    elif silent:
        state, reason = "offline", f"no data since {last_seen.isoformat(timespec='seconds')}"
    else:
        state, reason = "online", status.reason if status else None
    units = device.units
    kinds = device.metrics
    return DeviceOut(
        id=device.id,
        kind=device.kind,
        manufacturer=device.manufacturer,
        model=device.model,
        serial=device.serial,
        location=device.location,
        risk_class=device.risk_class,
        protocol="mqtt" if isinstance(device.source, MqttSource) else "modbus",
        status=state,  # type: ignore[arg-type]
        status_reason=reason,
        last_seen=last_seen,
        latest={
            v.metric: MetricValue(
                value=v.value,
                unit=units.get(v.metric),
                kind=str(kinds.get(v.metric, "gauge")),
                ts=v.ts,
                quality=v.quality.value,
                stale=state != "online",
            )
            for v in latest
        },
    )


def _find(site: SiteDep, device_id: str) -> Device:
    device = site.device(device_id)
    if device is None:
        raise HTTPException(404, f"no device with id {device_id!r}")
    return device


@router.get("", response_model=list[DeviceOut], summary="All devices with status and latest values")
async def list_devices(store: StoreDep, site: SiteDep, clock: ClockDep) -> list[DeviceOut]:
    latest = await store.latest()
    statuses = await store.statuses()
    by_device: dict[str, list[LatestValue]] = {}
    for value in latest:
        by_device.setdefault(value.device_id, []).append(value)
    return [
        _device_out(d, statuses.get(d.id), by_device.get(d.id, []), clock) for d in site.devices
    ]


@router.get("/{device_id}", response_model=DeviceOut, summary="One device with its latest values")
async def get_device(device_id: str, store: StoreDep, site: SiteDep, clock: ClockDep) -> DeviceOut:
    device = _find(site, device_id)
    statuses = await store.statuses()
    return _device_out(device, statuses.get(device.id), await store.latest([device.id]), clock)


@router.get(
    "/{device_id}/readings",
    response_model=ReadingsOut,
    summary="A device's readings in [start, end), oldest first",
)
async def device_readings(
    device_id: str,
    store: StoreDep,
    site: SiteDep,
    clock: ClockDep,
    start: Annotated[datetime | None, Query(description="default: one hour before end")] = None,
    end: Annotated[datetime | None, Query(description="default: now")] = None,
    metric: Annotated[str | None, Query(description="only this metric")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_READINGS)] = 1000,
) -> ReadingsOut:
    device = _find(site, device_id)
    end = end or clock.now()
    start = start or end - timedelta(hours=1)
    if start.tzinfo is None or end.tzinfo is None:
        raise HTTPException(400, "start and end need a time zone offset, e.g. 2026-01-31T08:00:00Z")
    if start >= end:
        raise HTTPException(400, "start must be before end")
    if metric is not None and metric not in device.metrics:
        raise HTTPException(404, f"device {device_id!r} has no metric {metric!r}")
    rows = await store.readings(device.id, start=start, end=end, metric=metric, limit=limit)
    return ReadingsOut(
        device_id=device.id,
        start=start,
        end=end,
        readings=[
            ReadingOut(metric=r.metric, value=r.value, ts=r.ts, quality=r.quality.value)
            for r in rows
        ],
    )
