"""What the routes depend on, as ``Annotated`` aliases, and the contracts of what the app is
given: the time series it reads (``SeriesReader``) and, optionally, where every plan stands
(``PlanStandings``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Protocol

from fastapi import Depends, Request

from api.auth import READERS, Principal, require
from api.catalogue import Catalogue
from core.clock import Clock
from core.db import RecordStore
from core.records import FaultEvent, Reading, StatusChange
from core.store.models import Bucket, DeviceStatus, LatestValue, StoredDeadLetter
from core.store.timeseries import Aggregate, Resolution

__all__ = [
    "CatalogueDep",
    "ClockDep",
    "PlanStanding",
    "PlanStandings",
    "Reader",
    "RecordsDep",
    "SeriesDep",
    "SeriesReader",
]


class SeriesReader(Protocol):
    """The time-series reads the API makes: exactly these methods of ``SqliteStore`` (and of
    ``PostgresStore`` once it has ``readings``, ``statuses`` and ``dead_letters``)."""

    async def latest(self, device_ids: Sequence[str] | None = None) -> list[LatestValue]: ...

    async def history(
        self,
        device_id: str,
        metric: str,
        *,
        start: datetime,
        end: datetime,
        step_seconds: int,
        aggregate: Aggregate,
        resolution: Resolution | None = None,
    ) -> list[Bucket]: ...

    async def readings(
        self,
        device_id: str,
        *,
        start: datetime,
        end: datetime,
        metric: str | None = None,
        limit: int = 1000,
    ) -> list[Reading]: ...

    async def statuses(self) -> dict[str, DeviceStatus]: ...

    async def faults(
        self, device_id: str | None, *, start: datetime, end: datetime
    ) -> list[FaultEvent]: ...

    async def status_changes(
        self, device_id: str | None, *, start: datetime, end: datetime
    ) -> list[StatusChange]: ...

    async def dead_letters(self, limit: int = 100) -> list[StoredDeadLetter]: ...


class PlanStanding(Protocol):
    """Where one plan stands, as the rules engine assesses it (``rules.plans.PlanStatus`` has
    this shape): ``status`` ok, upcoming, due or overdue; ``basis`` what decided it."""

    @property
    def plan_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def basis(self) -> str: ...
    @property
    def cycle(self) -> int: ...
    @property
    def detail(self) -> str: ...
    @property
    def due_at(self) -> datetime | None: ...
    @property
    def due_value(self) -> float | None: ...
    @property
    def usage(self) -> float | None: ...
    @property
    def upcoming_at(self) -> datetime | None: ...
    @property
    def overdue_at(self) -> datetime | None: ...
    @property
    def forecast_at(self) -> datetime | None: ...


PlanStandings = Callable[[], Awaitable[Mapping[str, PlanStanding]]]
"""Every plan's latest standing by plan id, as the rules engine last assessed it: a new
mapping per assessment, never changed afterwards (the API reuses what it derived from the
same mapping). The API has no rules of its own (it imports only ``core``), so the process that
runs the engine hands it this; without it, what is due comes from the records' open
occurrences alone."""


def _series(request: Request) -> SeriesReader:
    series: SeriesReader = request.app.state.series
    return series


def _records(request: Request) -> RecordStore:
    records: RecordStore = request.app.state.records
    return records


def _catalogue(request: Request) -> Catalogue:
    catalogue: Catalogue = request.app.state.catalogue
    return catalogue


def _clock(request: Request) -> Clock:
    clock: Clock = request.app.state.clock
    return clock


SeriesDep = Annotated[SeriesReader, Depends(_series)]
RecordsDep = Annotated[RecordStore, Depends(_records)]
CatalogueDep = Annotated[Catalogue, Depends(_catalogue)]
ClockDep = Annotated[Clock, Depends(_clock)]
Reader = Annotated[Principal, Depends(require(*READERS))]
"""Any role: what every read-only endpoint takes."""
