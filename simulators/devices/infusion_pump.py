"""A volumetric infusion pump, a high-risk device whose PM must be done on time.

On clinic days the pump runs a seeded series of infusions of 30 to 120 minutes, with gaps of
10 to 90 minutes between them, each at a fixed programmed rate; every infusion is over by
closing time. ``operating_hours`` is the pump's run-time meter: it counts whole tenths of an
hour while infusing. The battery drains while the pump infuses and charges whenever it is
docked (between infusions and overnight), so it starts every clinic day full.

Faults: an infusion now and then (a few in a hundred) hits an occlusion, which counts one more
``occlusion_alarms_total`` and is active for a few minutes while the pump halts (rate 0).
``BATTERY_LOW`` is active while the battery is under 20 %. ``AIR_IN_LINE`` and ``FREE_FLOW``
only come from a scenario.

Published over MQTT as JSON::

    {"ts": "2026-11-23T10:41:00.000+00:00", "operating_hours": 14212.7, "infusions_total": 8021,
     "occlusion_alarms_total": 112, "battery_pct": 71.6, "rate_ml_h": 125.0, "infusing": 1,
     "faults": []}
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

from core.records import MetricKind
from simulators.devices.base import Channel, DeviceModel, Value, slot_random
from simulators.devices.usage import ClinicHours

__all__ = ["BATTERY_LOW_PCT", "Infusion", "InfusionPumpModel"]

FIRST_START_MINUTES = (5.0, 60.0)  # after opening
INFUSION_MINUTES = (30.0, 120.0)
GAP_MINUTES = (10.0, 90.0)
RATES_ML_H = (25.0, 50.0, 75.0, 100.0, 125.0, 150.0, 250.0)
OCCLUSION_CHANCE = 0.04  # per infusion
OCCLUSION_MINUTES = (2.0, 6.0)

# a charged battery lasts a little over four hours of infusing and recharges in two; two long
# infusions with a short gap between can run it below the 20 % alarm
DRAIN_PCT_PER_MINUTE = 0.4
CHARGE_PCT_PER_MINUTE = 0.8
BATTERY_LOW_PCT = 20.0
TENTH_SECONDS = 360  # operating_hours counts tenths of an hour

_DAY = 1  # slot_random stream of the day plans
# how far back to look for the last clinic day: a whole week of closed days is possible
_LOOKBACK_DAYS = 8


@dataclass(frozen=True, slots=True)
class Infusion:
    """One infusion, in epoch seconds."""

    starts: float
    ends: float
    rate_ml_h: float
    occlusion: tuple[float, float] | None


@dataclass(frozen=True, slots=True)
class _ClinicDay:
    opens: float
    infusions: tuple[Infusion, ...]


@lru_cache(maxsize=64)
def _clinic_day(seed: int, hours: ClinicHours, day: date) -> _ClinicDay | None:
    if day.weekday() not in hours.weekdays:
        return None
    opens = datetime.combine(day, hours.opens, hours.zone).timestamp()
    closes = datetime.combine(day, hours.closes, hours.zone).timestamp()
    rng = slot_random(seed, _DAY, day.toordinal())
    infusions: list[Infusion] = []
    starts = opens + rng.uniform(*FIRST_START_MINUTES) * 60
    while True:
        ends = starts + rng.uniform(*INFUSION_MINUTES) * 60
        if ends > closes:
            break
        rate = rng.choice(RATES_ML_H)
        occlusion: tuple[float, float] | None = None
        if rng.random() < OCCLUSION_CHANCE:
            # somewhere in the middle, cleared before the infusion ends
            begins = rng.uniform(starts + 300, ends - 600)
            occlusion = begins, begins + rng.uniform(*OCCLUSION_MINUTES) * 60
        infusions.append(Infusion(starts, ends, rate, occlusion))
        starts = ends + rng.uniform(*GAP_MINUTES) * 60
    return _ClinicDay(opens, tuple(infusions))


class InfusionPumpModel(DeviceModel):
    kind = "infusion_pump"
    transport = "mqtt"
    channels = (
        Channel("operating_hours", MetricKind.COUNTER, "h", 32, scale=0.1),
        Channel("infusions_total", MetricKind.COUNTER, "infusions", 32),
        Channel("occlusion_alarms_total", MetricKind.COUNTER, "alarms", 32),
        Channel("battery_pct", MetricKind.GAUGE, "%"),
        Channel("rate_ml_h", MetricKind.GAUGE, "mL/h"),
        Channel("infusing", MetricKind.STATE),
    )
    fault_codes = ("OCCLUSION", "AIR_IN_LINE", "FREE_FLOW", "BATTERY_LOW")
    default_plans = (
        {"suffix": "pm", "name": "Infusion pump PM (high risk, every 6 months)",
         "type": "calendar", "every": "6 months", "lead": "2 weeks"},
    )  # fmt: skip

    def initial_counter(self, name: str, rng: random.Random) -> int:
        if name == "operating_hours":
            return rng.randint(2_000, 30_000) * 10
        if name == "infusions_total":
            return rng.randint(500, 20_000)
        return rng.randint(5, 300)

    def infusions(self, day: date) -> tuple[Infusion, ...]:
        """The infusions on local date ``day``, fixed by the seed."""
        plan = _clinic_day(self.seed, self.hours, day)
        return plan.infusions if plan is not None else ()

    def _simulate(self, start: datetime, end: datetime) -> None:
        begin, finish = start.timestamp(), end.timestamp()
        first = start.astimezone(self.hours.zone).date()
        last = end.astimezone(self.hours.zone).date()
        for n in range((last - first).days + 1):
            for infusion in self.infusions(first + timedelta(days=n)):
                if begin < infusion.starts <= finish:
                    self._add("infusions_total", 1)
                if infusion.occlusion is not None and begin < infusion.occlusion[0] <= finish:
                    self._add("occlusion_alarms_total", 1)
                # whole tenths of an hour crossed while infusing, so any split adds up the same
                low, high = max(begin, infusion.starts), min(finish, infusion.ends)
                if high > low:
                    self._add(
                        "operating_hours", int(high // TENTH_SECONDS) - int(low // TENTH_SECONDS)
                    )

    def _today(self) -> _ClinicDay | None:
        """The latest clinic day that has begun by ``now``."""
        now = self.now.timestamp()
        local = self.now.astimezone(self.hours.zone).date()
        for back in range(_LOOKBACK_DAYS):
            plan = _clinic_day(self.seed, self.hours, local - timedelta(days=back))
            if plan is not None and plan.opens <= now:
                return plan
        return None

    def _current(self) -> Infusion | None:
        today = self._today()
        now = self.now.timestamp()
        if today is None:
            return None
        return next((i for i in today.infusions if i.starts <= now < i.ends), None)

    def _occluded(self) -> bool:
        current = self._current()
        now = self.now.timestamp()
        return (
            current is not None
            and current.occlusion is not None
            and current.occlusion[0] <= now < current.occlusion[1]
        )

    def battery(self) -> float:
        """The battery level at ``now``: full at opening after a night on the dock."""
        today = self._today()
        if today is None:
            return 100.0
        now = self.now.timestamp()
        level, docked_since = 100.0, today.opens
        for infusion in today.infusions:
            if infusion.starts >= now:
                break
            charged = (infusion.starts - docked_since) / 60 * CHARGE_PCT_PER_MINUTE
            level = min(level + charged, 100.0)
            drained = (min(infusion.ends, now) - infusion.starts) / 60 * DRAIN_PCT_PER_MINUTE
            level = max(level - drained, 0.0)
            docked_since = infusion.ends
        if now > docked_since:
            level = min(level + (now - docked_since) / 60 * CHARGE_PCT_PER_MINUTE, 100.0)
        return round(level, 1)

    def _gauges(self) -> dict[str, Value]:
        current = self._current()
        rate = 0.0 if current is None or self._occluded() else current.rate_ml_h
        return {
            "battery_pct": self.battery(),
            "rate_ml_h": rate,
            "infusing": int(current is not None),
        }

    def _own_faults(self) -> set[str]:
        faults: set[str] = set()
        if self._occluded():
            faults.add("OCCLUSION")
        if self.battery() < BATTERY_LOW_PCT:
            faults.add("BATTERY_LOW")
        return faults
