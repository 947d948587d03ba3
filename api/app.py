"""The application factory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from api.problems import install_problem_handlers
from api.routes import alarms, devices, maintenance
from core.clock import Clock
from core.config import SiteConfig
from core.store import SqliteStore

__all__ = ["Metrics", "Readiness", "create_app"]

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
"""Whether the service can do its job, and the checks behind the answer, for /readyz."""

Metrics = Callable[[], Awaitable[bytes]]
"""The Prometheus text exposition of every counter in the process, for /metrics."""

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

API_PREFIX = "/api/v1"


def create_app(
    *,
    site: SiteConfig,
    store: SqliteStore,
    clock: Clock,
    readiness: Readiness | None = None,
    metrics: Metrics | None = None,
) -> FastAPI:
    """An app that reads ``store``; the caller owns the store's lifetime. ``readiness`` backs
    /readyz; without one the app is ready whenever it answers."""
    app = FastAPI(
        title="equipwatch",
        summary="Equipment health and preventive maintenance for a medical practice",
        version="0.1.0",
    )
    app.state.site = site
    app.state.store = store
    app.state.clock = clock
    install_problem_handlers(app)
    for module in (devices, maintenance, alarms):
        app.include_router(module.router, prefix=API_PREFIX)

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="The store, the broker and the outbox are in working order",
        responses={503: {"description": "Not ready; the body says which check failed"}},
    )
    async def readyz() -> JSONResponse:
        ready, checks = (True, {}) if readiness is None else await readiness()
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        return JSONResponse(body, status_code=200 if ready else 503)

    if metrics is not None:
        scrape = metrics

        @app.get(
            "/metrics",
            tags=["health"],
            summary="Counters in the Prometheus text format",
            response_class=Response,
        )
        async def prometheus_metrics() -> Response:
            return Response(await scrape(), media_type=PROMETHEUS_TEXT)

    return app
