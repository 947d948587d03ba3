"""Where records and readings live. SQLite is the embedded default."""

from core.store.models import (
    Alarm,
    DeviceStatus,
    LatestValue,
    MaintenanceDue,
    Notice,
    PlanState,
    StoredDeadLetter,
)
from core.store.sqlite import SqliteStore

__all__ = [
    "Alarm",
    "DeviceStatus",
    "LatestValue",
    "MaintenanceDue",
    "Notice",
    "PlanState",
    "SqliteStore",
    "StoredDeadLetter",
]
