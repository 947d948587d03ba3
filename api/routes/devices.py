"""Devices: their health, latest values, readings, history, faults and status changes."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response

from api.catalogue import Catalogue
from api.deps import CatalogueDep, ClockDep, Reader, RecordsDep, SeriesDep
from api.health import device_health, load_standings, open_alarm_counts
from api.pagination import CursorQuery, LimitQuery, decode_cursor, encode_cursor, page_by_key
from api.params import DevicePath, TimeQuery, from_ms, ms, window
from api.schemas import (
    Bucket,
    DeviceDetail,
    DevicePage,
    DeviceState,
    DeviceSummary,
    FaultOut,
    FaultPage,
    HistoryPage,
    MetricValue,
    ReadingOut,
    ReadingPage,
    StatusChangeOut,
    StatusChangePage,
)
from core.config import Device
from core.records import Reading
from core.store.models import LatestValue
from core.store.timeseries import Aggregate

router = APIRouter(prefix="/devices", tags=["devices"])

MAX_BUCKETS = 10_000
MAX_STEP = 366 * 86_400
CSV = "text/csv; charset=utf-8"
CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "The page"}
}

FormatQuery = Annotated[
    Literal["json", "csv"], Query(description="csv: the same page as a spreadsheet")
]


def _summary(device: Device, catalogue: Catalogue) -> dict[str, Any]:
    return {
        "id": device.id,
        "kind": device.kind,
        "manufacturer": device.manufacturer,
        "model": device.model,
        "serial": device.serial,
        "location": device.location,
        "risk_class": device.risk_class,
        "protocol": catalogue.protocols[device.id],
    }


async def _latest(series: SeriesDep, device_ids: list[str]) -> list[LatestValue]:
    # an empty id list is no query at all (and no valid SQL IN list)
    return await series.latest(device_ids) if device_ids else []


def _by_device(latest: Sequence[LatestValue]) -> dict[str, list[LatestValue]]:
    grouped: dict[str, list[LatestValue]] = {}
    for value in latest:
        grouped.setdefault(value.device_id, []).append(value)
    return grouped


@router.get("", response_model=DevicePage, summary="Devices and their health, by id")
async def list_devices(
    request: Request,
    _: Reader,
    catalogue: CatalogueDep,
    series: SeriesDep,
    records: RecordsDep,
    clock: ClockDep,
    kind: Annotated[str | None, Query(max_length=64, description="e.g. autoclave")] = None,
    location: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[DeviceState | None, Query(description="online, offline or unknown")] = None,
    risk_class: Literal["low", "medium", "high"] | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 100,
) -> DevicePage:
    after: str | None = None
    if cursor is not None:
        (after,) = decode_cursor("devices", cursor, (str,))
    candidates = [
        device
        for device in catalogue.devices.values()
        if (after is None or device.id > after)
        and (kind is None or device.kind == kind)
        and (location is None or device.location == location)
        and (risk_class is None or device.risk_class == risk_class)
    ]
    # without a status filter only one page's devices need their latest values
    wanted = candidates if status is not None else candidates[: limit + 1]
    now = clock.now()
    # one after the other: side by side, the store's thread and the records' thread would
    # only queue for the interpreter lock, and answer later than in turn
    statuses = await series.statuses()
    latest = _by_device(await _latest(series, [d.id for d in wanted]))
    alarms = await open_alarm_counts(records)
    standings = await load_standings(request, records)
    items: list[DeviceSummary] = []
    more = False
    for device in wanted:
        health = device_health(
            catalogue,
            device,
            statuses.get(device.id),
            latest.get(device.id, []),
            alarms[device.id],
            standings,
            now,
        )
        if status is not None and health.status != status:
            continue
        if len(items) == limit:
            more = True
            break
        items.append(DeviceSummary.model_construct(**_summary(device, catalogue), health=health))
    next_cursor = encode_cursor("devices", [items[-1].id]) if more else None
    return DevicePage(items=items, next_cursor=next_cursor)


@router.get("/{device_id}", response_model=DeviceDetail, summary="One device, its latest values")
async def get_device(
    request: Request,
    device_id: DevicePath,
    _: Reader,
    catalogue: CatalogueDep,
    series: SeriesDep,
    records: RecordsDep,
    clock: ClockDep,
) -> DeviceDetail:
    device = catalogue.device(device_id)
    latest = await series.latest([device.id])
    statuses = await series.statuses()
    alarms = await records.alarms(active=True, device_id=device.id, limit=1000)
    standings = await load_standings(request, records)
    health = device_health(
        catalogue,
        device,
        statuses.get(device.id),
        latest,
        len(alarms.items),
        standings,
        clock.now(),
    )
    units, kinds = catalogue.units_of[device.id], catalogue.metrics_of[device.id]
    stale = health.status != "online"
    return DeviceDetail(
        **_summary(device, catalogue),
        health=health,
        latest={
            value.metric: MetricValue(
                value=value.value,
                unit=units.get(value.metric),
                kind=str(kinds.get(value.metric, "gauge")),
                ts=value.ts,
                quality=value.quality.value,
                stale=stale,
            )
            for value in latest
        },
    )


def _csv(header: Sequence[str], rows: Sequence[Sequence[object]], next_url: str | None) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    headers = {"Link": f'<{next_url}>; rel="next"'} if next_url is not None else None
    return Response(out.getvalue(), media_type=CSV, headers=headers)


def _next_url(request: Request, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    return str(request.url.include_query_params(cursor=cursor))


@router.get(
    "/{device_id}/readings",
    response_model=ReadingPage,
    responses=CSV_RESPONSE,
    summary="A device's readings in [start, end), oldest first (default: the last hour)",
)
async def device_readings(
    request: Request,
    device_id: DevicePath,
    _: Reader,
    catalogue: CatalogueDep,
    series: SeriesDep,
    clock: ClockDep,
    start: TimeQuery = None,
    end: TimeQuery = None,
    metric: Annotated[str | None, Query(max_length=200, description="only this metric")] = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 1000,
    format: FormatQuery = "json",
) -> ReadingPage | Response:
    device = catalogue.device(device_id)
    start, end = window(start, end, clock.now(), timedelta(hours=1))
    if metric is not None:
        catalogue.metric(device, metric)
    after: tuple[int, str] | None = None
    if cursor is not None:
        after_ms, after_metric = decode_cursor("readings", cursor, (int, str))
        after = (after_ms, after_metric)
    rows = await readings_after(series, device, start, end, metric, after, limit + 1, catalogue)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor("readings", [ms(rows[-1].ts), rows[-1].metric]) if more else None
    if format == "csv":
        table = [(r.ts.isoformat(), r.metric, r.value, r.quality.value) for r in rows]
        return _csv(("ts", "metric", "value", "quality"), table, _next_url(request, next_cursor))
    return ReadingPage(
        device_id=device.id,
        start=start,
        end=end,
        items=[
            ReadingOut(metric=r.metric, value=r.value, ts=r.ts, quality=r.quality.value)
            for r in rows
        ],
        next_cursor=next_cursor,
    )


async def readings_after(
    series: SeriesDep,
    device: Device,
    start: datetime,
    end: datetime,
    metric: str | None,
    after: tuple[int, str] | None,
    wanted: int,
    catalogue: Catalogue,
) -> list[Reading]:
    """Up to ``wanted`` readings in [start, end) whose (time, metric) key comes after
    ``after``. The store pages by time only, and the readings of one time share it, so the
    query starts at the cursor's time and asks for as many more as may share that time."""
    if after is None:
        return await series.readings(device.id, start=start, end=end, metric=metric, limit=wanted)
    query_start = max(start, from_ms(after[0]))
    if query_start >= end:
        return []
    extra = 1 if metric is not None else len(catalogue.metrics_of[device.id])
    while True:
        fetch = wanted + extra
        rows = await series.readings(
            device.id, start=query_start, end=end, metric=metric, limit=fetch
        )
        kept = [r for r in rows if (ms(r.ts), r.metric) > after]
        if len(kept) >= wanted or len(rows) < fetch:
            return kept[:wanted]
        extra *= 2  # metrics the site no longer configures shared the cursor's time


@router.get(
    "/{device_id}/history",
    response_model=HistoryPage,
    responses=CSV_RESPONSE,
    summary="One metric aggregated per step over [start, end) (default: the last 24 hours)",
)
async def device_history(
    request: Request,
    device_id: DevicePath,
    _: Reader,
    catalogue: CatalogueDep,
    series: SeriesDep,
    clock: ClockDep,
    metric: Annotated[str, Query(max_length=200, description="the metric to chart")],
    start: TimeQuery = None,
    end: TimeQuery = None,
    step: Annotated[int, Query(ge=1, le=MAX_STEP, description="bucket width, seconds")] = 60,
    aggregate: Annotated[
        Aggregate, Query(description="min, max, mean, last or count of each bucket")
    ] = "mean",
    cursor: CursorQuery = None,
    limit: Annotated[int, Query(ge=1, le=MAX_BUCKETS, description="buckets per page")] = 1440,
    format: FormatQuery = "json",
) -> HistoryPage | Response:
    device = catalogue.device(device_id)
    catalogue.metric(device, metric)
    start, end = window(start, end, clock.now(), timedelta(days=1))
    start_ms, end_ms, step_ms = ms(start), ms(end), step * 1000
    page_start_ms = start_ms
    if cursor is not None:
        (page_start_ms,) = decode_cursor("history", cursor, (int,))
        if not start_ms <= page_start_ms < end_ms:
            raise HTTPException(400, "cursor: it belongs to another window; pass start and end too")
    # a page is ``limit`` whole buckets, so the next page starts on a bucket boundary
    page_end_ms = min(end_ms, (page_start_ms // step_ms + limit) * step_ms)
    buckets = await series.history(
        device.id,
        metric,
        start=from_ms(page_start_ms),
        end=from_ms(page_end_ms),
        step_seconds=step,
        aggregate=aggregate,
    )
    next_cursor = encode_cursor("history", [page_end_ms]) if page_end_ms < end_ms else None
    if format == "csv":
        table = [(b.start.isoformat(), b.value) for b in buckets]
        return _csv(("start", aggregate), table, _next_url(request, next_cursor))
    return HistoryPage(
        device_id=device.id,
        metric=metric,
        unit=catalogue.units_of[device.id].get(metric),
        step=step,
        aggregate=aggregate,
        start=start,
        end=end,
        items=[Bucket(start=b.start, value=b.value) for b in buckets],
        next_cursor=next_cursor,
    )


@router.get(
    "/{device_id}/faults",
    response_model=FaultPage,
    summary="Faults the device raised and cleared in [start, end) (default: the last 30 days)",
)
async def device_faults(
    device_id: DevicePath,
    _: Reader,
    catalogue: CatalogueDep,
    series: SeriesDep,
    clock: ClockDep,
    start: TimeQuery = None,
    end: TimeQuery = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 100,
) -> FaultPage:
    device = catalogue.device(device_id)
    start, end = window(start, end, clock.now(), timedelta(days=30))
    events = await series.faults(device.id, start=start, end=end)
    page, next_cursor = page_by_key(
        "faults",
        events,
        lambda e: (ms(e.ts), e.code, int(e.active)),
        cursor,
        limit,
        (int, str, int),
    )
    return FaultPage(
        device_id=device.id,
        items=[FaultOut(code=e.code, ts=e.ts, active=e.active) for e in page],
        next_cursor=next_cursor,
    )


@router.get(
    "/{device_id}/status-history",
    response_model=StatusChangePage,
    summary="The device's online/offline changes in [start, end) (default: the last 30 days)",
)
async def device_status_history(
    device_id: DevicePath,
    _: Reader,
    catalogue: CatalogueDep,
    series: SeriesDep,
    clock: ClockDep,
    start: TimeQuery = None,
    end: TimeQuery = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 100,
) -> StatusChangePage:
    device = catalogue.device(device_id)
    start, end = window(start, end, clock.now(), timedelta(days=30))
    changes = await series.status_changes(device.id, start=start, end=end)
    page, next_cursor = page_by_key(
        "status-history", changes, lambda c: (ms(c.ts),), cursor, limit, (int,)
    )
    return StatusChangePage(
        device_id=device.id,
        items=[StatusChangeOut(online=c.online, ts=c.ts, reason=c.reason) for c in page],
        next_cursor=next_cursor,
    )
