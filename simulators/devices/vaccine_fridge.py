"""A vaccine refrigerator with a temperature data logger.

The compressor cycles around the clock, so the cabinet swings between about 4 and 6 °C and
``compressor_starts`` counts up day and night. While the clinic is open, staff open the door a
few times an hour; each opening warms the cabinet briefly, never past 8 °C. Rarely (about one
day in a hundred) there is a real excursion: a power cut or a door left ajar for 20 to 90
minutes, during which the compressor stays off, the cabinet warms towards room temperature and
the reading climbs above 8 °C before the compressor pulls it back. The logger samples once a
minute and, like the loggers the cold-chain guidance asks for, reports the minimum and maximum
since local midnight. Its battery runs down over two to three years and its calibration falls
due on a fixed date.

Faults: ``EXCURSION_HIGH`` while the reading is above 8 °C, ``EXCURSION_LOW`` while it is below
2 °C, ``LOGGER_BATTERY_LOW`` below 15 %. ``PROBE_FAULT`` only comes from a scenario.

Published over MQTT as JSON::

    {"ts": "2026-11-23T10:41:00.000+00:00", "door_openings": 31207, "compressor_starts": 215520,
     "temperature_c": 5.3, "min_temp_c": 4.1, "max_temp_c": 6.8, "logger_battery_pct": 63.4,
     "calibration_days_left": 212, "faults": []}
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from datetime import datetime, time, timedelta
from functools import lru_cache

from core.records import MetricKind
from simulators.devices.base import Channel, DeviceModel, Value, slot_random
from simulators.devices.usage import ClinicHours

__all__ = ["EXCURSION_CHANCE_PER_DAY", "HIGH_LIMIT_C", "LOW_LIMIT_C", "VaccineFridgeModel"]

HIGH_LIMIT_C = 8.0
LOW_LIMIT_C = 2.0
BATTERY_LOW_PCT = 15.0
EXCURSION_CHANCE_PER_DAY = 0.01

# the compressor's own cycle: it starts at the warm end of the band and runs for the first
# part of the cycle, pulling the cabinet down to the cold end
BAND_LOW_C, BAND_HIGH_C = 4.2, 5.8
COMPRESSOR_ON_SHARE = 0.4
CYCLE_SECONDS = (35 * 60, 55 * 60)
NOISE_C = 0.1

# door openings: counted per 10-minute slot; a warm-up decays within a quarter of an hour and
# the sum is capped so that normal use stays below the 8 °C limit (6.0 + 0.1 + 1.8 < 8)
DOOR_SLOT_SECONDS = 600
DOOR_OPENINGS_WEIGHTS = (0.55, 0.30, 0.15)  # 0, 1 or 2 openings in a slot
DOOR_WARMING_C = 0.9
DOOR_DECAY_SECONDS = 240.0
DOOR_LOOKBACK_SLOTS = 2
DOOR_WARMING_CAP_C = 1.8

# excursions: the cabinet warms towards room temperature while the compressor is off, then
# cools back; each starts by 22:00 so that one day's excursion and its recovery are over
# before the next day's could begin
DAY_SECONDS = 86_400
EXCURSION_LATEST_START = 22 * 3600
EXCURSION_MINUTES = (20.0, 90.0)
ROOM_C = 20.0
WARMING_TAU_SECONDS = 40 * 60.0
COOLING_TAU_SECONDS = 10 * 60.0
RECOVERY_SECONDS = 60 * 60.0

BATTERY_LIFE_DAYS = (730.0, 1095.0)
CALIBRATION_DUE_DAYS = (30, 700)

# slot_random streams, kept apart by their first slot number
_DEVICE, _NOISE, _DOOR, _EXCURSION = 0, 1, 2, 3


# Each minute's reading looks back over a few door slots and the day's excursion, and the
# minimum and maximum fold in every minute since midnight: caching the draws keeps a report cheap.
@lru_cache(maxsize=64)
def _excursion(seed: int, day: int) -> tuple[float, float] | None:
    rng = slot_random(seed, _EXCURSION, day)
    if rng.random() >= EXCURSION_CHANCE_PER_DAY:
        return None
    begins = day * DAY_SECONDS + rng.uniform(0, EXCURSION_LATEST_START)
    return begins, begins + rng.uniform(*EXCURSION_MINUTES) * 60


@lru_cache(maxsize=4096)
def _door_openings(seed: int, hours: ClinicHours, slot: int) -> tuple[int, ...]:
    """Epoch seconds of the door openings in 10-minute slot ``slot``."""
    begins = slot * DOOR_SLOT_SECONDS
    if not hours.is_open(datetime.fromtimestamp(begins, tz=hours.zone)):
        return ()
    rng = slot_random(seed, _DOOR, slot)
    count = rng.choices(range(len(DOOR_OPENINGS_WEIGHTS)), DOOR_OPENINGS_WEIGHTS)[0]
    return tuple(sorted(begins + rng.randrange(DOOR_SLOT_SECONDS) for _ in range(count)))


class VaccineFridgeModel(DeviceModel):
    kind = "vaccine_fridge"
    transport = "mqtt"
    channels = (
        Channel("door_openings", MetricKind.COUNTER, "openings", 32),
        Channel("compressor_starts", MetricKind.COUNTER, "starts", 32),
        Channel("temperature_c", MetricKind.GAUGE, "°C"),
        Channel("min_temp_c", MetricKind.GAUGE, "°C"),
        Channel("max_temp_c", MetricKind.GAUGE, "°C"),
        Channel("logger_battery_pct", MetricKind.GAUGE, "%"),
        Channel("calibration_days_left", MetricKind.GAUGE, "d"),
    )
    fault_codes = ("EXCURSION_HIGH", "EXCURSION_LOW", "LOGGER_BATTERY_LOW", "PROBE_FAULT")
    default_plans = (
        {"suffix": "logger-calibration", "name": "Data logger calibration (yearly)",
         "type": "calendar", "every": "1 year"},
        {"suffix": "too-warm", "name": "Vaccine fridge above 8 °C for 30 minutes",
         "type": "condition", "metric": "temperature_c", "above": 8, "for": "30m",
         "hysteresis": 0.5, "severity": "critical"},
    )  # fmt: skip

    def _begin(self, initial: Mapping[str, float]) -> None:
        rng = slot_random(self.seed, _DEVICE)
        self._cycle = rng.randint(*CYCLE_SECONDS)
        self._phase = rng.randint(0, self._cycle - 1)
        self._band_offset = rng.uniform(-0.2, 0.2)
        life_days = rng.uniform(*BATTERY_LIFE_DAYS)
        # a logger already in service: its battery is between new and 80 % used
        self._battery_life = timedelta(days=life_days)
        self._battery_fitted = self.start - timedelta(days=rng.uniform(0.0, 0.8) * life_days)
        self.calibration_due = self.start + timedelta(days=rng.randint(*CALIBRATION_DUE_DAYS))
        # (first minute of the local day, last minute folded in, lowest, highest): the readings
        # are a pure function of time, this only saves recomputing the day on every report
        self._extremes: tuple[int, int, float, float] | None = None

    def initial_counter(self, name: str, rng: random.Random) -> int:
        if name == "compressor_starts":
            return rng.randint(20_000, 400_000)
        return rng.randint(1_000, 60_000)

    # --- the schedule, fixed by the seed ------------------------------------------------

    def excursion(self, day: int) -> tuple[float, float] | None:
        """The excursion on UTC day ``day`` (days since the epoch), as epoch seconds."""
        return _excursion(self.seed, day)

    def _door_openings(self, slot: int) -> tuple[int, ...]:
        return _door_openings(self.seed, self.hours, slot)

    def _starts_up_to(self, moment: float) -> int:
        """How many compressor cycles have begun up to ``moment`` since the epoch's phase."""
        return math.floor((moment - self._phase) / self._cycle)

    # --- counters -----------------------------------------------------------------------

    def _simulate(self, start: datetime, end: datetime) -> None:
        begin, finish = start.timestamp(), end.timestamp()
        starts = self._starts_up_to(finish) - self._starts_up_to(begin)
        # the compressor does not start while the power is off or the door stands open
        for day in range(int(begin // DAY_SECONDS), int(finish // DAY_SECONDS) + 1):
            window = self.excursion(day)
            if window is not None:
                low, high = max(begin, window[0]), min(finish, window[1])
                if high > low:
                    starts -= self._starts_up_to(high) - self._starts_up_to(low)
        self._add("compressor_starts", starts)
        first, last = int(begin // DOOR_SLOT_SECONDS), int(finish // DOOR_SLOT_SECONDS)
        for slot in range(first, last + 1):
            for opened in self._door_openings(slot):
                if begin < opened <= finish:
                    self._add("door_openings", 1)

    # --- gauges -------------------------------------------------------------------------

    def _excess(self, moment: float) -> float:
        """Warming above the normal band from an excursion under way or just over."""
        for day in (int(moment // DAY_SECONDS), int(moment // DAY_SECONDS) - 1):
            window = self.excursion(day)
            if window is None or not window[0] <= moment < window[1] + RECOVERY_SECONDS:
                continue
            begins, ends = window
            mid = (BAND_LOW_C + BAND_HIGH_C) / 2
            warmed = (ROOM_C - mid) * (
                1 - math.exp(-(min(moment, ends) - begins) / WARMING_TAU_SECONDS)
            )
            if moment < ends:
                return warmed
            return warmed * math.exp(-(moment - ends) / COOLING_TAU_SECONDS)
        return 0.0

    def _door_warming(self, moment: float) -> float:
        slot = int(moment // DOOR_SLOT_SECONDS)
        warming = sum(
            DOOR_WARMING_C * math.exp(-(moment - opened) / DOOR_DECAY_SECONDS)
            for past in range(slot - DOOR_LOOKBACK_SLOTS, slot + 1)
            for opened in self._door_openings(past)
            if opened <= moment
        )
        return min(warming, DOOR_WARMING_CAP_C)

    def _band(self, moment: float) -> float:
        """The compressor's sawtooth: warmest as it starts, coldest as it stops."""
        into = ((moment - self._phase) % self._cycle) / self._cycle
        span = BAND_HIGH_C - BAND_LOW_C
        if into < COMPRESSOR_ON_SHARE:
            level = BAND_HIGH_C - span * into / COMPRESSOR_ON_SHARE
        else:
            level = BAND_LOW_C + span * (into - COMPRESSOR_ON_SHARE) / (1 - COMPRESSOR_ON_SHARE)
        return level + self._band_offset

    def _reading(self, minute: int) -> float:
        """The logger's sample for the minute ``minute`` since the epoch, unrounded."""
        moment = float(minute * 60)
        noise = slot_random(self.seed, _NOISE, minute).uniform(-NOISE_C, NOISE_C)
        return self._band(moment) + noise + self._door_warming(moment) + self._excess(moment)

    def _minute(self) -> int:
        return math.floor(self.now.timestamp() / 60)

    def temperature(self) -> float:
        """The reading at ``now``, as reported."""
        return round(self._reading(self._minute()), 1)

    def _since_midnight(self) -> tuple[float, float]:
        local = self.now.astimezone(self.hours.zone)
        midnight = datetime.combine(local.date(), time(0), self.hours.zone)
        first, now = math.floor(midnight.timestamp() / 60), self._minute()
        cached = self._extremes
        if cached is not None and cached[0] == first and cached[1] <= now:
            low, high, done = cached[2], cached[3], cached[1]
        else:
            low, high, done = math.inf, -math.inf, first - 1
        for minute in range(done + 1, now + 1):
            reading = self._reading(minute)
            low, high = min(low, reading), max(high, reading)
        self._extremes = (first, now, low, high)
        return low, high

    def _battery(self) -> float:
        used = (self.now - self._battery_fitted) / self._battery_life
        return min(max(100.0 * (1.0 - used), 0.0), 100.0)

    def _gauges(self) -> dict[str, Value]:
        low, high = self._since_midnight()
        return {
            "temperature_c": self.temperature(),
            "min_temp_c": round(low, 1),
            "max_temp_c": round(high, 1),
            "logger_battery_pct": round(self._battery(), 1),
            "calibration_days_left": math.floor(
                (self.calibration_due - self.now) / timedelta(days=1)
            ),
        }

    def _own_faults(self) -> set[str]:
        faults: set[str] = set()
        reading = self.temperature()
        if reading > HIGH_LIMIT_C:
            faults.add("EXCURSION_HIGH")
        if reading < LOW_LIMIT_C:
            faults.add("EXCURSION_LOW")
        if round(self._battery(), 1) < BATTERY_LOW_PCT:
            faults.add("LOGGER_BATTERY_LOW")
        return faults
