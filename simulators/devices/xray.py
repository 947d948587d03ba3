"""A radiographic X-ray unit.

The generator is switched on at opening time and off at closing time on clinic days, so
``power_on_hours`` grows only while the clinic is open (ten hours a clinic day). The tube is
warmed up 15 minutes after switch-on; from then on, every 10-minute slot brings a seeded number
of exposures (0 to 3). Each exposure heats the tube, which cools back towards room temperature
between exposures and overnight; ``tube_heat_pct`` is the share of the tube's heat capacity in
use, 100 % at the 70 °C over-temperature limit.

Faults: now and then (a small chance in each slot with exposures) the tube arcs or a filament
fails on an exposure; the fault stays active, and the unit makes no more exposures, until the
next clinic day. ``OVER_TEMPERATURE`` is active while ``tube_temp_c`` is above 70 °C.

Published over MQTT as JSON::

    {"ts": "2026-11-23T10:41:00.000+00:00", "exposures_total": 48213, "power_on_hours": 9412.3,
     "tube_temp_c": 34.6, "tube_heat_pct": 26.2, "warmed_up": 1, "faults": []}
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

from core.records import MetricKind
from simulators.devices.base import Channel, DeviceModel, Value, slot_random
from simulators.devices.usage import ClinicHours

__all__ = ["OVER_TEMPERATURE_C", "WARM_UP", "ClinicDay", "XrayModel"]

WARM_UP = timedelta(minutes=15)
SLOT = timedelta(minutes=10)
EXPOSURE_WEIGHTS = (0.35, 0.30, 0.20, 0.15)  # 0, 1, 2 or 3 exposures in a slot
TUBE_FAULT_CHANCE = 0.0005  # per slot with exposures: about one clinic day in forty
TUBE_FAULTS = ("TUBE_ARCING", "FILAMENT_FAILURE")
TUBE_FAULT_WEIGHTS = (0.7, 0.3)

ROOM_C = 22.0
OVER_TEMPERATURE_C = 70.0
HEAT_PER_EXPOSURE_C = 8.0
COOLING_TAU_SECONDS = 15 * 60.0
# after six time constants an exposure's heat is under 0.3 % of what it was
COOLING_LOOKBACK_SECONDS = 6 * COOLING_TAU_SECONDS
NOISE_C = 0.2
TENTH_SECONDS = 360  # power_on_hours counts tenths of an hour

# slot_random streams, kept apart by their first slot number
_EXPOSURES, _NOISE = 1, 2
# how far back to look for the last clinic day: a whole week of closed days is possible
_LOOKBACK_DAYS = 8


@dataclass(frozen=True, slots=True)
class ClinicDay:
    """One clinic day's use of the unit, fixed by the seed."""

    opens: float  # epoch seconds
    closes: float
    exposures: tuple[float, ...]
    fault: tuple[float, str] | None  # when the tube failed, and how


@lru_cache(maxsize=64)
def _clinic_day(seed: int, hours: ClinicHours, day: date) -> ClinicDay | None:
    if day.weekday() not in hours.weekdays:
        return None
    opens = datetime.combine(day, hours.opens, hours.zone)
    closes = datetime.combine(day, hours.closes, hours.zone).timestamp()
    exposures: list[float] = []
    fault: tuple[float, str] | None = None
    slot = (opens + WARM_UP).timestamp()
    while fault is None and slot < closes:
        rng = slot_random(seed, _EXPOSURES, int(slot))
        count = rng.choices(range(len(EXPOSURE_WEIGHTS)), EXPOSURE_WEIGHTS)[0]
        taken = sorted(
            at
            for at in (slot + rng.uniform(0, SLOT.total_seconds()) for _ in range(count))
            if at < closes
        )
        exposures.extend(taken)
        if taken and rng.random() < TUBE_FAULT_CHANCE:
            fault = taken[-1], rng.choices(TUBE_FAULTS, TUBE_FAULT_WEIGHTS)[0]
        slot += SLOT.total_seconds()
    return ClinicDay(opens.timestamp(), closes, tuple(exposures), fault)


class XrayModel(DeviceModel):
    kind = "xray"
    transport = "mqtt"
    channels = (
        Channel("exposures_total", MetricKind.COUNTER, "exposures", 32),
        Channel("power_on_hours", MetricKind.COUNTER, "h", 32, scale=0.1),
        Channel("tube_temp_c", MetricKind.GAUGE, "°C"),
        Channel("tube_heat_pct", MetricKind.GAUGE, "%"),
        Channel("warmed_up", MetricKind.STATE),
    )
    fault_codes = ("TUBE_ARCING", "FILAMENT_FAILURE", "OVER_TEMPERATURE")
    heat_per_exposure_c = HEAT_PER_EXPOSURE_C  # tube heating per exposure; tests may raise it
    default_plans = (
        {"suffix": "service", "name": "X-ray manufacturer service (yearly)",
         "type": "calendar", "every": "1 year"},
        {"suffix": "tube-check", "name": "X-ray tube check (every 20000 exposures)",
         "type": "meter", "metric": "exposures_total", "every": 20000},
    )  # fmt: skip

    def initial_counter(self, name: str, rng: random.Random) -> int:
        if name == "power_on_hours":
            return rng.randint(3_000, 25_000) * 10
        return rng.randint(5_000, 150_000)

    def clinic_day(self, day: date) -> ClinicDay | None:
        """What the unit does on local date ``day``; None when the clinic is closed."""
        return _clinic_day(self.seed, self.hours, day)

    def _days(self, start: datetime, end: datetime) -> list[ClinicDay]:
        """The clinic days from ``start``'s local date to ``end``'s."""
        first = start.astimezone(self.hours.zone).date()
        last = end.astimezone(self.hours.zone).date()
        days = (self.clinic_day(first + timedelta(days=n)) for n in range((last - first).days + 1))
        return [day for day in days if day is not None]

    def _today(self) -> ClinicDay | None:
        """The latest clinic day that has begun by ``now``: its fault lasts until the next."""
        now = self.now.timestamp()
        local = self.now.astimezone(self.hours.zone).date()
        for back in range(_LOOKBACK_DAYS):
            day = self.clinic_day(local - timedelta(days=back))
            if day is not None and day.opens <= now:
                return day
        return None

    def _simulate(self, start: datetime, end: datetime) -> None:
        begin, finish = start.timestamp(), end.timestamp()
        for day in self._days(start, end):
            self._add("exposures_total", sum(begin < at <= finish for at in day.exposures))
            # whole tenths of an hour crossed while switched on, so any split adds up the same
            low, high = max(begin, day.opens), min(finish, day.closes)
            if high > low:
                self._add("power_on_hours", int(high // TENTH_SECONDS) - int(low // TENTH_SECONDS))

    def _excess(self) -> float:
        """Heat above room temperature left by recent exposures."""
        now = self.now.timestamp()
        recent = self._days(self.now - timedelta(seconds=COOLING_LOOKBACK_SECONDS), self.now)
        return sum(
            self.heat_per_exposure_c * math.exp(-(now - at) / COOLING_TAU_SECONDS)
            for day in recent
            for at in day.exposures
            if now - COOLING_LOOKBACK_SECONDS < at <= now
        )

    def tube_temperature(self) -> float:
        """The tube temperature at ``now``, as reported."""
        minute = math.floor(self.now.timestamp() / 60)
        noise = slot_random(self.seed, _NOISE, minute).uniform(-NOISE_C, NOISE_C)
        return round(ROOM_C + self._excess() + noise, 1)

    def _warmed_up(self) -> bool:
        today = self._today()
        now = self.now.timestamp()
        return today is not None and today.opens + WARM_UP.total_seconds() <= now < today.closes

    def _gauges(self) -> dict[str, Value]:
        heat = self._excess() / (OVER_TEMPERATURE_C - ROOM_C) * 100
        return {
            "tube_temp_c": self.tube_temperature(),
            "tube_heat_pct": round(min(heat, 100.0), 1),
            "warmed_up": int(self._warmed_up()),
        }

    def _own_faults(self) -> set[str]:
        faults: set[str] = set()
        today = self._today()
        if today is not None and today.fault is not None and today.fault[0] <= self.now.timestamp():
            faults.add(today.fault[1])
        if self.tube_temperature() > OVER_TEMPERATURE_C:
            faults.add("OVER_TEMPERATURE")
        return faults
