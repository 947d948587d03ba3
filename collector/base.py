"""The contracts shared by every source, and the small pieces of state both protocols need.

There are two kinds of source (as in Telegraf): a *streaming* source is told about data by the
device (MQTT) and runs until cancelled; a *polled* source asks each device on a schedule
(Modbus). Both hand typed records and dead letters to a ``RecordSink``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from core.records import DeadLetter, FaultEvent, Record, StatusChange

__all__ = ["CollectorStats", "FaultTracker", "OnDurable", "OnlineTracker", "RecordSink"]


OnDurable = Callable[[], None]


class RecordSink(Protocol):
    async def put(self, records: Sequence[Record], on_durable: OnDurable | None = None) -> None:
        """Accept records; may wait when the sink is full (backpressure). ``on_durable`` is
        called once they are committed."""
        ...

    async def dead_letter(self, letter: DeadLetter, on_durable: OnDurable | None = None) -> None:
        """Keep a message that could not be turned into records."""
        ...


@dataclass
class CollectorStats:
    """Counters every collector keeps; exported as metrics."""

    messages: int = 0
    records: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    polls_ok: int = 0
    polls_failed: Counter[str] = field(default_factory=Counter)


class FaultTracker:
    """Turns "these fault codes are active now" into raise/clear events, edge-triggered, so
    a fault reported in every message is one event, not one per message."""

    def __init__(self) -> None:
        self._active: dict[str, set[str]] = {}

    def update(self, device_id: str, active: set[str], ts: datetime) -> list[FaultEvent]:
        before = self._active.get(device_id, set())
        self._active[device_id] = active
        raised = [FaultEvent(device_id, code, ts, True) for code in sorted(active - before)]
        cleared = [FaultEvent(device_id, code, ts, False) for code in sorted(before - active)]
        return raised + cleared


class OnlineTracker:
    """Remembers each device's online state and reports transitions only."""

    def __init__(self) -> None:
        self._online: dict[str, bool] = {}

    def mark(self, device_id: str, online: bool, ts: datetime, reason: str) -> list[StatusChange]:
        if self._online.get(device_id) is online:
            return []
        self._online[device_id] = online
        return [StatusChange(device_id, online, ts, reason)]

    def is_online(self, device_id: str) -> bool | None:
        return self._online.get(device_id)

    def states(self) -> dict[str, bool]:
        """Every device heard of or polled so far, and whether it is online now."""
        return dict(self._online)
