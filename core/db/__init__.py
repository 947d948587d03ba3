"""The records database: devices, plans and their state, due occurrences, work orders,
alarms, notifications, the audit log and read cursors, through SQLAlchemy 2 (async) on SQLite
or PostgreSQL, with Alembic migrations.

    records.py   RecordStore: every read and write of the records
    models.py    the values it returns (frozen dataclasses) and Page for keyset pagination
    schema.py    the tables as SQLAlchemy models (what the head migration builds)
    migrate.py   upgrade, current_revision, head_revision, require_current, prepare
    engine.py    records_url, records_url_for, create_engine (SQLite pragmas, PostgreSQL schema)
    migrations/  Alembic environment and the revisions, written by hand
"""

from core.db.engine import records_url, records_url_for
from core.db.migrate import (
    current_revision,
    head_revision,
    prepare,
    require_current,
    upgrade,
    upgrade_command,
)
from core.db.models import (
    Alarm,
    AuditEntry,
    DeviceRecord,
    MaintenanceDue,
    Migration,
    Notification,
    Page,
    StoredPlanState,
    WorkOrder,
    WorkOrderDraft,
)
from core.db.records import RULES, TRANSITIONS, UNSET, RecordStore, Unset

__all__ = [
    "RULES",
    "TRANSITIONS",
    "UNSET",
    "Alarm",
    "AuditEntry",
    "DeviceRecord",
    "MaintenanceDue",
    "Migration",
    "Notification",
    "Page",
    "RecordStore",
    "StoredPlanState",
    "Unset",
    "WorkOrder",
    "WorkOrderDraft",
    "current_revision",
    "head_revision",
    "prepare",
    "records_url",
    "records_url_for",
    "require_current",
    "upgrade",
    "upgrade_command",
]
