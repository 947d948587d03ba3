"""When a practice uses its equipment: clinic hours on weekdays, idle nights and weekends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = ["ClinicHours"]


@dataclass(frozen=True, slots=True)
class ClinicHours:
    zone: ZoneInfo
    opens: time = time(8, 0)
    closes: time = time(18, 0)
    weekdays: frozenset[int] = frozenset({0, 1, 2, 3, 4})  # Monday..Friday

    @property
    def day_length(self) -> timedelta:
        """How long the clinic is open on an open day."""
        day = datetime(2000, 1, 3)
        return datetime.combine(day, self.closes) - datetime.combine(day, self.opens)

    def is_open(self, moment: datetime) -> bool:
        local = moment.astimezone(self.zone)
        return local.weekday() in self.weekdays and self.opens <= local.time() < self.closes

    def next_open(self, moment: datetime) -> datetime:
        """``moment`` itself when the clinic is open then, else the next opening."""
        if self.is_open(moment):
            return moment
        local = moment.astimezone(self.zone)
        day = local.date()
        if local.time() >= self.opens:
            day += timedelta(days=1)
        while day.weekday() not in self.weekdays:
            day += timedelta(days=1)
        return datetime.combine(day, self.opens, self.zone)
