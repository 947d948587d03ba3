"""An uninterruptible power supply read over Modbus TCP.

Register map (holding registers, zero-based addresses; add 40001 for the 4xxxx convention):

| address | name            | type   | scale | unit   | meaning                              |
|---------|-----------------|--------|-------|--------|--------------------------------------|
| 0       | battery_status  | uint16 | 1     |        | 2 normal, 3 low, 4 depleted (UPS-MIB) |
| 1       | line_fail_count | uint16 | 1     | events | input line failures, wraps at 65536  |
| 2-3     | run_hours       | uint32 | 0.1   | h      | hours in service, big word order     |
| 4       | load_pct        | uint16 | 1     | %      | output load                          |
| 5       | battery_temp_c  | int16  | 0.1   | °C     | battery temperature                  |
| 6       | runtime_min     | uint16 | 1     | min    | estimated minutes on battery         |
| 7       | on_battery      | uint16 | 1     |        | 1 while the input line has failed    |
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from core.registers import DataType, Order, encode

__all__ = ["REGISTER_MAP", "UpsModel"]

# (name, address, type, word order, scale): the table above, as data
REGISTER_MAP: tuple[tuple[str, int, DataType, Order, float], ...] = (
    ("battery_status", 0, DataType.UINT16, Order.BIG, 1.0),
    ("line_fail_count", 1, DataType.UINT16, Order.BIG, 1.0),
    ("run_hours", 2, DataType.UINT32, Order.BIG, 0.1),
    ("load_pct", 4, DataType.UINT16, Order.BIG, 1.0),
    ("battery_temp_c", 5, DataType.INT16, Order.BIG, 0.1),
    ("runtime_min", 6, DataType.UINT16, Order.BIG, 1.0),
    ("on_battery", 7, DataType.UINT16, Order.BIG, 1.0),
)
REGISTER_COUNT = 8
OUTAGE_CHANCE_PER_HOUR = 0.04
OUTAGE_MINUTES = (2, 12)


class UpsModel:
    def __init__(
        self, *, seed: int, start: datetime, run_hours: float = 0.0, line_fail_count: int = 0
    ) -> None:
        self._seed = seed
        self._start = start
        self._run_hours_at_start = run_hours
        self._fails_at_start = line_fail_count
        self._hours_seen = 0
        self._fails = 0
        self._now = start

    def _outage(self, hour: int) -> tuple[float, float] | None:
        rng = random.Random(self._seed * 7_919 + hour)
        if rng.random() >= OUTAGE_CHANCE_PER_HOUR:
            return None
        begin = rng.uniform(0, 60 - OUTAGE_MINUTES[1])
        return begin, begin + rng.uniform(*OUTAGE_MINUTES)

    def advance(self, now: datetime) -> None:
        self._now = max(self._now, now)
        hours_done = int((self._now - self._start) / timedelta(hours=1))
        while self._hours_seen < hours_done:
            if self._outage(self._hours_seen) is not None:
                self._fails += 1
            self._hours_seen += 1

    @property
    def on_battery(self) -> bool:
        elapsed = (self._now - self._start) / timedelta(minutes=1)
        outage = self._outage(int(elapsed // 60))
        return outage is not None and outage[0] <= elapsed % 60 < outage[1]

    def values(self) -> dict[str, float]:
        on_battery = self.on_battery
        hours = self._run_hours_at_start + (self._now - self._start) / timedelta(hours=1)
        load = 35 + random.Random(self._seed + int(hours * 60)).randint(-5, 5)
        return {
            "battery_status": 3 if on_battery else 2,
            "line_fail_count": (self._fails_at_start + self._fails) % 65536,
            "run_hours": round(hours, 1),
            "load_pct": load,
            "battery_temp_c": 27.5 if on_battery else 24.0,
            "runtime_min": 18 if on_battery else 42,
            "on_battery": 1 if on_battery else 0,
        }

    def registers(self) -> list[int]:
        """The holding-register image, addresses 0..REGISTER_COUNT-1."""
        image = [0] * REGISTER_COUNT
        values = self.values()
        for name, address, data_type, word_order, scale in REGISTER_MAP:
            words = encode(round(values[name] / scale), data_type, word_order=word_order)
            image[address : address + len(words)] = words
        return image
