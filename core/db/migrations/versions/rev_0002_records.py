"""Records: devices, work orders, notifications, the audit log; alarms that are acknowledged,
cleared and escalated; due occurrences that close; plan state as the engine's JSON document.

What happens to each table of 0001 (its rows are carried over, ids kept):
- ``plan_state``: the columns become one JSON document ``state`` with the same names
  (``started``, ``usage``, ``first_value``, ``last_raw``, ``last_ts``, ``last_completed``;
  times as ISO 8601 UTC strings), plus ``updated_at``, the newest of its times.
- ``maintenance_due``: times become UTC datetimes; ``done`` becomes ``closed_at`` (a done
  occurrence gets its detection time, the only time 0001 kept).
- ``alarms``: flags become booleans, times UTC datetimes; a cleared alarm's ``cleared_at`` is
  its last-seen time (0001 moved last-seen to the clearing time); acknowledged_by/_at and
  escalated_at start empty.
- ``notices`` becomes ``notifications``: 0001 kept notices for display only and delivered
  none, so each is carried over on channel ``legacy`` (no recipient) as already dealt with
  (status ``sent``): the dispatcher never sends old news after an upgrade.
- ``cursors.position`` widens to 64 bits.

Every table whose rows change shape is rebuilt the same way: read its rows, drop it, create
it anew, insert them; all in the migration's one transaction, so a failure leaves 0001 intact.
PostgreSQL's id sequences are moved past the carried-over ids. The downgrade reverses this; it
loses what 0001 cannot hold (acknowledgements, escalations, clearing times, notifications
beyond the first per event, and every new table).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from core.db.types import UTCDateTime

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

ACTIVE = sa.text("active")
LEGACY_ACTIVE = sa.text("active = 1")
LEGACY_CHANNEL = "legacy"


# --- conversions ---------------------------------------------------------------------------


def _moment(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else round(moment.timestamp() * 1000)


def _iso(ms: int | None) -> str | None:
    moment = _moment(ms)
    return None if moment is None else moment.isoformat()


def _from_iso(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _rows(table: str, columns: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every row of ``table`` in key order; ``columns`` types them (times, JSON, flags) where
    raw values would not do."""
    bind = op.get_bind()
    if columns is None:
        query: sa.Executable = sa.text(f"SELECT * FROM {table} ORDER BY 1")
    else:
        shape = sa.table(table, *(sa.column(name, type_) for name, type_ in columns.items()))
        query = sa.select(shape).order_by(shape.c[next(iter(columns))])
    return [dict(row) for row in bind.execute(query).mappings()]


def _insert(table: sa.Table, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    if rows:
        op.bulk_insert(table, rows)


def _restart_ids(table: str) -> None:
    """Let PostgreSQL's sequence continue after the largest carried-over id (SQLite's
    AUTOINCREMENT follows inserted ids by itself)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"COALESCE(MAX(id), 0) + 1, false) FROM {table}"
        )


# --- upgrade -------------------------------------------------------------------------------


def upgrade() -> None:
    _upgrade_plan_state()
    _upgrade_maintenance_due()
    _upgrade_alarms()
    _notices_to_notifications()
    with op.batch_alter_table("cursors") as batch:
        batch.alter_column(
            "position", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False
        )
    _create_devices()
    _create_work_orders()
    _create_audit_log()


def _upgrade_plan_state() -> None:
    old = _rows("plan_state")
    op.drop_table("plan_state")
    table = op.create_table(
        "plan_state",
        sa.Column("plan_id", sa.String, primary_key=True),
        sa.Column("device_id", sa.String, nullable=False),
        sa.Column("cycle", sa.Integer, nullable=False),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    _insert(
        table,
        (
            {
                "plan_id": row["plan_id"],
                "device_id": row["device_id"],
                "cycle": row["cycle"],
                "state": {
                    "started": _iso(row["started_ms"]),
                    "usage": row["usage"],
                    "first_value": row["first_value"],
                    "last_raw": row["last_raw"],
                    "last_ts": _iso(row["last_ts_ms"]),
                    "last_completed": _iso(row["last_completed_ms"]),
                },
                "updated_at": _moment(
                    max(
                        ms
                        for ms in (row["started_ms"], row["last_ts_ms"], row["last_completed_ms"])
                        if ms is not None
                    )
                ),
            }
            for row in old
        ),
    )


def _create_maintenance_due() -> sa.Table:
    return op.create_table(
        "maintenance_due",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("plan_id", sa.String, nullable=False),
        sa.Column("device_id", sa.String, nullable=False),
        sa.Column("cycle", sa.Integer, nullable=False),
        sa.Column("basis", sa.String, nullable=False),
        sa.Column("detail", sa.String, nullable=False),
        sa.Column("due_at", UTCDateTime),
        sa.Column("due_value", sa.Float),
        sa.Column("detected", UTCDateTime, nullable=False),
        sa.Column("closed_at", UTCDateTime),
        sa.UniqueConstraint("plan_id", "cycle"),
        sqlite_autoincrement=True,
    )


def _upgrade_maintenance_due() -> None:
    old = _rows("maintenance_due")
    op.drop_table("maintenance_due")
    table = _create_maintenance_due()
    _insert(
        table,
        (
            {
                "id": row["id"],
                "plan_id": row["plan_id"],
                "device_id": row["device_id"],
                "cycle": row["cycle"],
                "basis": row["basis"],
                "detail": row["detail"],
                "due_at": _moment(row["due_at_ms"]),
                "due_value": row["due_value"],
                "detected": _moment(row["detected_ms"]),
                "closed_at": _moment(row["detected_ms"]) if row["done"] else None,
            }
            for row in old
        ),
    )
    _restart_ids("maintenance_due")


def _create_alarms() -> sa.Table:
    table = op.create_table(
        "alarms",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_id", sa.String, nullable=False),
        sa.Column("type", sa.String, nullable=False),
        sa.Column("severity", sa.String, nullable=False),
        sa.Column("message", sa.String, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("acknowledged", sa.Boolean, nullable=False),
        sa.Column("acknowledged_by", sa.String),
        sa.Column("acknowledged_at", UTCDateTime),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
        sa.Column("cleared_at", UTCDateTime),
        sa.Column("escalated_at", UTCDateTime),
        sa.CheckConstraint(
            "severity IN ('critical', 'major', 'minor', 'warning')", name="severity"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "uq_alarms_one_active",
        "alarms",
        ["device_id", "type"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )
    op.create_index("ix_alarms_device_id", "alarms", ["device_id"])
    return table


def _upgrade_alarms() -> None:
    old = _rows("alarms")
    op.drop_table("alarms")
    table = _create_alarms()
    _insert(
        table,
        (
            {
                "id": row["id"],
                "device_id": row["device_id"],
                "type": row["type"],
                "severity": row["severity"],
                "message": row["message"],
                "active": bool(row["active"]),
                "acknowledged": bool(row["acknowledged"]),
                "acknowledged_by": None,
                "acknowledged_at": None,
                "count": row["count"],
                "first_seen": _moment(row["first_seen_ms"]),
                "last_seen": _moment(row["last_seen_ms"]),
                "cleared_at": None if row["active"] else _moment(row["last_seen_ms"]),
                "escalated_at": None,
            }
            for row in old
        ),
    )
    _restart_ids("alarms")


def _notices_to_notifications() -> None:
    old = _rows("notices")
    op.drop_table("notices")
    table = op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("event_key", sa.String, nullable=False),
        sa.Column("recipient", sa.String, nullable=False),
        sa.Column("channel", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("severity", sa.String, nullable=False),
        sa.Column("device_id", sa.String),
        sa.Column("subject", sa.String, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("sent_at", UTCDateTime),
        sa.UniqueConstraint("event_key", "recipient", "channel"),
        sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_notifications_status", "notifications", ["status"])
    _insert(
        table,
        (
            {
                "id": row["id"],
                "event_key": row["event_key"],
                "recipient": "",
                "channel": LEGACY_CHANNEL,
                "kind": row["kind"],
                "severity": "info",
                "device_id": row["device_id"],
                "subject": row["subject"],
                "body": row["subject"],
                "created_at": _moment(row["created_ms"]),
                "status": "sent",
                "attempts": 0,
                "last_error": None,
                "sent_at": _moment(row["created_ms"]),
            }
            for row in old
        ),
    )
    _restart_ids("notifications")


def _create_devices() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("manufacturer", sa.String, nullable=False),
        sa.Column("model", sa.String, nullable=False),
        sa.Column("serial", sa.String, nullable=False),
        sa.Column("location", sa.String, nullable=False),
        sa.Column("risk_class", sa.String, nullable=False),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("retired", sa.Boolean, nullable=False),
        sa.CheckConstraint("risk_class IN ('low', 'medium', 'high')", name="risk_class"),
    )


def _create_work_orders() -> None:
    op.create_table(
        "work_orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("device_id", sa.String, nullable=False),
        sa.Column("plan_id", sa.String),
        sa.Column("cycle", sa.Integer),
        sa.Column("fault_key", sa.String),
        sa.Column("title", sa.String, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("priority", sa.String, nullable=False),
        sa.Column("assignee", sa.String),
        sa.Column("due_from", UTCDateTime),
        sa.Column("due_to", UTCDateTime),
        sa.Column("notes", sa.Text, nullable=False),
        sa.Column("problem_code", sa.String),
        sa.Column("cause_code", sa.String),
        sa.Column("remedy_code", sa.String),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("completed_at", UTCDateTime),
        sa.Column("counters", sa.JSON),
        sa.UniqueConstraint("plan_id", "cycle"),
        sa.UniqueConstraint("fault_key"),
        sa.CheckConstraint("kind IN ('pm', 'corrective')", name="kind"),
        sa.CheckConstraint(
            "state IN ('open', 'in_progress', 'on_hold', 'done', 'cancelled')", name="state"
        ),
        sa.CheckConstraint("priority IN ('low', 'normal', 'high', 'urgent')", name="priority"),
        sa.CheckConstraint(
            "kind <> 'pm' OR (plan_id IS NOT NULL AND cycle IS NOT NULL)", name="pm_has_plan"
        ),
        sa.CheckConstraint(
            "due_from IS NULL OR due_to IS NULL OR due_from <= due_to", name="due_window"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_work_orders_device_id", "work_orders", ["device_id"])
    op.create_index("ix_work_orders_state", "work_orders", ["state"])


def _create_audit_log() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String, nullable=False),
        sa.Column("entity", sa.String, nullable=False),
        sa.Column("entity_id", sa.String, nullable=False),
        sa.Column("action", sa.String, nullable=False),
        sa.Column("before", sa.JSON),
        sa.Column("after", sa.JSON),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_log_entity_entity_id", "audit_log", ["entity", "entity_id"])


# --- downgrade -----------------------------------------------------------------------------


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("work_orders")
    op.drop_table("devices")
    with op.batch_alter_table("cursors") as batch:
        batch.alter_column(
            "position", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False
        )
    _notifications_to_notices()
    _downgrade_alarms()
    _downgrade_maintenance_due()
    _downgrade_plan_state()


def _notifications_to_notices() -> None:
    old = _rows(
        "notifications",
        {
            "id": sa.Integer(),
            "event_key": sa.String(),
            "kind": sa.String(),
            "device_id": sa.String(),
            "subject": sa.String(),
            "created_at": UTCDateTime(),
        },
    )
    op.drop_table("notifications")
    table = op.create_table(
        "notices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("device_id", sa.String, nullable=False),
        sa.Column("event_key", sa.String, nullable=False, unique=True),
        sa.Column("subject", sa.String, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    first: dict[str, dict[str, Any]] = {}
    for row in old:
        first.setdefault(row["event_key"], row)
    _insert(
        table,
        (
            {
                "id": row["id"],
                "kind": row["kind"],
                "device_id": row["device_id"] or "",
                "event_key": row["event_key"],
                "subject": row["subject"],
                "created_ms": _ms(row["created_at"]),
            }
            for row in first.values()
        ),
    )
    _restart_ids("notices")


def _downgrade_alarms() -> None:
    old = _rows(
        "alarms",
        {
            "id": sa.Integer(),
            "device_id": sa.String(),
            "type": sa.String(),
            "severity": sa.String(),
            "message": sa.String(),
            "active": sa.Boolean(),
            "acknowledged": sa.Boolean(),
            "count": sa.Integer(),
            "first_seen": UTCDateTime(),
            "last_seen": UTCDateTime(),
        },
    )
    op.drop_table("alarms")
    table = op.create_table(
        "alarms",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_id", sa.String, nullable=False),
        sa.Column("type", sa.String, nullable=False),
        sa.Column("severity", sa.String, nullable=False),
        sa.Column("message", sa.String, nullable=False),
        sa.Column("active", sa.Integer, nullable=False),
        sa.Column("acknowledged", sa.Integer, nullable=False, server_default="0"),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("first_seen_ms", sa.BigInteger, nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "alarms_one_active",
        "alarms",
        ["device_id", "type"],
        unique=True,
        sqlite_where=LEGACY_ACTIVE,
        postgresql_where=LEGACY_ACTIVE,
    )
    _insert(
        table,
        (
            {
                "id": row["id"],
                "device_id": row["device_id"],
                "type": row["type"],
                "severity": row["severity"],
                "message": row["message"],
                "active": int(row["active"]),
                "acknowledged": int(row["acknowledged"]),
                "count": row["count"],
                "first_seen_ms": _ms(row["first_seen"]),
                "last_seen_ms": _ms(row["last_seen"]),
            }
            for row in old
        ),
    )
    _restart_ids("alarms")


def _downgrade_maintenance_due() -> None:
    old = _rows(
        "maintenance_due",
        {
            "id": sa.Integer(),
            "plan_id": sa.String(),
            "device_id": sa.String(),
            "cycle": sa.Integer(),
            "basis": sa.String(),
            "detail": sa.String(),
            "due_at": UTCDateTime(),
            "due_value": sa.Float(),
            "detected": UTCDateTime(),
            "closed_at": UTCDateTime(),
        },
    )
    op.drop_table("maintenance_due")
    table = op.create_table(
        "maintenance_due",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("plan_id", sa.String, nullable=False),
        sa.Column("device_id", sa.String, nullable=False),
        sa.Column("cycle", sa.Integer, nullable=False),
        sa.Column("basis", sa.String, nullable=False),
        sa.Column("detail", sa.String, nullable=False),
        sa.Column("due_at_ms", sa.BigInteger),
        sa.Column("due_value", sa.Float),
        sa.Column("detected_ms", sa.BigInteger, nullable=False),
        sa.Column("done", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint("plan_id", "cycle"),
        sqlite_autoincrement=True,
    )
    _insert(
        table,
        (
            {
                "id": row["id"],
                "plan_id": row["plan_id"],
                "device_id": row["device_id"],
                "cycle": row["cycle"],
                "basis": row["basis"],
                "detail": row["detail"],
                "due_at_ms": _ms(row["due_at"]),
                "due_value": row["due_value"],
                "detected_ms": _ms(row["detected"]),
                "done": int(row["closed_at"] is not None),
            }
            for row in old
        ),
    )
    _restart_ids("maintenance_due")


def _downgrade_plan_state() -> None:
    old = _rows(
        "plan_state",
        {
            "plan_id": sa.String(),
            "device_id": sa.String(),
            "cycle": sa.Integer(),
            "state": sa.JSON(),
            "updated_at": UTCDateTime(),
        },
    )
    op.drop_table("plan_state")
    table = op.create_table(
        "plan_state",
        sa.Column("plan_id", sa.String, primary_key=True),
        sa.Column("device_id", sa.String, nullable=False),
        sa.Column("started_ms", sa.BigInteger, nullable=False),
        sa.Column("cycle", sa.Integer, nullable=False),
        sa.Column("usage", sa.Float, nullable=False),
        sa.Column("first_value", sa.Float),
        sa.Column("last_raw", sa.Float),
        sa.Column("last_ts_ms", sa.BigInteger),
        sa.Column("last_completed_ms", sa.BigInteger),
    )
    rows = []
    for row in old:
        state: dict[str, Any] = row["state"] if isinstance(row["state"], dict) else {}
        rows.append(
            {
                "plan_id": row["plan_id"],
                "device_id": row["device_id"],
                "started_ms": _ms(_from_iso(state.get("started")) or row["updated_at"]),
                "cycle": row["cycle"],
                "usage": float(state.get("usage") or 0.0),
                "first_value": state.get("first_value"),
                "last_raw": state.get("last_raw"),
                "last_ts_ms": _ms(_from_iso(state.get("last_ts"))),
                "last_completed_ms": _ms(_from_iso(state.get("last_completed"))),
            }
        )
    _insert(table, rows)
