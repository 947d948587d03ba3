"""The HTTP face of a process that does not serve the API (a collector or rules role): only
what an orchestrator and a monitor ask of it."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from api.app import PROMETHEUS_TEXT, Metrics, Readiness, readiness_answer

__all__ = ["health_app"]


def health_app(*, readiness: Readiness, metrics: Metrics) -> FastAPI:
    app = FastAPI(title="equipwatch", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return await readiness_answer(readiness)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(await metrics(), media_type=PROMETHEUS_TEXT)

    return app
