"""An uninterruptible power supply read over Modbus TCP.

It runs around the clock. Now and then the input line fails for a few minutes: the UPS goes on
battery, its line-fail counter counts one more, and its remaining runtime falls while the
battery warms. The register map (``REGISTER_MAP``) is documented in docs/simulated-devices.md.
"""

from __future__ import annotations

import random
from datetime import datetime

from core.config import RegisterSpec
from core.records import MetricKind
from core.registers import DataType, Order
from simulators.devices.base import Channel, DeviceModel, Value, slot_random
from simulators.devices.registermap import spec

__all__ = ["OUTAGE_CHANCE_PER_HOUR", "REGISTER_MAP", "UpsModel"]

OUTAGE_CHANCE_PER_HOUR = 0.04
OUTAGE_MINUTES = (2.0, 12.0)
MODEL_NAME = "SMT1500RMI2U"

HOLD, INP, DISC = "holding", "input", "discrete"
C, G, S, F = MetricKind.COUNTER, MetricKind.GAUGE, MetricKind.STATE, MetricKind.FAULT
U16, I16, U32, F32 = DataType.UINT16, DataType.INT16, DataType.UINT32, DataType.FLOAT32
BIG, LITTLE = Order.BIG, Order.LITTLE

REGISTER_MAP: tuple[RegisterSpec, ...] = (
    spec("battery_status", HOLD, 0, U16, S),  # 2 normal, 3 low, 4 depleted (as in UPS-MIB)
    spec("line_fail_count", HOLD, 1, U16, C, unit="events"),
    spec("run_hours", HOLD, 2, U32, C, count=2, word_order=BIG, scale=0.1, unit="h"),
    spec("load_pct", HOLD, 4, U16, G, unit="%"),
    spec("battery_temp_c", HOLD, 5, I16, G, scale=0.1, unit="°C"),
    spec("runtime_min", HOLD, 6, U16, G, unit="min"),
    spec("seconds_on_battery", HOLD, 7, U16, G, unit="s"),
    spec("model", HOLD, 10, DataType.STRING, S, count=8),
    spec("input_voltage_v", INP, 0, F32, G, count=2, word_order=LITTLE, unit="V"),
    spec("output_voltage_v", INP, 2, F32, G, count=2, word_order=BIG, unit="V"),
    spec("on_battery", DISC, 0, DataType.BIT, F),
    spec("battery_low", DISC, 1, DataType.BIT, F),
    spec("replace_battery", DISC, 2, DataType.BIT, F),
)


class UpsModel(DeviceModel):
    kind = "ups"
    transport = "modbus"
    channels = (
        Channel("line_fail_count", C, "events", 16),
        Channel("run_hours", C, "h", 32, scale=0.1),
        Channel("battery_status", S),
        Channel("load_pct", G, "%"),
        Channel("battery_temp_c", G, "°C"),
        Channel("runtime_min", G, "min"),
        Channel("seconds_on_battery", G, "s"),
        Channel("model", S),
        Channel("input_voltage_v", G, "V"),
        Channel("output_voltage_v", G, "V"),
        Channel("on_battery", F),
        Channel("battery_low", F),
        Channel("replace_battery", F),
    )
    fault_codes = ("ON_BATTERY", "BATTERY_LOW", "REPLACE_BATTERY")
    register_map = REGISTER_MAP
    default_plans = (
        {"suffix": "battery-test", "name": "UPS battery test (every 6 months)",
         "type": "calendar", "every": "6 months"},
        {"suffix": "replace-battery", "name": "Replace UPS battery", "type": "fault",
         "code": "REPLACE_BATTERY", "priority": "high"},
    )  # fmt: skip

    def initial_counter(self, name: str, rng: random.Random) -> int:
        if name == "run_hours":
            return rng.randint(5_000, 40_000) * 10
        return rng.randint(0, 400)

    def _outage(self, hour: int) -> tuple[float, float] | None:
        """Minutes into hour ``hour`` (since the epoch) when the line fails and returns."""
        rng = slot_random(self.seed, hour)
        if rng.random() >= OUTAGE_CHANCE_PER_HOUR:
            return None
        begin = rng.uniform(0, 60 - OUTAGE_MINUTES[1])
        return begin, begin + rng.uniform(*OUTAGE_MINUTES)

    def _simulate(self, start: datetime, end: datetime) -> None:
        # run hours in tenths: count whole tenths crossed, so any split adds up the same
        tenth = 360.0
        self._add("run_hours", int(end.timestamp() // tenth) - int(start.timestamp() // tenth))
        for hour in range(int(start.timestamp() // 3600), int(end.timestamp() // 3600) + 1):
            outage = self._outage(hour)
            if outage is None:
                continue
            begins = datetime.fromtimestamp(hour * 3600 + outage[0] * 60, tz=start.tzinfo)
            if start < begins <= end:
                self._add("line_fail_count", 1)

    def _seconds_on_battery(self) -> float:
        minute = self.now.timestamp() / 60
        outage = self._outage(int(minute // 60))
        if outage is None:
            return 0.0
        into = minute % 60
        return (into - outage[0]) * 60 if outage[0] <= into < outage[1] else 0.0

    def _gauges(self) -> dict[str, Value]:
        on_battery_s = self._seconds_on_battery()
        rng = slot_random(self.seed, int(self.now.timestamp() // 60))
        runtime = 42.0 - on_battery_s / 60 * 1.8 if on_battery_s else 42.0
        low = on_battery_s > 0 and runtime < 25
        injected = set(self._injected)
        return {
            "battery_status": 3 if low or "BATTERY_LOW" in injected else 2,
            "load_pct": 35 + rng.randint(-5, 5),
            "battery_temp_c": round(24.0 + min(on_battery_s / 60, 10) * 0.4, 1),
            "runtime_min": round(runtime),
            "seconds_on_battery": round(on_battery_s),
            "model": MODEL_NAME,
            "input_voltage_v": 0.0 if on_battery_s else round(230 + rng.uniform(-4, 4), 1),
            "output_voltage_v": round(230 + rng.uniform(-1, 1), 1),
            "on_battery": int(on_battery_s > 0 or "ON_BATTERY" in injected),
            "battery_low": int(low or "BATTERY_LOW" in injected),
            "replace_battery": int("REPLACE_BATTERY" in injected),
        }

    def _own_faults(self) -> set[str]:
        gauges = self._gauges()
        return {
            code
            for code, bit in (
                ("ON_BATTERY", "on_battery"),
                ("BATTERY_LOW", "battery_low"),
                ("REPLACE_BATTERY", "replace_battery"),
            )
            if gauges[bit]
        }
