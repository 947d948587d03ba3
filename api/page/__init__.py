"""The technician's and manager's page: server-rendered HTML over the same records and roles
as the API, signed in with an API token and kept by a session cookie."""

from __future__ import annotations

from starlette.applications import Starlette

from api.page.sessions import COOKIE, PageSession, PageSessions
from api.page.views import page_routes

__all__ = ["COOKIE", "PageSession", "PageSessions", "install_page"]


def install_page(app: Starlette, sessions: PageSessions | None = None) -> PageSessions:
    """Adds the page's routes to ``app`` and keeps its sessions in ``app.state``. When the app
    has no session resolver of its own, the JSON API also accepts the page's cookie, for
    reads only (see ``PageSessions.api_resolver``)."""
    store = sessions or PageSessions()
    app.state.page_sessions = store
    if getattr(app.state, "sessions", None) is None:
        app.state.sessions = store.api_resolver
    app.router.routes.extend(page_routes())
    return store
