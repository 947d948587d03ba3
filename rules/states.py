"""The JSON form shared by every plan state: a version, the plan type, ISO 8601 times.

A state is stored as a JSON object per plan (``{"v": 1, "type": "meter", ...}``); times are
written with their UTC offset and dates as ``YYYY-MM-DD``, so a state reads back equal to the
one written. A state from a newer version, or of another plan type, is refused rather than
guessed at.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

__all__ = ["STATE_VERSION", "check_header", "opt_date", "opt_datetime", "opt_float", "text"]

STATE_VERSION = 1


def check_header(data: dict[str, Any], plan_type: str) -> None:
    version = data.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"the version 'v' is {version!r}, not a whole number")
    if version > STATE_VERSION:
        raise ValueError(
            f"version {version} was written by a newer equipwatch (this one reads up to "
            f"{STATE_VERSION})"
        )
    if data.get("type") != plan_type:
        raise ValueError(f"it is a state of a {data.get('type')!r} plan, not of a {plan_type!r}")


def text(value: datetime | date | None) -> str | None:
    return None if value is None else value.isoformat()


def opt_datetime(data: dict[str, Any], key: str) -> datetime | None:
    value = data.get(key)
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"{key} {value!r} has no UTC offset")
    return moment


def opt_date(data: dict[str, Any], key: str) -> date | None:
    value = data.get(key)
    return None if value is None else date.fromisoformat(value)


def opt_float(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    return None if value is None else float(value)
