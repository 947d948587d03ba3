"""Errors as RFC 9457 problem details (``application/problem+json``), and under ``/fhir`` as
FHIR ``OperationOutcome`` resources (``application/fhir+json``).

Every refusal says what to fix in ``detail``. The records' own errors map onto statuses in one
place: ``NotFound`` 404, ``InvalidTransition`` 409, ``InvalidRecord`` 422, ``StoreError`` 503
(the database did not answer: try again). Anything else is a 500 whose body names no internals.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from core.errors import InvalidRecord, InvalidTransition, NotFound, StoreError

__all__ = [
    "FHIR_JSON",
    "FHIR_PREFIX",
    "PROBLEM_JSON",
    "FieldError",
    "Problem",
    "install_problem_handlers",
    "problem",
]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
FHIR_JSON = "application/fhir+json"
FHIR_PREFIX = "/fhir"

# FHIR's IssueType for each status an error can have
_ISSUE_TYPES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    422: "invalid",
    503: "transient",
}


class FieldError(BaseModel):
    field: str = Field(description="where: query.start, body.counters.cycles_total, ...")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = Field(description="what was wrong with the request, and what to do")
    errors: list[FieldError] | None = Field(
        default=None, description="each invalid field, for a request that failed validation"
    )


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(
    status: int,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = Problem(title=_title(status), status=status, detail=detail, errors=errors)
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def operation_outcome(
    status: int, detail: str, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": _ISSUE_TYPES.get(status, "exception"),
                "diagnostics": detail,
            }
        ],
    }
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers=headers)


def _error(
    request: Request,
    status: int,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    if request.url.path == FHIR_PREFIX or request.url.path.startswith(FHIR_PREFIX + "/"):
        return operation_outcome(status, detail, headers=headers)
    return problem(status, detail, errors=errors, headers=headers)


def _field(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers is not None else None
        return _error(request, exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [FieldError(field=_field(e["loc"]), message=e["msg"]) for e in exc.errors()]
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return _error(request, 422, detail, errors=errors)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(request, 404, str(exc))

    @app.exception_handler(InvalidTransition)
    async def _transition(request: Request, exc: InvalidTransition) -> JSONResponse:
        return _error(request, 409, str(exc))

    @app.exception_handler(InvalidRecord)
    async def _record(request: Request, exc: InvalidRecord) -> JSONResponse:
        return _error(request, 422, str(exc))

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _error(
            request,
            503,
            "the database did not answer; try again shortly",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(request, 500, "an internal error; it has been logged")
