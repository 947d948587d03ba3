"""Query parameters many routes share, the checks on time windows, and the error responses
every route documents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import HTTPException, Path, Query
from pydantic import AwareDatetime

from api.pagination import MAX_ID
from api.problems import Problem

__all__ = [
    "EARLIEST",
    "ERRORS",
    "LATEST",
    "DevicePath",
    "IdPath",
    "TimeQuery",
    "check_time",
    "from_ms",
    "ms",
    "window",
]

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
"""Times outside [EARLIEST, LATEST) name no reading, and their arithmetic could overflow."""

_MS = timedelta(milliseconds=1)

TimeQuery = Annotated[
    AwareDatetime | None,
    Query(description="ISO 8601 with a time zone offset, e.g. 2026-03-02T08:00:00Z"),
]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID, examples=[1])]
DevicePath = Annotated[
    str, Path(max_length=200, description="the device's id", examples=["autoclave-1"])
]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The request cannot be answered as asked"},
    401: {"model": Problem, "description": "No API token, or one nobody holds"},
    403: {"model": Problem, "description": "The token's role may not do this"},
    404: {"model": Problem, "description": "No such device, plan or record"},
    422: {"model": Problem, "description": "A parameter or field is not valid"},
    503: {"model": Problem, "description": "The database did not answer; try again"},
}
"""What every route may answer besides success (as problem+json, see ``api.app``)."""


def check_time(name: str, moment: datetime) -> datetime:
    if not EARLIEST <= moment < LATEST:
        raise HTTPException(
            400,
            f"{name}: {moment.isoformat()} is outside the times equipwatch keeps "
            f"({EARLIEST.year} to {LATEST.year})",
        )
    return moment.astimezone(UTC)


def window(
    start: datetime | None, end: datetime | None, now: datetime, default: timedelta
) -> tuple[datetime, datetime]:
    """[start, end): by default ``default`` up to now; 400 when reversed or out of range."""
    end = check_time("end", end) if end is not None else now
    start = check_time("start", start) if start is not None else max(end - default, EARLIEST)
    if start >= end:
        raise HTTPException(400, "start must be before end")
    return start, end


def ms(moment: datetime) -> int:
    """Milliseconds since the epoch, as the store keeps times; exact (no float on the way), so
    that a stored time makes the same key every time."""
    return (moment - EARLIEST) // _MS


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)
