"""The page's login sessions: a random id in an HttpOnly cookie, mapped in this process's memory
to who signed in. A restart signs everyone out, and each API process keeps its own sessions, so
several API processes behind one address need sticky routing (or one API process)."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from core.db.records import Principal, RecordStore

__all__ = ["COOKIE", "PageSession", "PageSessions"]

COOKIE = "equipwatch_session"
IDLE_TIMEOUT = 8 * 3600.0
"""A session unused this long (seconds) is over: about one working day at the clinic PC."""
MAX_SESSIONS = 10_000
"""Beyond this many live sessions the least recently used is dropped, so that repeated logins
cannot grow the process's memory without bound."""

_SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(slots=True)
class PageSession:
    id: str
    principal: Principal
    token: str
    """Kept (in memory only) so every request re-checks it: revoking the token ends the
    session at once, as it does for the API."""
    csrf: str
    """Sent back in every form; a cross-site form post cannot know it."""
    last_used: float

    def csrf_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class PageSessions:
    """Live sessions by id. ``now`` is a monotonic clock in seconds: the app's own clock may
    run simulated time, which must not expire sessions."""

    def __init__(
        self,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_sessions: int = MAX_SESSIONS,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self._now = now
        self._sessions: dict[str, PageSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    async def sign_in(self, records: RecordStore, token: str) -> PageSession | None:
        """A new session for the holder of ``token``; None when nobody holds it."""
        principal = await records.verify_token(token)
        if principal is None:
            return None
        while len(self._sessions) >= self.max_sessions:
            oldest = min(self._sessions.values(), key=lambda session: session.last_used)
            del self._sessions[oldest.id]
        session = PageSession(
            id=secrets.token_urlsafe(32),
            principal=principal,
            token=token,
            csrf=secrets.token_urlsafe(32),
            last_used=self._now(),
        )
        self._sessions[session.id] = session
        return session

    def sign_out(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    async def session_of(self, request: Request) -> PageSession | None:
        """The live session the request's cookie names, else None (and an expired or revoked
        one is forgotten)."""
        session_id = request.cookies.get(COOKIE)
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._now()
        if now - session.last_used > self.idle_timeout:
            self.sign_out(session_id)
            return None
        records: RecordStore = request.app.state.records
        principal = await records.verify_token(session.token)
        if principal is None:
            self.sign_out(session_id)
            return None
        session.principal = principal
        session.last_used = now
        return session

    async def api_resolver(self, request: Request) -> Principal | None:
        """The ``SessionResolver`` the JSON API gets: reads only. A cookie rides along on
        cross-site requests, and the API's changes carry no CSRF token, so a change through
        the API always needs the bearer token."""
        if request.method not in _SAFE_METHODS:
            return None
        session = await self.session_of(request)
        return None if session is None else session.principal

    @staticmethod
    def set_cookie(request: Request, response: Response, session: PageSession) -> None:
        response.set_cookie(
            COOKIE,
            session.id,
            httponly=True,
            samesite="lax",
            path="/",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def clear_cookie(request: Request, response: Response) -> None:
        response.delete_cookie(
            COOKIE, path="/", httponly=True, samesite="lax", secure=request.url.scheme == "https"
        )
