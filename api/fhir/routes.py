"""The FHIR R4 endpoints under ``/fhir``: read and search of Device, DeviceMetric, Observation
and Task, and the CapabilityStatement at ``/fhir/metadata``. Searches answer a ``searchset``
Bundle with ``self`` and ``next`` links; errors are OperationOutcome resources."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse

from api.catalogue import Catalogue
from api.deps import CatalogueDep, ClockDep, Reader, RecordsDep, SeriesDep
from api.fhir.ids import FhirIds
from api.fhir.resources import (
    bundle,
    capability_statement,
    device_metric_resource,
    device_resource,
    observation_resource,
    task_resource,
)
from api.health import device_state
from api.pagination import MAX_ID, MAX_LIMIT, decode_cursor, encode_cursor, page_by_key
from api.params import EARLIEST, ERRORS, LATEST, from_ms, ms
from api.problems import FHIR_JSON
from api.routes.devices import readings_after
from core.config import Device
from core.errors import NotFound
from core.records import MetricKind

__all__ = ["FhirResponse", "router"]

router = APIRouter(prefix="/fhir", tags=["fhir"], responses=ERRORS)


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


FHIR_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A FHIR R4 resource",
        "content": {FHIR_JSON: {"schema": {"type": "object", "additionalProperties": True}}},
    }
}

CountQuery = Annotated[
    int, Query(alias="_count", ge=1, le=MAX_LIMIT, description="resources per page")
]
CursorQuery = Annotated[
    str | None,
    Query(alias="_cursor", max_length=1000, description="from the Bundle's next link"),
]
TokenQuery = Annotated[str | None, Query(max_length=400, description="[system|]code")]
ReferenceQuery = Annotated[str | None, Query(max_length=400, description="Type/id, or id")]
FhirId = Annotated[str, Path(max_length=200, description="the resource's FHIR id")]

_WORK_STATES = {
    "ready": "open",
    "in-progress": "in_progress",
    "on-hold": "on_hold",
    "completed": "done",
    "cancelled": "cancelled",
}
_DATE = re.compile(r"^(eq|ge|gt|le|lt)?(\d{4}-\d{2}-\d{2})(T[0-9:.]+(Z|[+-]\d{2}:\d{2}))?$")
_ONE_MS = timedelta(milliseconds=1)


def _ids(request: Request) -> FhirIds:
    ids: FhirIds = request.app.state.fhir_ids
    return ids


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def _answer(resource: dict[str, Any]) -> FhirResponse:
    return FhirResponse(resource)


def _searchset(
    request: Request, next_cursor: str | None, resources: list[dict[str, Any]]
) -> FhirResponse:
    next_url = (
        str(request.url.include_query_params(_cursor=next_cursor))
        if next_cursor is not None
        else None
    )
    return _answer(bundle(_base(request), str(request.url), next_url, resources))


def _token(value: str) -> str:
    """The code of a token search value, ``system|code`` or ``code``."""
    return value.rpartition("|")[2]


def _referenced(value: str, kind: str) -> str:
    """The id of a reference search value, ``Kind/id``, a full URL ending so, or ``id``."""
    head, _, fhir_id = value.rstrip("/").rpartition("/")
    if head and not head.endswith(kind):
        raise HTTPException(400, f"{value!r} is not a reference to a {kind}: give {kind}/<id>")
    return fhir_id


async def _states(
    series: SeriesDep, devices: list[Device], now: datetime
) -> dict[str, tuple[str, str | None]]:
    statuses = await series.statuses()
    last_seen: dict[str, datetime] = {}
    for value in await series.latest([device.id for device in devices]) if devices else []:
        seen = last_seen.get(value.device_id)
        if seen is None or value.ts > seen:
            last_seen[value.device_id] = value.ts
    return {
        device.id: device_state(device, statuses.get(device.id), last_seen.get(device.id), now)
        for device in devices
    }


def _device(
    catalogue: Catalogue, ids: FhirIds, device: Device, state: tuple[str, str | None]
) -> dict[str, Any]:
    return device_resource(
        device, ids.device(device.id), state[0], state[1], catalogue.plans_of[device.id]
    )


@router.get(
    "/metadata",
    response_class=FhirResponse,
    responses=FHIR_OK,
    summary="The CapabilityStatement: what this FHIR server offers",
)
async def metadata(request: Request, _: Reader, clock: ClockDep) -> FhirResponse:
    return _answer(capability_statement(_base(request), request.app.version, clock.now()))


@router.get("/Device", response_class=FhirResponse, responses=FHIR_OK, summary="Search Devices")
async def search_devices(
    request: Request,
    _: Reader,
    catalogue: CatalogueDep,
    series: SeriesDep,
    clock: ClockDep,
    identifier: TokenQuery = None,
    type: TokenQuery = None,
    count: CountQuery = 100,
    cursor: CursorQuery = None,
) -> FhirResponse:
    ids = _ids(request)
    found = [
        device
        for device in catalogue.devices.values()
        if (identifier is None or device.id == _token(identifier))
        and (type is None or device.kind == _token(type))
    ]
    page, next_cursor = page_by_key(
        "fhir-device", found, lambda d: (ids.device(d.id),), cursor, count, (str,)
    )
    states = await _states(series, page, clock.now())
    resources = [_device(catalogue, ids, device, states[device.id]) for device in page]
    return _searchset(request, next_cursor, resources)


@router.get(
    "/Device/{device_id}", response_class=FhirResponse, responses=FHIR_OK, summary="A Device"
)
async def read_device(
    request: Request,
    device_id: Annotated[str, Path(max_length=200, examples=["autoclave-1"])],
    _: Reader,
    catalogue: CatalogueDep,
    series: SeriesDep,
    clock: ClockDep,
) -> FhirResponse:
    ids = _ids(request)
    device = catalogue.device(ids.device_named(device_id))
    states = await _states(series, [device], clock.now())
    return _answer(_device(catalogue, ids, device, states[device.id]))


def _metrics(catalogue: Catalogue, device: Device) -> list[tuple[str, MetricKind]]:
    """A device's metrics that are numbers (fault codes are not), by name."""
    return sorted(
        (name, kind)
        for name, kind in catalogue.metrics_of[device.id].items()
        if kind is not MetricKind.FAULT
    )


@router.get(
    "/DeviceMetric",
    response_class=FhirResponse,
    responses=FHIR_OK,
    summary="Search DeviceMetrics (one per counter, gauge and state of a device)",
)
async def search_device_metrics(
    request: Request,
    _: Reader,
    catalogue: CatalogueDep,
    series: SeriesDep,
    clock: ClockDep,
    source: ReferenceQuery = None,
    count: CountQuery = 100,
    cursor: CursorQuery = None,
) -> FhirResponse:
    ids = _ids(request)
    if source is not None:
        devices = [catalogue.device(ids.device_named(_referenced(source, "Device")))]
    else:
        devices = list(catalogue.devices.values())
    found = [
        (device, name, kind) for device in devices for name, kind in _metrics(catalogue, device)
    ]
    found.sort(key=lambda row: ids.metric(row[0].id, row[1]))
    page, next_cursor = page_by_key(
        "fhir-metric", found, lambda row: (ids.metric(row[0].id, row[1]),), cursor, count, (str,)
    )
    states = await _states(series, list({row[0].id: row[0] for row in page}.values()), clock.now())
    resources = [
        device_metric_resource(
            ids.metric(device.id, name),
            ids.device(device.id),
            name,
            kind,
            catalogue.units_of[device.id].get(name),
            states[device.id][0],
        )
        for device, name, kind in page
    ]
    return _searchset(request, next_cursor, resources)


@router.get(
    "/DeviceMetric/{metric_id}",
    response_class=FhirResponse,
    responses=FHIR_OK,
    summary="A DeviceMetric",
)
async def read_device_metric(
    request: Request,
    metric_id: Annotated[str, Path(max_length=200, examples=["autoclave-1.cycles-total"])],
    _: Reader,
    catalogue: CatalogueDep,
    series: SeriesDep,
    clock: ClockDep,
) -> FhirResponse:
    ids = _ids(request)
    device_id, name = ids.metric_named(metric_id)
    device = catalogue.device(device_id)
    kind = catalogue.metrics_of[device.id][name]
    if kind is MetricKind.FAULT:
        raise NotFound(f"no DeviceMetric/{metric_id}")
    states = await _states(series, [device], clock.now())
    return _answer(
        device_metric_resource(
            ids.metric(device.id, name),
            ids.device(device.id),
            name,
            kind,
            catalogue.units_of[device.id].get(name),
            states[device.id][0],
        )
    )


def _date_range(values: list[str]) -> tuple[datetime, datetime]:
    """[start, end) from FHIR date search values (``ge2026-03-01``, ``lt2026-03-02T08:00Z``,
    ``2026-03-01`` for a whole day ...), all of which must hold."""
    start, end = EARLIEST, LATEST
    for value in values:
        match = _DATE.match(value)
        if match is None:
            raise HTTPException(
                400,
                f"date={value}: give [ge|gt|le|lt|eq]YYYY-MM-DD or a full dateTime with a "
                "time zone, e.g. ge2026-03-01T00:00:00Z",
            )
        prefix = match.group(1) or "eq"
        try:
            if match.group(3):
                moment = datetime.fromisoformat(value[len(match.group(1) or "") :])
                low, high = moment, moment + _ONE_MS
            else:
                day = datetime.fromisoformat(match.group(2)).replace(tzinfo=UTC)
                low, high = day, day + timedelta(days=1)
        except (ValueError, OverflowError) as exc:
            raise HTTPException(400, f"date={value}: {exc}") from exc
        if not EARLIEST <= low < LATEST:
            raise HTTPException(400, f"date={value}: outside {EARLIEST.year} to {LATEST.year}")
        if prefix in ("eq", "ge"):
            start = max(start, low)
        if prefix == "gt":
            start = max(start, high)
        if prefix in ("eq", "le"):
            end = min(end, high)
        if prefix == "lt":
            end = min(end, low)
    return start.astimezone(UTC), end.astimezone(UTC)


@router.get(
    "/Observation",
    response_class=FhirResponse,
    responses=FHIR_OK,
    summary="Search Observations (readings) of a device, by metric and date",
    description=(
        "Needs `subject=Device/<id>` or `device=DeviceMetric/<id>`. `date` takes FHIR's "
        "prefixes and may repeat: `date=ge2026-03-01&date=lt2026-03-02`. Oldest first."
    ),
)
async def search_observations(
    request: Request,
    _: Reader,
    catalogue: CatalogueDep,
    series: SeriesDep,
    subject: ReferenceQuery = None,
    device: ReferenceQuery = None,
    code: TokenQuery = None,
    date: Annotated[
        list[str] | None, Query(description="[prefix]dateTime; repeat for a range")
    ] = None,
    count: CountQuery = 100,
    cursor: CursorQuery = None,
) -> FhirResponse:
    ids = _ids(request)
    metric: str | None = None
    if device is not None:
        device_id, metric = ids.metric_named(_referenced(device, "DeviceMetric"))
        if subject is not None and ids.device_named(_referenced(subject, "Device")) != device_id:
            return _searchset(request, None, [])
    elif subject is not None:
        device_id = ids.device_named(_referenced(subject, "Device"))
    else:
        raise HTTPException(
            400, "an Observation search needs subject=Device/<id> or device=DeviceMetric/<id>"
        )
    target = catalogue.device(device_id)
    if code is not None:
        wanted = _token(code)
        if metric is not None and wanted != metric:
            return _searchset(request, None, [])
        metric = wanted
    if metric is not None and catalogue.metrics_of[target.id].get(metric) in (
        None,
        MetricKind.FAULT,
    ):
        return _searchset(request, None, [])
    start, end = _date_range(date or [])
    if start >= end:
        return _searchset(request, None, [])
    after: tuple[int, str] | None = None
    if cursor is not None:
        after_ms, after_metric = decode_cursor("fhir-observation", cursor, (int, str))
        after = (after_ms, after_metric)
    rows = await readings_after(series, target, start, end, metric, after, count + 1, catalogue)
    more = len(rows) > count
    rows = rows[:count]
    next_cursor = (
        encode_cursor("fhir-observation", [ms(rows[-1].ts), rows[-1].metric]) if more else None
    )
    units = catalogue.units_of[target.id]
    resources = [
        observation_resource(
            ids.observation(target.id, reading.metric, ms(reading.ts)),
            ids.device(target.id),
            ids.metric(target.id, reading.metric),
            reading,
            units.get(reading.metric),
        )
        for reading in rows
    ]
    return _searchset(request, next_cursor, resources)


@router.get(
    "/Observation/{observation_id}",
    response_class=FhirResponse,
    responses=FHIR_OK,
    summary="An Observation (one reading)",
)
async def read_observation(
    request: Request,
    observation_id: FhirId,
    _: Reader,
    catalogue: CatalogueDep,
    series: SeriesDep,
) -> FhirResponse:
    ids = _ids(request)
    device_id, metric, ts_ms = ids.observation_named(observation_id)
    target = catalogue.device(device_id)
    at = from_ms(ts_ms)
    if not EARLIEST <= at < LATEST:
        raise NotFound(f"no Observation/{observation_id}")
    rows = await series.readings(target.id, start=at, end=at + _ONE_MS, metric=metric, limit=1)
    if not rows:
        raise NotFound(f"no Observation/{observation_id}")
    reading = rows[0]
    return _answer(
        observation_resource(
            observation_id,
            ids.device(target.id),
            ids.metric(target.id, metric),
            reading,
            catalogue.units_of[target.id].get(metric),
        )
    )


@router.get(
    "/Task",
    response_class=FhirResponse,
    responses=FHIR_OK,
    summary="Search Tasks (work orders)",
)
async def search_tasks(
    request: Request,
    _: Reader,
    records: RecordsDep,
    clock: ClockDep,
    focus: ReferenceQuery = None,
    status: TokenQuery = None,
    count: CountQuery = 100,
    cursor: CursorQuery = None,
) -> FhirResponse:
    ids = _ids(request)
    device_id = None if focus is None else ids.device_named(_referenced(focus, "Device"))
    state = None
    if status is not None:
        state = _WORK_STATES.get(_token(status))
        if state is None:
            return _searchset(request, None, [])
    after: int | None = None
    if cursor is not None:
        (after,) = decode_cursor("fhir-task", cursor, (int,))
        if not 0 <= after <= MAX_ID:
            raise HTTPException(400, "_cursor: not a cursor of this search")
    page = await records.work_orders(device_id=device_id, state=state, after=after, limit=count)
    now = clock.now()
    resources = [task_resource(order, ids.device(order.device_id), now) for order in page.items]
    next_cursor = (
        encode_cursor("fhir-task", [page.next_after]) if page.next_after is not None else None
    )
    return _searchset(request, next_cursor, resources)


@router.get("/Task/{task_id}", response_class=FhirResponse, responses=FHIR_OK, summary="A Task")
async def read_task(
    request: Request,
    task_id: Annotated[str, Path(max_length=200, examples=["1"])],
    _: Reader,
    records: RecordsDep,
    clock: ClockDep,
) -> FhirResponse:
    if not task_id.isascii() or not task_id.isdigit() or not 0 < int(task_id) <= MAX_ID:
        raise NotFound(f"no Task/{task_id}")
    order = await records.work_order(int(task_id))
    if order is None:
        raise NotFound(f"no Task/{task_id}")
    return _answer(task_resource(order, _ids(request).device(order.device_id), clock.now()))
