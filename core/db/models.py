"""What ``RecordStore`` hands back: plain, typed, immutable values (times are aware UTC)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

__all__ = [
    "Alarm",
    "AuditEntry",
    "DeviceRecord",
    "MaintenanceDue",
    "Migration",
    "Notification",
    "Page",
    "StoredPlanState",
    "WorkOrder",
    "WorkOrderDraft",
]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Page(Generic[_T]):
    """One page of a listing in id order. ``next_after`` is the cursor for the next page
    (pass it as ``after``), None when this page reached the end. Ids only grow, so rows
    added between two pages appear at the end: no duplicates, no gaps."""

    items: list[_T]
    next_after: int | None


@dataclass(frozen=True, slots=True)
class Migration:
    """What ``upgrade`` did: the revision before (None: no records yet) and after."""

    before: str | None
    after: str


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    id: str
    kind: str
    manufacturer: str
    model: str
    serial: str
    location: str
    risk_class: str
    first_seen: datetime
    retired: bool


@dataclass(frozen=True, slots=True)
class StoredPlanState:
    """A plan's state as the rules engine saved it; ``state`` is the engine's own document
    (JSON: strings, numbers, booleans, None, lists and dicts)."""

    plan_id: str
    device_id: str
    cycle: int
    state: dict[str, Any]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MaintenanceDue:
    id: int
    plan_id: str
    device_id: str
    cycle: int
    basis: str
    detail: str
    due_at: datetime | None
    due_value: float | None
    detected: datetime
    closed_at: datetime | None


@dataclass(frozen=True, slots=True)
class WorkOrderDraft:
    """A work order to open. A ``pm`` order names its plan occurrence (plan_id, cycle) and
    opening it twice returns the first; a ``corrective`` one opened from a fault names the
    fault occurrence in ``fault_key``, with the same effect."""

    kind: str
    device_id: str
    title: str
    plan_id: str | None = None
    cycle: int | None = None
    fault_key: str | None = None
    priority: str = "normal"
    assignee: str | None = None
    due_from: datetime | None = None
    due_to: datetime | None = None
    notes: str = ""


@dataclass(frozen=True, slots=True)
class WorkOrder:
    id: int
    kind: str
    device_id: str
    plan_id: str | None
    cycle: int | None
    fault_key: str | None
    title: str
    state: str
    priority: str
    assignee: str | None
    due_from: datetime | None
    due_to: datetime | None
    notes: str
    problem_code: str | None
    cause_code: str | None
    remedy_code: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    counters: dict[str, float] | None = field(default=None)


@dataclass(frozen=True, slots=True)
class Alarm:
    id: int
    device_id: str
    type: str
    severity: str
    message: str
    active: bool
    acknowledged: bool
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    count: int
    first_seen: datetime
    last_seen: datetime
    cleared_at: datetime | None
    escalated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Notification:
    id: int
    event_key: str
    recipient: str
    channel: str
    kind: str
    severity: str
    device_id: str | None
    subject: str
    body: str
    created_at: datetime
    status: str
    attempts: int
    last_error: str | None
    sent_at: datetime | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change: ``before`` is None for a creation; both are the record as JSON (times as
    ISO 8601 strings)."""

    id: int
    at: datetime
    actor: str
    entity: str
    entity_id: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
