"""The application factory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route

from api.auth import SessionResolver
from api.catalogue import Catalogue
from api.deps import PlanStandings, Reader, SeriesReader
from api.fhir import routes as fhir
from api.fhir.ids import FhirIds
from api.metrics import ApiMetrics, MetricsMiddleware, route_templates
from api.page import install_page
from api.params import ERRORS
from api.problems import FHIR_JSON, FHIR_PREFIX, PROBLEM_JSON, install_problem_handlers
from api.routes import alarms, devices, maintenance, work_orders
from api.schemas import WhoAmI
from core.clock import Clock
from core.config import SiteConfig
from core.db import RecordStore

__all__ = ["API_PREFIX", "Metrics", "Readiness", "create_app", "readiness_answer", "routes_of"]

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
"""Whether the service can do its job, and the checks behind the answer, for /readyz."""

Metrics = Callable[[], Awaitable[bytes]]
"""The Prometheus text exposition of every counter in the process, for /metrics."""

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

API_PREFIX = "/api/v1"
VERSION = "1.0.0"

_OPERATION_OUTCOME = {
    "type": "object",
    "description": "A FHIR OperationOutcome: why the request failed",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "issue": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["severity", "code"],
                "properties": {
                    "severity": {"type": "string"},
                    "code": {"type": "string"},
                    "diagnostics": {"type": "string"},
                },
            },
        },
    },
}


async def readiness_answer(readiness: Readiness | None) -> JSONResponse:
    """/readyz's answer, the same in the API and in a collector's or rules engine's health
    app: 200 or 503, and the checks behind it."""
    ready, checks = (True, {}) if readiness is None else await readiness()
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


def create_app(
    *,
    site: SiteConfig,
    series: SeriesReader,
    records: RecordStore,
    clock: Clock,
    readiness: Readiness | None = None,
    metrics: Metrics | None = None,
    plan_standings: PlanStandings | None = None,
    sessions: SessionResolver | None = None,
) -> FastAPI:
    """The API over ``series`` (readings) and ``records`` (work orders, alarms, tokens, ...);
    the caller owns both. ``readiness`` backs /readyz (without one the app is ready whenever
    it answers); ``metrics`` is the rest of the process's Prometheus exposition, to which
    /metrics adds the API's own counters. ``plan_standings`` is where every plan stands, from
    the rules engine (see ``api.deps.PlanStandings``); ``sessions`` resolves a login session
    (the page's cookie) to a principal, next to bearer tokens."""
    app = FastAPI(
        title="equipwatch",
        summary="Equipment health and preventive maintenance for a medical practice",
        description=(
            "Every endpoint but /healthz needs an API token: `Authorization: Bearer ew_...` "
            "(`equipwatch token create`). Lists page with `cursor` (the previous page's "
            "`next_cursor`); errors are `application/problem+json`. A read-only FHIR R4 view "
            "is under /fhir."
        ),
        version=VERSION,
    )
    catalogue = Catalogue(site)
    app.state.site = site
    app.state.catalogue = catalogue
    app.state.fhir_ids = FhirIds(catalogue)
    app.state.series = series
    app.state.records = records
    app.state.clock = clock
    app.state.plan_standings = plan_standings
    app.state.last_standings = None
    app.state.sessions = sessions
    api_metrics = ApiMetrics()
    app.state.api_metrics = api_metrics
    install_problem_handlers(app)
    for module in (devices, maintenance, work_orders, alarms):
        app.include_router(module.router, prefix=API_PREFIX, responses=ERRORS)
    app.include_router(fhir.router)
    install_page(app)

    @app.get(f"{API_PREFIX}/me", response_model=WhoAmI, tags=["access"], responses=ERRORS)
    async def whoami(principal: Reader) -> WhoAmI:
        """Who the token (or session) belongs to, and its role."""
        return WhoAmI(name=principal.name, role=principal.role)

    @app.get("/healthz", tags=["health"], summary="The process is alive (needs no token)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="The store, the broker and the outbox are in working order",
        responses={
            **ERRORS,
            200: {"description": "Ready; the body lists the checks"},
            503: {
                "description": "Not ready; the body says which check failed",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
        },
    )
    async def readyz(_: Reader) -> JSONResponse:
        return await readiness_answer(readiness)

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Counters in the Prometheus text format: the process's and the API's",
        response_class=Response,
        responses={
            **ERRORS,
            200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}},
        },
    )
    async def prometheus_metrics(_: Reader) -> Response:
        rest = b"" if metrics is None else await metrics()
        if rest and not rest.endswith(b"\n"):
            rest += b"\n"
        return Response(rest + api_metrics.exposition(), media_type=PROMETHEUS_TEXT)

    app.add_middleware(
        MetricsMiddleware, metrics=api_metrics, templates=route_templates(routes_of(app))
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def routes_of(app: FastAPI) -> list[tuple[str, Route]]:
    """Every route of the app with its full path, routers included under a prefix too.
    FastAPI from 0.16x keeps included routers as such in ``app.routes`` (its
    ``iter_route_contexts`` walks into them); earlier versions copied their routes in."""
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    if walk is None:
        return [(route.path, route) for route in app.routes if isinstance(route, Route)]
    found = []
    for context in walk(app.routes):
        route = context.original_route
        path = context.path
        if isinstance(path, str) and isinstance(route, Route):
            found.append((path, route))
    return found


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every error answer as the media type it really has:
    problem+json, or an OperationOutcome under /fhir."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["OperationOutcome"] = _OPERATION_OUTCOME
    for path, operations in document.get("paths", {}).items():
        fhir = path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/")
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if not status.isdigit() or int(status) < 400 or "content" not in response:
                    continue
                if path == "/readyz" and status == "503":
                    continue
                if fhir:
                    reference = {"$ref": "#/components/schemas/OperationOutcome"}
                    response["content"] = {FHIR_JSON: {"schema": reference}}
                else:
                    schema = response["content"].get("application/json", {}).get("schema")
                    response["content"] = {PROBLEM_JSON: {"schema": schema}}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    app.openapi_schema = document
    return document
