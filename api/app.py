"""The application factory."""

from __future__ import annotations

from fastapi import FastAPI

from api.problems import install_problem_handlers
from api.routes import alarms, devices, maintenance
from core.clock import Clock
from core.config import SiteConfig
from core.store import SqliteStore

__all__ = ["create_app"]

API_PREFIX = "/api/v1"


def create_app(*, site: SiteConfig, store: SqliteStore, clock: Clock) -> FastAPI:
    """An app that reads ``store``; the caller owns the store's lifetime."""
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

    return app
