"""The time-series contract every store backend keeps, and the small rules they share.

The rules and the API are written against :class:`TimeSeriesStore`, so the embedded SQLite file
and a PostgreSQL server are interchangeable under them; ``tests/test_store_contract.py`` runs one
suite against both. Conventions shared by every method:

- time windows are half-open, [start, end), like ``SqliteStore.readings``;
- times are stored with millisecond resolution (a finer part is truncated), and come back as
  timezone-aware UTC datetimes;
- writes are idempotent on each record's natural key, so an outbox may replay a batch after a
  crash without creating duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Protocol, get_args

from core.counters import counter_delta
from core.records import FaultEvent, Record, StatusChange
from core.store.models import Bucket, LatestValue

__all__ = ["AGGREGATES", "Aggregate", "TimeSeriesStore", "UsageFold", "check_history"]

Aggregate = Literal["min", "max", "mean", "last", "count"]
"""How the readings of one history bucket become one value. ``last`` is the newest reading's
value; ``count`` the number of readings (as a float, like every bucket value)."""

AGGREGATES: tuple[Aggregate, ...] = get_args(Aggregate)


class TimeSeriesStore(Protocol):
    """What the rules and the API read and write, whatever the backend."""

    async def write(self, records: Sequence[Record]) -> None:
        """Store a batch in one transaction.

        Idempotent: readings on (device, metric, ts), faults on (device, code, ts, active),
        status changes on (device, ts); a replayed record changes nothing.
        """

    async def latest(self, device_ids: Sequence[str] | None = None) -> list[LatestValue]:
        """The newest reading of every (device, metric) of ``device_ids`` (all devices when
        None), ordered by device then metric. A reading that arrives late, older than the
        stored latest one, does not replace it."""

    async def history(
        self,
        device_id: str,
        metric: str,
        *,
        start: datetime,
        end: datetime,
        step_seconds: int,
        aggregate: Aggregate,
    ) -> list[Bucket]:
        """One metric's readings in [start, end) aggregated per step, oldest bucket first.

        Buckets are aligned to multiples of the step since the Unix epoch, not to ``start``,
        so that charts of overlapping windows agree; the first bucket may therefore start
        before ``start`` (it only holds readings from ``start`` on). Empty buckets are omitted.
        """

    async def usage(self, device_id: str, metric: str, *, start: datetime, end: datetime) -> float:
        """Units a counter counted in [start, end), in the counter's raw units.

        The sum of ``counter_delta`` over consecutive readings (the raw register value when
        stored, else the value), including the step from the last reading before ``start`` to
        the first one inside the window: a wrap counts the wrapped distance, a reset counts
        the new value. Multiply by the channel's scale, as the rules do.
        """

    async def faults(
        self, device_id: str | None, *, start: datetime, end: datetime
    ) -> list[FaultEvent]:
        """Fault events in [start, end) of one device (of all when None), ordered by time,
        then device, code and active."""

    async def status_changes(
        self, device_id: str | None, *, start: datetime, end: datetime
    ) -> list[StatusChange]:
        """Status changes in [start, end) of one device (of all when None), ordered by time,
        then device."""


def check_history(step_seconds: int, aggregate: str) -> None:
    """Refuse history arguments that no backend can answer, before any SQL is built from them.

    ``aggregate`` picks a fixed SQL fragment, so an unknown one must never get that far.
    """
    if isinstance(step_seconds, bool) or not isinstance(step_seconds, int) or step_seconds <= 0:
        raise ValueError(f"step_seconds must be a positive whole number, not {step_seconds!r}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, not {aggregate!r}")


class UsageFold:
    """Folds one counter's readings, oldest first, into usage with ``counter_delta``.

    The first reading is only the starting point: with the reading before the window folded in
    first, the step into the window is counted; without one, usage starts at the first reading
    inside it. A fold rather than a function over a list, so that backends can stream rows.
    """

    __slots__ = ("_previous", "usage")

    def __init__(self) -> None:
        self.usage = 0.0
        self._previous: float | None = None

    def add(self, counter: float, width: int | None) -> None:
        """The next reading: its raw register value (else its value) and register width."""
        if self._previous is not None:
            self.usage += counter_delta(self._previous, counter, width)
        self._previous = counter
