"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from core.clock import Clock
from core.config import SiteConfig
from core.store import SqliteStore

__all__ = ["ClockDep", "SiteDep", "StoreDep"]


def _store(request: Request) -> SqliteStore:
    store: SqliteStore = request.app.state.store
    return store


def _site(request: Request) -> SiteConfig:
    site: SiteConfig = request.app.state.site
    return site


def _clock(request: Request) -> Clock:
    clock: Clock = request.app.state.clock
    return clock


StoreDep = Annotated[SqliteStore, Depends(_store)]
SiteDep = Annotated[SiteConfig, Depends(_site)]
ClockDep = Annotated[Clock, Depends(_clock)]
