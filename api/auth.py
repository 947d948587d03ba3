"""Who is calling, and what their role lets them do.

Every endpoint but ``/healthz`` declares the roles it admits with ``require(*roles)``, a
dependency that resolves the caller's ``Principal`` and refuses the request otherwise: no
credentials, or credentials nobody holds, is 401; a role the endpoint does not admit is 403.

A principal comes from a bearer token (``Authorization: Bearer ew_...``, checked against the
records' hashed tokens) or, where the app was given a ``SessionResolver``, from a session (the
page's login cookie): both lead to the same ``Principal`` and so to the same role checks.

Roles:
- ``technician``: reads everything, works orders, acknowledges alarms;
- ``manager``: reads everything, reports, acknowledges alarms;
- ``integration``: reads everything (other systems: the EHR, the CMMS, BI);
- ``admin``: everything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Literal, get_args

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.db.records import Principal, RecordStore

__all__ = [
    "ADMIN",
    "ALL_ROLES",
    "INTEGRATION",
    "MANAGER",
    "READERS",
    "TECHNICIAN",
    "Principal",
    "Requirement",
    "Role",
    "SessionResolver",
    "require",
    "resolve_principal",
]

Role = Literal["technician", "manager", "integration", "admin"]
TECHNICIAN: Role = "technician"
MANAGER: Role = "manager"
INTEGRATION: Role = "integration"
ADMIN: Role = "admin"
ALL_ROLES: tuple[Role, ...] = get_args(Role)
READERS = ALL_ROLES
"""Every role reads."""

SessionResolver = Callable[[Request], Awaitable[Principal | None]]
"""Who a request's session (e.g. a login cookie) belongs to; None when it carries none."""

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="equipwatch"'}

# declared for OpenAPI (the "Authorize" button, the security scheme); refusing is ours, so
# that a missing token is a 401 with a reason rather than the scheme's own answer
_bearer = HTTPBearer(auto_error=False, description="An API token: ew_...")


async def resolve_principal(request: Request, token: str | None) -> Principal | None:
    """The principal behind a bearer token, else behind the request's session; None when
    neither names one. A token that is present but unknown or revoked is refused outright,
    rather than falling back to a session, so that a bad token is never silently ignored."""
    if token is not None:
        records: RecordStore = request.app.state.records
        principal = await records.verify_token(token)
        if principal is None:
            raise HTTPException(401, "the bearer token is unknown or revoked", headers=CHALLENGE)
        return principal
    sessions: SessionResolver | None = request.app.state.sessions
    if sessions is None:
        return None
    return await sessions(request)


class Requirement:
    """The dependency ``require`` builds: admits a principal whose role is in ``roles``.
    ``roles`` is public, so that the tests can read every endpoint's roles off the app."""

    def __init__(self, roles: tuple[Role, ...]) -> None:
        unknown = sorted(set(roles) - set(ALL_ROLES))
        if unknown or not roles:
            raise ValueError(f"roles must be some of {', '.join(ALL_ROLES)}, not {roles!r}")
        self.roles = roles

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        header = request.headers.get("authorization")
        if header is not None and credentials is None:
            raise HTTPException(
                401, "the Authorization header must be: Bearer <token>", headers=CHALLENGE
            )
        token = None if credentials is None else credentials.credentials
        principal = await resolve_principal(request, token)
        if principal is None:
            raise HTTPException(
                401,
                "this endpoint needs an API token: Authorization: Bearer ew_...",
                headers=CHALLENGE,
            )
        if principal.role not in self.roles:
            raise HTTPException(
                403,
                f"{principal.name} has role {principal.role}; this needs one of: "
                f"{', '.join(self.roles)}",
            )
        request.state.principal = principal
        return principal


def require(*roles: Role) -> Requirement:
    """A dependency admitting these roles: ``Annotated[Principal, Depends(require(ADMIN))]``."""
    return Requirement(roles)
