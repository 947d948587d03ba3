"""Cursor pagination, the same on every listing.

A page is ``{"items": [...], "next_cursor": "..."}``; the next page is asked for with
``?cursor=<next_cursor>`` and the same filters; ``next_cursor`` is null on the last page. A
cursor is opaque to clients: inside it is the listing's name and the sort key of the last item
returned (keyset pagination), so items added between two requests never shift a page, and a
cursor from one listing is refused by another.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import HTTPException, Query
from pydantic import BaseModel, Field

__all__ = [
    "MAX_ID",
    "MAX_LIMIT",
    "CursorQuery",
    "LimitQuery",
    "Page",
    "decode_cursor",
    "decode_id_cursor",
    "encode_cursor",
    "page_by_key",
]

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_ID = 2**31 - 1
"""Record ids are 32-bit on PostgreSQL; a larger one names nothing."""

_T = TypeVar("_T")
_K = TypeVar("_K")

CursorQuery = Annotated[
    str | None,
    Query(
        max_length=1000,
        description="next_cursor of the previous page; leave out for the first page",
    ),
]
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page, at most")]


class Page(BaseModel, Generic[_T]):
    items: list[_T]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null on the last page"
    )


def encode_cursor(listing: str, key: Sequence[Any]) -> str:
    text = json.dumps([listing, *key], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _refuse(listing: str) -> HTTPException:
    return HTTPException(
        400, f"cursor: not a cursor of the {listing} listing; pass next_cursor back unchanged"
    )


def decode_cursor(listing: str, cursor: str, shape: Sequence[type]) -> list[Any]:
    """The key inside ``cursor``; a 400 when it is not one this listing made, with this
    ``shape`` (a type per part of the key)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise _refuse(listing) from exc
    if not isinstance(decoded, list) or len(decoded) != len(shape) + 1 or decoded[0] != listing:
        raise _refuse(listing)
    key = decoded[1:]
    for part, kind in zip(key, shape, strict=True):
        # bool is an int to Python, never to a cursor
        if not isinstance(part, kind) or (kind is int and isinstance(part, bool)):
            raise _refuse(listing)
    return key


def decode_id_cursor(listing: str, cursor: str | None) -> int | None:
    """The record id a records listing resumes after."""
    if cursor is None:
        return None
    (after,) = decode_cursor(listing, cursor, (int,))
    if not 0 <= after <= MAX_ID:
        raise _refuse(listing)
    return int(after)


def page_by_key(
    listing: str,
    items: Iterable[_T],
    key: Callable[[_T], tuple[Any, ...]],
    cursor: str | None,
    limit: int,
    shape: Sequence[type],
) -> tuple[list[_T], str | None]:
    """One page of ``items`` (already in ``key`` order) after the cursor's key."""
    after: tuple[Any, ...] | None = None
    if cursor is not None:
        after = tuple(decode_cursor(listing, cursor, shape))
    page: list[_T] = []
    more = False
    for item in items:
        if after is not None and key(item) <= after:
            continue
        if len(page) == limit:
            more = True
            break
        page.append(item)
    next_cursor = encode_cursor(listing, key(page[-1])) if more and page else None
    return page, next_cursor
