"""What every simulated device model shares.

A model is pure: no I/O, no wall clock. It is moved forward with ``advance(now)`` to a
simulated time and then asked for its ``values()`` and active ``faults()``. Everything it does
is a function of its seed and the simulated time, never of how often or in what steps it was
advanced, so a run is reproducible and a test can jump a week ahead in one call.

Counters are kept as unbounded integers and reported modulo their register width, as a real
device's register wraps. Scenarios reach in through ``inject_fault`` and ``set_counter``.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal

from core.config import RegisterSpec
from core.errors import EquipwatchError
from core.records import MetricKind
from simulators.devices.usage import ClinicHours

__all__ = ["Channel", "DeviceModel", "ModelError", "Transport", "Value", "slot_random"]

Transport = Literal["mqtt", "modbus"]
Value = float | str


class ModelError(EquipwatchError):
    """A scenario asked a model for something it does not have (a fault code, a counter)."""


@dataclass(frozen=True, slots=True)
class Channel:
    """One value a device reports: a counter, a gauge or a state."""

    name: str
    kind: MetricKind
    unit: str | None = None
    width: int | None = None  # counters: register width in bits, where the value wraps
    scale: float = 1.0  # counters: reported value = register value * scale


def slot_random(seed: int, *slot: int) -> random.Random:
    """A generator for one time slot of one device: the same slot always draws the same."""
    return random.Random(hash((seed, *slot)) & 0xFFFF_FFFF_FFFF)


class DeviceModel(ABC):
    """A simulated device of one kind."""

    kind: ClassVar[str]
    transport: ClassVar[Transport]
    channels: ClassVar[tuple[Channel, ...]]
    fault_codes: ClassVar[tuple[str, ...]]
    # Modbus kinds: the register map, exactly what the collector's config says
    register_map: ClassVar[tuple[RegisterSpec, ...]] = ()
    # maintenance plans a generated fleet gives each device of this kind (site config syntax)
    default_plans: ClassVar[tuple[dict[str, Any], ...]] = ()

    def __init__(
        self,
        *,
        seed: int,
        start: datetime,
        hours: ClinicHours,
        initial: Mapping[str, float] | None = None,
    ) -> None:
        self.seed = seed
        self.hours = hours
        self.start = start
        self.now = start
        initial = initial or {}
        rng = random.Random(seed)
        self._counters: dict[str, int] = {}
        for channel in self.channels:
            if channel.kind is MetricKind.COUNTER:
                given = initial.get(channel.name)
                self._counters[channel.name] = (
                    round(given / channel.scale)
                    if given is not None
                    else self.initial_counter(channel.name, rng)
                )
        self._injected: dict[str, datetime | None] = {}
        self._begin(initial)

    # --- what a kind implements ---------------------------------------------------------

    def _begin(self, initial: Mapping[str, float]) -> None:
        """Set up the kind's own state at ``self.start``; ``initial`` may give starting values
        of gauges as well as counters. Kinds whose state is all counters need nothing here."""
        return

    @abstractmethod
    def _simulate(self, start: datetime, end: datetime) -> None:
        """Move the device from ``start`` to ``end``; outcomes may depend only on the seed
        and on fixed time slots, so that any split of the interval gives the same result."""

    @abstractmethod
    def _gauges(self) -> dict[str, Value]:
        """Every non-counter channel's value at ``self.now``."""

    def _own_faults(self) -> set[str]:
        """Faults the device raises by itself at ``self.now``."""
        return set()

    def initial_counter(self, name: str, rng: random.Random) -> int:
        """A plausible starting register value for a counter of a device already in service."""
        return rng.randint(0, 5_000)

    # --- what everything else uses ------------------------------------------------------

    def advance(self, now: datetime) -> None:
        if now > self.now:
            self._simulate(self.now, now)
            self.now = now
        for code, until in list(self._injected.items()):
            if until is not None and until <= self.now:
                del self._injected[code]

    def counter(self, name: str) -> int:
        """A counter as the device reports it: wrapped to its register width."""
        width = self._channel(name).width
        value = self._counters[name]
        return value % (1 << width) if width else value

    def values(self) -> dict[str, Value]:
        reported: dict[str, Value] = {}
        for name in self._counters:
            scale = self._channel(name).scale
            raw = self.counter(name)
            reported[name] = raw if scale == 1.0 else round(raw * scale, 6)
        reported.update(self._gauges())
        return reported

    def published(self) -> dict[str, Value]:
        """What an MQTT device sends: counters as their raw register value (tenths of an hour,
        say), since a counter is an integer on the wire; the config's ``scale`` turns them back."""
        reported = self.values()
        reported.update({name: self.counter(name) for name in self._counters})
        return reported

    def faults(self) -> list[str]:
        return sorted(self._own_faults() | set(self._injected))

    # --- scenario hooks -----------------------------------------------------------------

    def inject_fault(self, code: str, until: datetime | None) -> None:
        """Raise ``code`` until ``until`` (or until cleared)."""
        if code not in self.fault_codes:
            raise ModelError(
                f"{self.kind} has no fault {code!r}; it has {', '.join(self.fault_codes)}"
            )
        self._injected[code] = until

    def clear_fault(self, code: str) -> None:
        self._injected.pop(code, None)

    def set_counter(self, name: str, value: int) -> None:
        """Set a counter's register value, e.g. near its wrap or to zero after a board swap."""
        if name not in self._counters:
            raise ModelError(
                f"{self.kind} has no counter {name!r}; it has {', '.join(self._counters)}"
            )
        self._counters[name] = value

    def _channel(self, name: str) -> Channel:
        return next(c for c in self.channels if c.name == name)

    def _add(self, name: str, amount: int) -> None:
        self._counters[name] += amount
