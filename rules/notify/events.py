"""The event a rule produces, and the stable keys that make each event notify once.

An event's ``key`` is its identity across re-evaluations, restarts and catch-up: the same
occurrence always gets the same key, so the notification log can refuse a second notice.
Events carry device facts only (device ids, plan and alarm names, counters, dates), never
anything about a patient.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import TypeAlias

from core.notify_config import EVENT_KINDS, SEVERITIES, EventKind, Severity
from rules.notify.errors import InvalidEvent

__all__ = [
    "EVENT_KINDS",
    "SEVERITIES",
    "Event",
    "EventKind",
    "JsonValue",
    "Severity",
    "alarm_raised_key",
    "digest_key",
    "due_key",
    "escalation_key",
    "overdue_key",
    "severity_at_least",
    "supplies_key",
    "upcoming_key",
    "work_order_key",
]

JsonValue: TypeAlias = str | int | float | bool | list["JsonValue"] | dict[str, "JsonValue"] | None


def severity_at_least(severity: Severity, minimum: Severity) -> bool:
    """Whether ``severity`` is ``minimum`` or more severe (critical > major > minor > warning
    > info)."""
    return SEVERITIES.index(severity) <= SEVERITIES.index(minimum)


@dataclass(frozen=True, slots=True)
class Event:
    """Something a person should hear about once.

    ``body`` is plain text; ``html``, when given, is sent beside it to mail clients.
    ``data`` holds device facts for machine receivers (webhooks, the MQTT topic).
    ``recipients``, when not empty, narrows the event to those recipients by name (e.g. the
    technician a work order is assigned to); their routes still apply.
    """

    key: str
    kind: EventKind
    severity: Severity
    device_id: str | None
    subject: str
    body: str
    data: Mapping[str, JsonValue] = field(default_factory=dict)
    html: str | None = None
    recipients: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.key.strip() or not self.key.isprintable() or len(self.key) > 200:
            raise InvalidEvent(f"event key {self.key!r} must be one printable line, 1-200 long")
        if self.kind not in EVENT_KINDS:
            raise InvalidEvent(f"unknown event kind {self.kind!r}; known: {', '.join(EVENT_KINDS)}")
        if self.severity not in SEVERITIES:
            raise InvalidEvent(
                f"unknown severity {self.severity!r}; known: {', '.join(SEVERITIES)}"
            )
        if not self.subject.strip() or not self.subject.isprintable():
            # a line break in a subject would end the mail header and start another
            raise InvalidEvent(f"event {self.key}: the subject must be one non-empty line")
        try:
            json.dumps(dict(self.data), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(f"event {self.key}: data is not plain JSON ({exc})") from exc


def due_key(plan_id: str, cycle: int) -> str:
    """A maintenance plan's occurrence falling due; ``cycle`` counts completed services."""
    return f"due:{plan_id}:{cycle}"


def upcoming_key(plan_id: str, cycle: int) -> str:
    """The lead-time notice before that occurrence falls due."""
    return f"upcoming:{plan_id}:{cycle}"


def overdue_key(plan_id: str, cycle: int) -> str:
    return f"overdue:{plan_id}:{cycle}"


def alarm_raised_key(alarm_id: int | str) -> str:
    return f"alarm:{alarm_id}:raised"


def escalation_key(alarm_id: int | str) -> str:
    """An alarm left unacknowledged past the escalation delay; escalated once."""
    return f"escalation:{alarm_id}"


def supplies_key(plan_id: str, occurrence: int | str) -> str:
    return f"supplies:{plan_id}:{occurrence}"


def work_order_key(order_id: int | str, what: str, assignee: str | None = None) -> str:
    """``what`` is opened or assigned; an assignment names the assignee, so a reassignment is
    a new notice and a repeated one is not."""
    if assignee is None:
        return f"work_order:{order_id}:{what}"
    return f"work_order:{order_id}:{what}:{assignee}"


def digest_key(site: str, local_date: date) -> str:
    """One digest per site and local day."""
    return f"digest:{site}:{local_date.isoformat()}"
