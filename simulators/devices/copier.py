"""A printer/copier at the front desk.

While the clinic is open it prints a seeded number of pages in each 5-minute slot, more in the
morning than in the afternoon. Every page uses toner and ages the drum. An empty cartridge stops
printing until the practice gets round to replacing it (a seeded 0 to 2 clinic days later); a worn
drum keeps printing, with a fault, until a new one is fitted (a seeded 1 to 5 clinic days later).
Now and then a page jams; the jam stays reported until the next slot without one.

Published over MQTT as JSON::

    {"ts": "2026-11-23T10:05:00.000+00:00", "pages_total": 184213, "jams_total": 57,
     "toner_pct": 63.425, "drum_life_pct": 41.27, "state": 1, "faults": []}
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from core.records import MetricKind
from simulators.devices.base import Channel, DeviceModel, Value, slot_random

__all__ = [
    "CARTRIDGE_PAGES",
    "DRUM_PAGES",
    "JAM_CHANCE",
    "SLOT",
    "CopierModel",
]

SLOT = timedelta(minutes=5)
CARTRIDGE_PAGES = 8_000
DRUM_PAGES = 60_000
JAM_CHANCE = 0.005  # per slot in which pages are printed
TONER_LOW_PCT = 10.0
DRUM_END_PCT = 5.0
# (chance that a slot has a print job, most pages in that slot's job)
MORNING_LOAD = (0.45, 40)
AFTERNOON_LOAD = (0.25, 25)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SLOT_S = int(SLOT.total_seconds())


def _slot_of(moment: datetime) -> int:
    """The slot (counted from the epoch) that contains ``moment``."""
    return ((moment - _EPOCH) // timedelta(seconds=1)) // _SLOT_S


def _first_slot_from(moment: datetime) -> int:
    """The first slot that starts at or after ``moment``."""
    return -(-((moment - _EPOCH) // timedelta(microseconds=1)) // (_SLOT_S * 1_000_000))


def _slot_start(slot: int) -> datetime:
    return _EPOCH + SLOT * slot


class CopierModel(DeviceModel):
    kind = "copier"
    transport = "mqtt"
    channels = (
        Channel("pages_total", MetricKind.COUNTER, "pages", 32),
        Channel("jams_total", MetricKind.COUNTER, "jams", 32),
        Channel("toner_pct", MetricKind.GAUGE, "%"),
        Channel("drum_life_pct", MetricKind.GAUGE, "%"),
        Channel("state", MetricKind.STATE),
    )
    fault_codes = ("JAM", "TONER_LOW", "TONER_EMPTY", "DRUM_END_OF_LIFE")
    default_plans = (
        {"suffix": "service", "name": "Copier service (every 10,000 pages)", "type": "meter",
         "metric": "pages_total", "every": 10000},
        {"suffix": "toner", "name": "Copier toner", "type": "supplies", "metric": "toner_pct",
         "below": 10, "hysteresis": 20, "item": "Toner cartridge"},
    )  # fmt: skip

    def _begin(self, initial: Mapping[str, float]) -> None:
        self._day_slots = max(1, self.hours.day_length // SLOT)
        # slot -1 lies before any real slot, so the starting state never repeats a slot's draws
        rng = slot_random(self.seed, -1)
        toner_pct = initial.get("toner_pct", rng.uniform(15.0, 100.0))
        drum_pct = initial.get("drum_life_pct", rng.uniform(20.0, 100.0))
        self._toner = max(0, min(CARTRIDGE_PAGES, round(toner_pct / 100 * CARTRIDGE_PAGES)))
        self._drum = max(0, min(DRUM_PAGES, round(drum_pct / 100 * DRUM_PAGES)))
        # open slots still to wait before a new cartridge / drum is fitted; None: none ordered
        self._toner_wait: int | None = None
        self._drum_wait: int | None = None
        if self._toner == 0:
            self._toner_wait = self._toner_delay(rng)
        if self._drum_worn():
            self._drum_wait = self._drum_delay(rng)
        self._jammed = False
        self._printed_slot: int | None = None

    def initial_counter(self, name: str, rng: random.Random) -> int:
        return rng.randint(20_000, 400_000) if name == "pages_total" else rng.randint(5, 300)

    # --- the simulation -----------------------------------------------------------------

    def _toner_delay(self, rng: random.Random) -> int:
        return rng.randint(0, 2 * self._day_slots)

    def _drum_delay(self, rng: random.Random) -> int:
        return rng.randint(self._day_slots, 5 * self._day_slots)

    def _drum_worn(self) -> bool:
        return self._drum * 100 < DRUM_END_PCT * DRUM_PAGES

    def _simulate(self, start: datetime, end: datetime) -> None:
        # a slot's printing happens at the instant it begins: slot k belongs to the interval
        # that contains its start, so every split of [start, end] sees each slot exactly once
        slot, last = _slot_of(start) + 1, _slot_of(end)
        while slot <= last:
            moment = _slot_start(slot)
            if self.hours.is_open(moment):
                self._run_slot(slot, moment)
                slot += 1
            else:
                # nothing happens while closed, not even the wait for a cartridge
                slot = max(slot + 1, _first_slot_from(self.hours.next_open(moment)))

    def _run_slot(self, slot: int, moment: datetime) -> None:
        rng = slot_random(self.seed, slot)
        morning = moment.astimezone(self.hours.zone).hour < 12
        chance, most = MORNING_LOAD if morning else AFTERNOON_LOAD
        # draw everything up front so a slot's draws never depend on the device's state
        wanted = rng.randint(1, most) if rng.random() < chance else 0
        jams = rng.random() < JAM_CHANCE
        delays = slot_random(self.seed, slot, 1)

        if self._toner == 0 and self._toner_wait is not None:
            if self._toner_wait == 0:
                self._toner, self._toner_wait = CARTRIDGE_PAGES, None
            else:
                self._toner_wait -= 1
        if self._drum_wait is not None:
            if self._drum_wait == 0:
                self._drum, self._drum_wait = DRUM_PAGES, None
            else:
                self._drum_wait -= 1

        printed = min(wanted, self._toner)
        self._jammed = printed > 0 and jams
        if printed:
            self._add("pages_total", printed)
            self._toner -= printed
            self._drum = max(0, self._drum - printed)
            self._printed_slot = slot
            if self._jammed:
                self._add("jams_total", 1)
            if self._toner == 0:
                self._toner_wait = self._toner_delay(delays)
            if self._drum_wait is None and self._drum_worn():
                self._drum_wait = self._drum_delay(delays)

    # --- what the device reports --------------------------------------------------------

    def _gauges(self) -> dict[str, Value]:
        return {
            # 8,000 pages make 0.0125 % steps: four decimals are exact
            "toner_pct": round(self._toner * 100 / CARTRIDGE_PAGES, 4),
            # rounded down so that the reading is below 5 % exactly when the fault is raised
            "drum_life_pct": math.floor(self._drum * 10_000 / DRUM_PAGES) / 100,
            "state": int(self._printed_slot == _slot_of(self.now)),
        }

    def _own_faults(self) -> set[str]:
        faults: set[str] = set()
        if self._jammed:
            faults.add("JAM")
        if self._toner * 100 < TONER_LOW_PCT * CARTRIDGE_PAGES:
            faults.add("TONER_LOW")
        if self._toner == 0:
            faults.add("TONER_EMPTY")
        if self._drum_worn():
            faults.add("DRUM_END_OF_LIFE")
        return faults
