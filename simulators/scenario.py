"""Scenarios: scripted events at given simulated times, loaded from YAML and validated like the
site configuration (every problem with file, line and field).

```yaml
name: counter edge cases
events:
  - {at: 1h, device: ups-001, action: wrap, counter: line_fail_count, by: 2}
  - {at: 1h, device: ups-001, action: count, counter: line_fail_count, by: 5}
  - {at: 2h, device: copier-001, action: reset, counter: pages_total}   # board swapped
  - {at: 3h, device: autoclave-001, action: fault, code: DOOR, for: 30m}
  - {at: 4h, device: autoclave-001, action: offline, for: 20m}           # will fires
  - {at: 5h, device: compressor-001, action: exception, code: 6, for: 10m}
  - {at: 6h, device: compressor-001, action: timeout, for: 10m}
  - {at: 7h, device: autoclave-001, action: malformed, count: 3}
  - {at: 8h, kind: vaccine_fridge, action: slow, delay: 2s, for: 1h}
```

``at`` is a duration after the start of the simulation, or an absolute time (not before the
start). ``for`` is simulated time; ``delay`` is real time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from core.clock import AcceleratedClock
from core.config import (
    DEVICE_KINDS,
    Identifier,
    ModbusSource,
    MqttSource,
    Seconds,
    SiteConfig,
    parse_document,
    parse_duration,
    read_text,
)
from core.records import MetricKind
from simulators.behaviour import Behaviour, Window
from simulators.devices import MODELS
from simulators.devices.base import DeviceModel

__all__ = ["Scenario", "ScenarioEvent", "ScenarioRunner", "Target", "load_scenario"]

log = logging.getLogger(__name__)

Action = Literal[
    "fault",
    "clear_fault",
    "set_counter",
    "wrap",
    "count",
    "reset",
    "offline",
    "exception",
    "timeout",
    "slow",
    "malformed",
]
_NEEDS: dict[str, tuple[str, ...]] = {
    "fault": ("code",),
    "clear_fault": ("code",),
    "set_counter": ("counter", "value"),
    "wrap": ("counter",),
    "count": ("counter", "by"),
    "reset": ("counter",),
    "slow": ("delay",),
    "malformed": ("count",),
}
_MODBUS_ONLY = ("exception", "timeout")
_MQTT_ONLY = ("malformed",)
_COUNTER_ACTIONS = ("set_counter", "wrap", "count", "reset")


def _when(value: object) -> object:
    """A datetime stays one; anything else is a duration after the start."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return parse_duration(value)


class ScenarioEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    at: Annotated[datetime | float, BeforeValidator(_when)]
    device: Identifier | None = None
    kind: str | None = None
    action: Action
    code: str | int | None = None
    counter: str | None = None
    value: int | None = Field(default=None, ge=0)
    by: int | None = Field(default=None, ge=1)
    duration: Seconds | None = Field(default=None, alias="for")
    delay: Seconds | None = None
    count: int | None = Field(default=None, ge=1, le=1000)

    @model_validator(mode="after")
    def _complete(self) -> ScenarioEvent:
        if (self.device is None) == (self.kind is None):
            raise ValueError("name either a device or a kind of device")
        if isinstance(self.at, float) and self.at < 0:
            raise ValueError("at must not be negative")
        missing = [name for name in _NEEDS.get(self.action, ()) if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{self.action} needs {', '.join(missing)}")
        if self.action == "exception" and not (isinstance(self.code, int) and 1 <= self.code <= 11):
            raise ValueError("exception needs code: a Modbus exception code from 1 to 11")
        if self.action in ("fault", "clear_fault") and not isinstance(self.code, str):
            raise ValueError(f"{self.action} needs code: one of the device kind's fault codes")
        return self

    def start(self, origin: datetime) -> datetime:
        return self.at if isinstance(self.at, datetime) else origin + timedelta(seconds=self.at)


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    events: list[ScenarioEvent] = Field(min_length=1)


def _checks(site: SiteConfig, origin: datetime) -> Any:
    devices = {device.id: device for device in site.devices}

    def check(scenario: Scenario) -> Iterator[tuple[tuple[str | int, ...], str]]:
        for index, event in enumerate(scenario.events):
            where: tuple[str | int, ...] = ("events", index)
            when = event.start(origin)
            if when.tzinfo is None:
                yield (*where, "at"), "give the time with its UTC offset, e.g. +00:00"
                continue
            if when < origin:
                yield (
                    (*where, "at"),
                    f"{when.isoformat()} is before the simulation starts ({origin.isoformat()})",
                )
            if event.kind is not None:
                if event.kind not in DEVICE_KINDS or event.kind not in MODELS:
                    yield (
                        (*where, "kind"),
                        f"unknown device kind {event.kind!r}; simulated kinds: "
                        + ", ".join(MODELS),
                    )
                    continue
                targets = [d for d in site.devices if d.kind == event.kind]
                if not targets:
                    yield (*where, "kind"), f"the fleet has no {event.kind} device"
                    continue
            else:
                assert event.device is not None
                if event.device not in devices:
                    yield (*where, "device"), f"no device {event.device!r} in the fleet"
                    continue
                targets = [devices[event.device]]
            for device in targets:
                model = MODELS.get(device.kind)
                if model is None:
                    yield (*where, "device"), f"{device.id} is a {device.kind}, not simulated"
                    break
                problem = _problem(event, model, device.source)
                if problem is not None:
                    yield (*where, problem[0]), f"{device.id}: {problem[1]}"
                    break

    return check


def _problem(
    event: ScenarioEvent, model: type[DeviceModel], source: MqttSource | ModbusSource
) -> tuple[str, str] | None:
    if event.action in _MODBUS_ONLY and not isinstance(source, ModbusSource):
        return "action", f"{event.action} is a Modbus answer; this device publishes over MQTT"
    if event.action in _MQTT_ONLY and not isinstance(source, MqttSource):
        return "action", f"{event.action} is an MQTT payload; this device is read over Modbus"
    if event.action in ("fault", "clear_fault") and event.code not in model.fault_codes:
        return (
            "code",
            f"a {model.kind} has no fault {event.code!r} ({', '.join(model.fault_codes)})",
        )
    if event.action in _COUNTER_ACTIONS:
        counters = {c.name: c for c in model.channels if c.kind is MetricKind.COUNTER}
        channel = counters.get(event.counter or "")
        if channel is None:
            return (
                "counter",
                f"no counter {event.counter!r} in a {model.kind}'s map "
                f"(counters: {', '.join(counters)})",
            )
        limit = 1 << (channel.width or 64)
        if event.value is not None and event.value >= limit:
            return "value", f"{event.value} does not fit {channel.name} ({channel.width} bits)"
        if event.by is not None and event.action == "wrap" and event.by >= limit:
            return "by", f"{event.by} is more than {channel.name} can hold"
    return None


def load_scenario(path: Path | str, site: SiteConfig, origin: datetime) -> Scenario:
    """Read a scenario and check it against the fleet it will run on, which starts at
    ``origin`` (simulated time)."""
    return parse_document(read_text(path), str(path), Scenario, after=_checks(site, origin))


@dataclass(slots=True)
class Target:
    """What a scenario can reach of one simulated device."""

    kind: str
    model: DeviceModel
    behaviour: Behaviour


class ScenarioRunner:
    """Applies a scenario's events to the fleet as simulated time reaches them."""

    def __init__(
        self,
        scenario: Scenario,
        targets: dict[str, Target],
        *,
        clock: AcceleratedClock,
        origin: datetime,
    ) -> None:
        self._scenario = scenario
        self._targets = targets
        self._clock = clock
        self._origin = origin
        self.applied = 0
        # misbehaviour is a window of time: the front-ends consult it, nothing to wait for
        for event in scenario.events:
            if event.action in ("offline", "exception", "timeout", "slow"):
                start = event.start(origin)
                end = start + timedelta(seconds=event.duration) if event.duration else None
                window = Window(
                    event.action,
                    start,
                    end,
                    code=event.code if isinstance(event.code, int) else 4,
                    delay=event.delay or 0.0,
                )
                for target in self._for(event):
                    target.behaviour.add(window)

    def _for(self, event: ScenarioEvent) -> list[Target]:
        if event.device is not None:
            return [self._targets[event.device]]
        return [t for t in self._targets.values() if t.kind == event.kind]

    async def run(self) -> None:
        windows = ("offline", "exception", "timeout", "slow")
        timed = sorted(
            (e for e in self._scenario.events if e.action not in windows),
            key=lambda e: e.start(self._origin),
        )
        for event in timed:
            when = event.start(self._origin)
            await asyncio.sleep(self._clock.wall_seconds(when))
            for target in self._for(event):
                self.apply(event, target, when)
        log.info("scenario %r: all %d timed events applied", self._scenario.name, len(timed))

    def apply(self, event: ScenarioEvent, target: Target, when: datetime) -> None:
        model = target.model
        model.advance(when)
        counter = event.counter or ""
        if event.action == "fault":
            until = when + timedelta(seconds=event.duration) if event.duration else None
            model.inject_fault(str(event.code), until)
        elif event.action == "clear_fault":
            model.clear_fault(str(event.code))
        elif event.action in ("set_counter", "reset"):
            model.set_counter(counter, event.value or 0)
        elif event.action == "wrap":
            width = next(c.width for c in model.channels if c.name == counter) or 64
            model.set_counter(counter, (1 << width) - (event.by or 1))
        elif event.action == "count":
            model.set_counter(counter, model.counter(counter) + (event.by or 1))
        elif event.action == "malformed":
            target.behaviour.malformed_pending += event.count or 1
        self.applied += 1
        log.info("scenario: %s %s at %s", event.action, event.device or event.kind, when)
