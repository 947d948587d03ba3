"""The records tables, as SQLAlchemy models: what the head migration creates.

The migrations in ``core.db.migrations`` are written by hand; a test compares what they build
with these models (Alembic's autogenerate diff), on SQLite and on PostgreSQL, so the two agree.

Identities:
- every record with an ``id`` keeps it for life: ids are never reused (SQLite AUTOINCREMENT,
  PostgreSQL sequences), so an integrator can hold on to them and page by them;
- a plan's n-th due occurrence is (plan_id, cycle), and so is its preventive work order;
- a corrective work order opened from a fault carries the fault's ``fault_key``;
- at most one *active* alarm exists per (device_id, type), by a partial unique index;
- a notification is (event_key, recipient, channel);
- an API token is found by its ``lookup`` (public, unique) and checked against ``secret_hash``;
  its ``name`` is unique, so that it can be revoked by name.

Allowed values (states, priorities, severities) are checked by the database as well as by
``RecordStore``, so that no other writer can store a state the state machine does not know.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.db.types import UTCDateTime

__all__ = [
    "ALARM_SEVERITIES",
    "API_ROLES",
    "NAMING_CONVENTION",
    "NOTIFICATION_STATUSES",
    "PRIORITIES",
    "RISK_CLASSES",
    "WORK_ORDER_KINDS",
    "WORK_ORDER_STATES",
    "AlarmRow",
    "ApiTokenRow",
    "AuditRow",
    "Base",
    "CursorRow",
    "DeviceRow",
    "MaintenanceDueRow",
    "NotificationRow",
    "PlanStateRow",
    "WorkOrderRow",
]

# Named constraints, so that a migration can name what it alters on either backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

WORK_ORDER_KINDS = ("pm", "corrective")
WORK_ORDER_STATES = ("open", "in_progress", "on_hold", "done", "cancelled")
PRIORITIES = ("low", "normal", "high", "urgent")
ALARM_SEVERITIES = ("critical", "major", "minor", "warning")
NOTIFICATION_STATUSES = ("pending", "sent", "failed")
RISK_CLASSES = ("low", "medium", "high")
API_ROLES = ("technician", "manager", "integration", "admin")

# The predicate of the one-active-alarm index; the same text is the conflict target's.
ACTIVE_ALARM = "active"


def one_of(column: str, values: tuple[str, ...]) -> str:
    """SQL that holds when ``column`` is one of ``values`` (constants of this module)."""
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class DeviceRow(Base):
    """The device registry, kept in step with the site configuration; never deleted."""

    __tablename__ = "devices"
    __table_args__ = (CheckConstraint(one_of("risk_class", RISK_CLASSES), name="risk_class"),)

    id: Mapped[str] = mapped_column(String, primary_key=True)
    kind: Mapped[str] = mapped_column(String)
    manufacturer: Mapped[str] = mapped_column(String)
    model: Mapped[str] = mapped_column(String)
    serial: Mapped[str] = mapped_column(String)
    location: Mapped[str] = mapped_column(String)
    risk_class: Mapped[str] = mapped_column(String)
    first_seen: Mapped[datetime]
    retired: Mapped[bool]


class PlanStateRow(Base):
    """What the rules engine remembers about a plan; ``state`` is its own JSON document."""

    __tablename__ = "plan_state"

    plan_id: Mapped[str] = mapped_column(String, primary_key=True)
    device_id: Mapped[str] = mapped_column(String)
    cycle: Mapped[int] = mapped_column(Integer)
    state: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]


class MaintenanceDueRow(Base):
    """A plan's ``cycle``-th due occurrence, recorded once; closed when the work is done."""

    __tablename__ = "maintenance_due"
    __table_args__ = (UniqueConstraint("plan_id", "cycle"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_id: Mapped[str] = mapped_column(String)
    device_id: Mapped[str] = mapped_column(String)
    cycle: Mapped[int] = mapped_column(Integer)
    basis: Mapped[str] = mapped_column(String)
    detail: Mapped[str] = mapped_column(String)
    due_at: Mapped[datetime | None]
    due_value: Mapped[float | None] = mapped_column(Float)
    detected: Mapped[datetime]
    closed_at: Mapped[datetime | None]


class WorkOrderRow(Base):
    """A preventive (``pm``, one per plan occurrence) or corrective work order."""

    __tablename__ = "work_orders"
    __table_args__ = (
        UniqueConstraint("plan_id", "cycle"),
        UniqueConstraint("fault_key"),
        CheckConstraint(one_of("kind", WORK_ORDER_KINDS), name="kind"),
        CheckConstraint(one_of("state", WORK_ORDER_STATES), name="state"),
        CheckConstraint(one_of("priority", PRIORITIES), name="priority"),
        CheckConstraint(
            "kind <> 'pm' OR (plan_id IS NOT NULL AND cycle IS NOT NULL)", name="pm_has_plan"
        ),
        CheckConstraint(
            "due_from IS NULL OR due_to IS NULL OR due_from <= due_to", name="due_window"
        ),
        Index(None, "device_id"),
        Index(None, "state"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String)
    device_id: Mapped[str] = mapped_column(String)
    plan_id: Mapped[str | None] = mapped_column(String)
    cycle: Mapped[int | None] = mapped_column(Integer)
    fault_key: Mapped[str | None] = mapped_column(String)
    title: Mapped[str] = mapped_column(String)
    state: Mapped[str] = mapped_column(String)
    priority: Mapped[str] = mapped_column(String)
    assignee: Mapped[str | None] = mapped_column(String)
    due_from: Mapped[datetime | None]
    due_to: Mapped[datetime | None]
    notes: Mapped[str] = mapped_column(Text)
    problem_code: Mapped[str | None] = mapped_column(String)
    cause_code: Mapped[str | None] = mapped_column(String)
    remedy_code: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    counters: Mapped[dict[str, Any] | None]


class AlarmRow(Base):
    """An alarm of one type on one device; repeats while active count up instead of adding."""

    __tablename__ = "alarms"
    __table_args__ = (
        CheckConstraint(one_of("severity", ALARM_SEVERITIES), name="severity"),
        Index(
            "uq_alarms_one_active",
            "device_id",
            "type",
            unique=True,
            sqlite_where=text(ACTIVE_ALARM),
            postgresql_where=text(ACTIVE_ALARM),
        ),
        Index(None, "device_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String)
    type: Mapped[str] = mapped_column(String)
    severity: Mapped[str] = mapped_column(String)
    message: Mapped[str] = mapped_column(String)
    active: Mapped[bool]
    acknowledged: Mapped[bool]
    acknowledged_by: Mapped[str | None] = mapped_column(String)
    acknowledged_at: Mapped[datetime | None]
    count: Mapped[int] = mapped_column(Integer)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    cleared_at: Mapped[datetime | None]
    escalated_at: Mapped[datetime | None]


class NotificationRow(Base):
    """One notice to one recipient on one channel, and how delivering it went."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("event_key", "recipient", "channel"),
        CheckConstraint(one_of("status", NOTIFICATION_STATUSES), name="status"),
        Index(None, "status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_key: Mapped[str] = mapped_column(String)
    recipient: Mapped[str] = mapped_column(String)
    channel: Mapped[str] = mapped_column(String)
    kind: Mapped[str] = mapped_column(String)
    severity: Mapped[str] = mapped_column(String)
    device_id: Mapped[str | None] = mapped_column(String)
    subject: Mapped[str] = mapped_column(String)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String)
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]


class AuditRow(Base):
    """One change to a plan, work order, alarm or device: who, what, when, before and after.
    Only ever appended."""

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "entity", "entity_id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String)
    entity: Mapped[str] = mapped_column(String)
    entity_id: Mapped[str] = mapped_column(String)
    action: Mapped[str] = mapped_column(String)
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]


class CursorRow(Base):
    """How far a consumer has read a stream (e.g. the rules through the fault events)."""

    __tablename__ = "cursors"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)


class ApiTokenRow(Base):
    """A bearer token of the API: who holds it, their role, and a hash of its secret (the
    secret itself is shown once, when the token is made, and never stored)."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        UniqueConstraint("name"),
        UniqueConstraint("lookup"),
        CheckConstraint(one_of("role", API_ROLES), name="role"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    role: Mapped[str] = mapped_column(String)
    lookup: Mapped[str] = mapped_column(String)
    secret_hash: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
