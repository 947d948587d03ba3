"""A tabletop steam autoclave: sterilization cycles during clinic hours, an occasional failed
cycle with a fault code that stays active until the next good cycle.

Published over MQTT as JSON (see ``payload``)::

    {"ts": "2026-11-23T08:45:00+00:00", "cycles_total": 4491, "failed_cycles": 37,
     "chamber_temp_c": 134.2, "pressure_kpa": 304.0, "faults": []}
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from simulators.devices.usage import ClinicHours

__all__ = ["FAULT_CODES", "AutoclaveModel"]

FAULT_CODES = ("LOW_TEMP", "LOW_PRESSURE", "DOOR", "WATER_LOW", "CYCLE_ABORTED")
CYCLE = timedelta(minutes=45)


class AutoclaveModel:
    def __init__(
        self,
        *,
        seed: int,
        start: datetime,
        hours: ClinicHours,
        cycles_total: int = 0,
        failed_cycles: int = 0,
        failure_rate: float = 0.03,
    ) -> None:
        self._seed = seed
        self._hours = hours
        self.cycles_total = cycles_total
        self.failed_cycles = failed_cycles
        self._failure_rate = failure_rate
        self._cycle_index = 0
        self.faults: list[str] = []
        self._next_start = hours.next_open(start)
        self._now = start

    def advance(self, now: datetime) -> None:
        """Complete every cycle that ends by ``now``. Outcomes depend only on the seed and the
        cycle's number, never on how often this is called."""
        while self._next_start + CYCLE <= now:
            end = self._next_start + CYCLE
            rng = random.Random(self._seed * 1_000_003 + self._cycle_index)
            self._cycle_index += 1
            self.cycles_total += 1
            if rng.random() < self._failure_rate:
                self.failed_cycles += 1
                self.faults = [rng.choice(FAULT_CODES)]
            else:
                self.faults = []
            self._next_start = self._hours.next_open(end)
        self._now = max(self._now, now)

    @property
    def running(self) -> bool:
        return self._hours.is_open(self._now)

    def payload(self, wall_time: datetime) -> dict[str, Any]:
        """What the device publishes; ``ts`` is the real time of publication."""
        jitter = random.Random(self._seed + self._cycle_index).uniform(-0.4, 0.4)
        return {
            "ts": wall_time.isoformat(timespec="milliseconds"),
            "cycles_total": self.cycles_total,
            "failed_cycles": self.failed_cycles,
            "chamber_temp_c": round((134.0 if self.running else 32.0) + jitter, 1),
            "pressure_kpa": round((304.0 if self.running else 101.3) + jitter, 1),
            "faults": list(self.faults),
        }
