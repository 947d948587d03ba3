"""A tabletop steam autoclave: 45-minute sterilization cycles on a fixed grid from opening
time while the clinic is open, an occasional failed cycle with a fault code that stays active
until the next good cycle, and a water reservoir that staff refill now and then.

Published over MQTT as JSON::

    {"ts": "2026-11-23T08:45:00.000+00:00", "cycles_total": 4491, "failed_cycles": 37,
     "chamber_temp_c": 134.2, "pressure_kpa": 304.0, "water_level_pct": 64.0, "faults": []}
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime, timedelta

from core.records import MetricKind
from simulators.devices.base import Channel, DeviceModel, Value, slot_random

__all__ = ["CYCLE", "AutoclaveModel"]

CYCLE = timedelta(minutes=45)
WATER_PER_CYCLE = 4.5  # % of the reservoir
WATER_LOW = 10.0  # % below which the autoclave refuses to start a cycle


class AutoclaveModel(DeviceModel):
    kind = "autoclave"
    transport = "mqtt"
    channels = (
        Channel("cycles_total", MetricKind.COUNTER, "cycles", 32),
        Channel("failed_cycles", MetricKind.COUNTER, "cycles", 32),
        Channel("chamber_temp_c", MetricKind.GAUGE, "°C"),
        Channel("pressure_kpa", MetricKind.GAUGE, "kPa"),
        Channel("water_level_pct", MetricKind.GAUGE, "%"),
    )
    fault_codes = (
        "CYCLE_ABORTED",
        "LEAK_TEST_FAIL",
        "LOW_TEMP",
        "LOW_PRESSURE",
        "DOOR",
        "WATER_LOW",
    )
    failure_rate = 0.03  # chance that a cycle fails with a fault code; tests may change it
    default_plans = (
        {"suffix": "service", "name": "Autoclave service (every 500 cycles)", "type": "meter",
         "metric": "cycles_total", "every": 500, "lead": 50},
        {"suffix": "validation", "name": "Autoclave validation (every 6 months)",
         "type": "calendar", "every": "6 months", "lead": "2 weeks"},
        {"suffix": "spore-test", "name": "Biological (spore) test (weekly)",
         "type": "calendar", "every": "1 week", "mode": "floating"},
    )  # fmt: skip

    def _begin(self, initial: Mapping[str, float]) -> None:
        self._water = 100.0
        self._faults: set[str] = set()
        self._cycle_start = self._first_cycle(self.start)

    def initial_counter(self, name: str, rng: random.Random) -> int:
        return rng.randint(500, 9_000) if name == "cycles_total" else rng.randint(5, 60)

    def _first_cycle(self, moment: datetime) -> datetime:
        """The cycle running at ``moment`` (the last one of a day runs past closing), or else
        the next one."""
        local = moment.astimezone(self.hours.zone)
        opening = datetime.combine(local.date(), self.hours.opens, self.hours.zone)
        if opening <= moment:
            current = opening + CYCLE * ((moment - opening) // CYCLE)
            if self.hours.is_open(current):
                return current
        return self.hours.next_open(moment)

    def _next_cycle(self, after: datetime) -> datetime:
        following = after + CYCLE
        return following if self.hours.is_open(following) else self.hours.next_open(following)

    def _simulate(self, start: datetime, end: datetime) -> None:
        while self._cycle_start + CYCLE <= end:
            rng = slot_random(self.seed, int(self._cycle_start.timestamp()))
            if self._water < WATER_LOW:
                self._faults = {"WATER_LOW"}  # refused to start: no cycle, no water used
            else:
                self._add("cycles_total", 1)
                self._water -= WATER_PER_CYCLE
                if rng.random() < self.failure_rate:
                    self._add("failed_cycles", 1)
                    self._faults = {rng.choice(self.fault_codes[:-1])}
                else:
                    self._faults = set()
            if self._water < 30 and rng.random() < 0.6:
                self._water = 100.0  # staff topped the reservoir up
            # the level sensor raises and clears its fault by itself, cycle or not
            if self._water < WATER_LOW:
                self._faults.add("WATER_LOW")
            else:
                self._faults.discard("WATER_LOW")
            self._cycle_start = self._next_cycle(self._cycle_start)

    @property
    def running(self) -> bool:
        return self._cycle_start <= self.now < self._cycle_start + CYCLE

    def _gauges(self) -> dict[str, Value]:
        jitter = slot_random(self.seed, int(self.now.timestamp()) // 60).uniform(-0.4, 0.4)
        running = self.running
        return {
            "chamber_temp_c": round((134.0 if running else 32.0) + jitter, 1),
            "pressure_kpa": round((304.0 if running else 101.3) + jitter, 1),
            "water_level_pct": round(max(self._water, 0.0), 1),
        }

    def _own_faults(self) -> set[str]:
        return set(self._faults)
