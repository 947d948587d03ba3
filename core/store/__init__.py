"""Where records and readings live. SQLite is the embedded default; PostgreSQL keeps the same
time-series contract (``TimeSeriesStore``) for a practice that outgrows one file."""

from core.store.models import (
    Bucket,
    DeviceStatus,
    LatestValue,
    RetentionRun,
    Rollup,
    StoredDeadLetter,
)
from core.store.postgres import PostgresStore
from core.store.sqlite import SqliteStore
from core.store.timeseries import AGGREGATES, Aggregate, Retention, TimeSeriesStore

__all__ = [
    "AGGREGATES",
    "Aggregate",
    "Bucket",
    "DeviceStatus",
    "LatestValue",
    "PostgresStore",
    "Retention",
    "RetentionRun",
    "Rollup",
    "SqliteStore",
    "StoredDeadLetter",
    "TimeSeriesStore",
]
