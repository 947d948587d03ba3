"""A notice for one recipient on one channel, and the log that makes sending it happen once.

Kept free of any database import, so that the dispatcher (and its in-memory log for unit
tests) can use these without SQLAlchemy; ``core.db.RecordStore`` is the durable log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["NoticeRecord", "NotificationLog"]


@dataclass(frozen=True, slots=True)
class NoticeRecord:
    """What to tell ``recipient`` over ``channel`` about the event ``event_key``."""

    event_key: str
    recipient: str
    channel: str
    kind: str
    severity: str
    device_id: str | None
    subject: str
    body: str
    created_at: datetime


class NotificationLog(Protocol):
    """One row per (event_key, recipient, channel): claiming it twice is refused, so a notice
    is never repeated on re-evaluation, restart or catch-up; failures stay to be retried."""

    async def claim(self, notice: NoticeRecord) -> bool:
        """Insert a pending row for (event_key, recipient, channel); False if it exists."""
        ...

    async def mark_sent(self, event_key: str, recipient: str, channel: str, at: datetime) -> None:
        """The notice was delivered at ``at``."""
        ...

    async def mark_failed(
        self, event_key: str, recipient: str, channel: str, at: datetime, error: str
    ) -> None:
        """A delivery attempt failed: count it, keep status 'failed' and ``error``."""
        ...

    async def unsent(self, limit: int = 100) -> list[NoticeRecord]:
        """Pending or failed notices, oldest first, for retry after a restart."""
        ...
