"""An oil-free dental air compressor read over Modbus TCP.

While the clinic is open it cycles: in most 10-minute slots the pressure has fallen to the
cut-in point and the motor starts, runs a few minutes to pump the tank from 6 to 8 bar and
stops. At night and at weekends it now and then starts for a short top-up run. Every start
counts one more motor start and every running second adds to the run hours.

The intake filter's differential pressure rises with run hours; once it is above the clogged
threshold the practice changes the filter a seeded 0 to 3 clinic days later. Rarely a run
overheats: the discharge temperature climbs past the 95 °C warning to the 105 °C cut-out, the
motor stops, and the warning clears as it cools.

The register map (``REGISTER_MAP``) is documented in docs/simulated-devices.md. It
deliberately uses all four tables, both word orders, signed and scaled registers, a string,
and a gap between holding registers, so that a collector reading it is exercised fully.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from core.config import RegisterSpec
from core.records import MetricKind
from core.registers import DataType, Order
from simulators.devices.base import Channel, DeviceModel, Value, slot_random
from simulators.devices.registermap import spec

__all__ = [
    "CLEAN_FILTER_KPA",
    "FILTER_CLOGGED_KPA",
    "FIRMWARE",
    "HIGH_TEMP_C",
    "REGISTER_MAP",
    "SLOT",
    "CompressorModel",
]

SLOT = timedelta(minutes=10)
RUN_CHANCE_OPEN = 0.8  # per slot while the clinic draws air
RUN_CHANCE_CLOSED = 0.01  # per slot at night: a top-up for the tank's slow leak
OVERHEAT_CHANCE = 0.003  # per run
HIGH_TEMP_C = 95.0  # the controller's warning
CUT_OUT_C = 105.0  # the thermal cut-out that ends an overheating run
CUT_IN_BAR, CUT_OUT_BAR, REST_BAR = 6.0, 8.0, 5.8
DRAW_BAR_PER_S = 0.004  # how fast the surgery empties the tank between runs
COOLING_S = 300.0  # time constant of the discharge temperature after the motor stops
CLEAN_FILTER_KPA = 8.0
FILTER_CLOGGED_KPA = 35.0
FILTER_KPA_PER_RUN_HOUR = 0.08
FIRMWARE = "FW2.31"

HOLDING, INPUT, COIL, DISCRETE = "holding", "input", "coil", "discrete"
C, G, S, F = MetricKind.COUNTER, MetricKind.GAUGE, MetricKind.STATE, MetricKind.FAULT
U16, I16, U32, F32 = DataType.UINT16, DataType.INT16, DataType.UINT32, DataType.FLOAT32
BIT, STRING = DataType.BIT, DataType.STRING
BIG, LITTLE = Order.BIG, Order.LITTLE

REGISTER_MAP: tuple[RegisterSpec, ...] = (
    spec("run_hours", HOLDING, 0, U32, C, count=2, word_order=LITTLE, scale=0.1, unit="h"),
    spec("starts_total", HOLDING, 2, U32, C, count=2, word_order=BIG, unit="starts"),
    spec("state", HOLDING, 4, U16, S),  # 0 stopped, 1 running, 2 fault
    spec("pressure_bar", HOLDING, 5, I16, G, scale=0.01, unit="bar"),
    # holding 6..19 unused: a reader must skip the gap or merge across it
    spec("firmware", HOLDING, 20, STRING, S, count=4),
    spec("discharge_temp_c", INPUT, 0, F32, G, count=2, word_order=BIG, unit="°C"),
    spec("filter_dp_kpa", INPUT, 2, F32, G, count=2, word_order=LITTLE, unit="kPa"),
    spec("ambient_temp_c", INPUT, 4, I16, G, scale=0.1, unit="°C"),
    spec("motor_running", COIL, 0, BIT, S),
    spec("alarm_relay", COIL, 1, BIT, S),
    # a fault bit's code is its name upper-cased
    spec("high_temp", DISCRETE, 0, BIT, F),
    spec("filter_clogged", DISCRETE, 1, BIT, F),
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SLOT_US = int(SLOT.total_seconds()) * 1_000_000
_HOUR_US = 3_600 * 1_000_000
_TENTH_US = _HOUR_US // 10


def _us(moment: datetime) -> int:
    """Microseconds since the epoch: integers, so that run time adds up exactly in any split."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class _Run:
    """One motor run: from ``begin`` to ``end`` (microseconds since the epoch)."""

    begin: int
    end: int
    top_temp: float  # discharge temperature when the motor stops
    overheats: bool


class CompressorModel(DeviceModel):
    kind = "compressor"
    transport = "modbus"
    channels = (
        Channel("run_hours", C, "h", 32, scale=0.1),
        Channel("starts_total", C, "starts", 32),
        Channel("state", S),
        Channel("pressure_bar", G, "bar"),
        Channel("firmware", S),
        Channel("discharge_temp_c", G, "°C"),
        Channel("filter_dp_kpa", G, "kPa"),
        Channel("ambient_temp_c", G, "°C"),
        Channel("motor_running", S),
        Channel("alarm_relay", S),
        Channel("high_temp", F),
        Channel("filter_clogged", F),
    )
    fault_codes = ("HIGH_TEMP", "FILTER_CLOGGED")
    register_map = REGISTER_MAP
    default_plans = (
        {"suffix": "service", "name": "Compressor service (every 2,000 run hours)",
         "type": "meter", "metric": "run_hours", "every": 2000, "lead": 100},
        {"suffix": "filter", "name": "Intake filter clogged twice in a day", "type": "fault",
         "code": "FILTER_CLOGGED", "count": 2, "within": "1d", "priority": "medium"},
    )  # fmt: skip

    def _begin(self, initial: Mapping[str, float]) -> None:
        self._day_slots = max(1, self.hours.day_length // SLOT)
        # slot -1 lies before any real slot, so the starting state never repeats a slot's draws
        rng = slot_random(self.seed, -1)
        filter_kpa = initial.get("filter_dp_kpa", rng.uniform(CLEAN_FILTER_KPA, 30.0))
        # run time since the filter was last changed; the differential pressure follows it
        self._filter_us = max(
            0, round((filter_kpa - CLEAN_FILTER_KPA) / FILTER_KPA_PER_RUN_HOUR * _HOUR_US)
        )
        self._run_us = 0  # run time since ``self.start``: whole tenths of it go to run_hours
        self._change_wait: int | None = None  # open slots until the filter is changed

    def initial_counter(self, name: str, rng: random.Random) -> int:
        if name == "run_hours":
            return rng.randint(500, 15_000) * 10
        return rng.randint(10_000, 300_000)

    # --- the schedule: a pure function of the seed and the slot -------------------------

    def _run(self, slot: int) -> _Run | None:
        """The motor run in ``slot`` (counted from the epoch), if any. Runs end well inside
        their slot, so a slot's run never overlaps the next one's."""
        rng = slot_random(self.seed, slot)
        base = slot * _SLOT_US
        if self.hours.is_open(_EPOCH + SLOT * slot):
            if rng.random() >= RUN_CHANCE_OPEN:
                return None
            begin, length = rng.randint(0, 120), rng.randint(150, 360)
        else:
            if rng.random() >= RUN_CHANCE_CLOSED:
                return None
            begin, length = rng.randint(0, 300), rng.randint(60, 150)
        overheats = rng.random() < OVERHEAT_CHANCE
        top = CUT_OUT_C if overheats else rng.uniform(78.0, 88.0)
        start = base + begin * 1_000_000
        return _Run(start, start + length * 1_000_000, top, overheats)

    def _simulate(self, start: datetime, end: datetime) -> None:
        first, last = _us(start), _us(end)
        for slot in range(first // _SLOT_US, last // _SLOT_US + 1):
            # slot-start events come before the slot's run, in every split alike
            if first < slot * _SLOT_US <= last:
                self._slot_begins(slot)
            run = self._run(slot)
            if run is None:
                continue
            if first < run.begin <= last:
                self._add("starts_total", 1)
            overlap = min(run.end, last) - max(run.begin, first)
            if overlap > 0:
                before = self._run_us // _TENTH_US
                self._run_us += overlap
                self._filter_us += overlap
                self._add("run_hours", self._run_us // _TENTH_US - before)

    def _slot_begins(self, slot: int) -> None:
        """Staff only notice and change a clogged filter while the clinic is open."""
        if not self.hours.is_open(_EPOCH + SLOT * slot):
            return
        if self._change_wait is None and self._filter_kpa() > FILTER_CLOGGED_KPA:
            self._change_wait = slot_random(self.seed, slot, 1).randint(0, 3 * self._day_slots)
        if self._change_wait is not None:
            if self._change_wait == 0:
                self._filter_us, self._change_wait = 0, None
            else:
                self._change_wait -= 1

    def _filter_kpa(self) -> float:
        # rounded as reported, so that the fault and the staff see the same reading
        return round(CLEAN_FILTER_KPA + FILTER_KPA_PER_RUN_HOUR * self._filter_us / _HOUR_US, 2)

    # --- what the device reports --------------------------------------------------------

    def _last_run(self, now: int) -> _Run | None:
        """The latest run begun by ``now``; three slots back is long enough for anything it
        left behind (heat, pressure) to have settled."""
        for slot in range(now // _SLOT_US, now // _SLOT_US - 3, -1):
            run = self._run(slot)
            if run is not None and run.begin <= now:
                return run
        return None

    def _gauges(self) -> dict[str, Value]:
        now = _us(self.now)
        hour_rng = slot_random(self.seed, now // _HOUR_US, 2)
        ambient = round(hour_rng.uniform(18.0, 26.0), 1)
        idle_temp = ambient + 12.0
        run = self._last_run(now)
        running = run is not None and now < run.end
        temp, pressure = idle_temp, REST_BAR
        if run is not None:
            into = (now - run.begin) / 1_000_000
            length = (run.end - run.begin) / 1_000_000
            if running:
                temp = idle_temp + (run.top_temp - idle_temp) * into / length
                pressure = CUT_IN_BAR + (CUT_OUT_BAR - CUT_IN_BAR) * into / length
            else:
                since = into - length
                temp = idle_temp + (run.top_temp - idle_temp) * math.exp(-since / COOLING_S)
                pressure = max(REST_BAR, CUT_OUT_BAR - DRAW_BAR_PER_S * since)
        temp = round(temp + hour_rng.uniform(-0.3, 0.3), 1)
        filter_kpa = self._filter_kpa()
        high_temp = temp > HIGH_TEMP_C or "HIGH_TEMP" in self._injected
        clogged = filter_kpa > FILTER_CLOGGED_KPA or "FILTER_CLOGGED" in self._injected
        return {
            # only overheating is a fault state: a clogged filter still lets the motor run
            "state": 2 if high_temp else int(running),
            "pressure_bar": round(pressure, 2),
            "firmware": FIRMWARE,
            "discharge_temp_c": temp,
            "filter_dp_kpa": filter_kpa,
            "ambient_temp_c": ambient,
            "motor_running": int(running),
            "alarm_relay": int(high_temp or clogged),
            "high_temp": int(high_temp),
            "filter_clogged": int(clogged),
        }

    def _own_faults(self) -> set[str]:
        gauges = self._gauges()
        return {bit.upper() for bit in ("high_temp", "filter_clogged") if gauges[bit]}
