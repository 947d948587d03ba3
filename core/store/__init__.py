"""Where records and readings live. SQLite is the embedded default; PostgreSQL keeps the same
time-series contract (``TimeSeriesStore``) for a practice that outgrows one file."""

from core.store.models import (
    Alarm,
    Bucket,
    DeviceStatus,
    LatestValue,
    MaintenanceDue,
    Notice,
    PlanState,
    StoredDeadLetter,
)
from core.store.postgres import PostgresStore
from core.store.sqlite import SqliteStore
from core.store.timeseries import AGGREGATES, Aggregate, TimeSeriesStore

__all__ = [
    "AGGREGATES",
    "Aggregate",
    "Alarm",
    "Bucket",
    "DeviceStatus",
    "LatestValue",
    "MaintenanceDue",
    "Notice",
    "PlanState",
    "PostgresStore",
    "SqliteStore",
    "StoredDeadLetter",
    "TimeSeriesStore",
]
