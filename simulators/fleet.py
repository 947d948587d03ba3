"""Fleets of simulated devices: generated from a count or a fleet file, or taken from a site
configuration, and run as named tasks.

A generated fleet comes with the site configuration that reads it, so collectors can be
pointed at the simulators with no hand editing: MQTT topics follow the documented scheme and
Modbus register maps are the kinds' own.

A fleet file::

    site: {name: Riverside Family Practice, timezone: Europe/London}
    devices: {autoclave: 20, vaccine_fridge: 10, ups: 5, compressor: 5}
    interval: 10s          # how often each device reports (real time)
    qos: 1
    units_per_port: 50     # Modbus devices behind one simulated gateway port
    seed: 1
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Coroutine, Mapping
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from core.clock import AcceleratedClock
from core.config import (
    DEVICE_KINDS,
    Device,
    ModbusSource,
    MqttSource,
    Seconds,
    SiteConfig,
    SiteInfo,
    parse_config,
    parse_document,
    read_text,
)
from core.net import free_port
from simulators.behaviour import Behaviour
from simulators.devices import MODELS
from simulators.devices.base import DeviceModel
from simulators.devices.usage import ClinicHours
from simulators.modbus import ModbusSimServer, ModbusUnit
from simulators.mqtt import MqttDeviceSim, topics
from simulators.scenario import Target
from simulators.stats import SimStats

__all__ = [
    "FleetSpec",
    "SimulatedFleet",
    "default_start",
    "fleet_of",
    "generate_site",
    "load_fleet",
    "localize_modbus_endpoints",
    "site_yaml",
]

# the mix of a multi-site practice: many pumps and fridges, few X-ray rooms
MIX = {
    "infusion_pump": 4,
    "vaccine_fridge": 3,
    "autoclave": 2,
    "copier": 2,
    "ups": 2,
    "compressor": 1,
    "xray": 1,
}


def _simulated_kind(kind: str) -> str:
    if kind not in MODELS:
        known = ", ".join(k for k in DEVICE_KINDS if k in MODELS)
        raise ValueError(f"unknown device kind {kind!r}; simulated kinds: {known}")
    return kind


class FleetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    site: SiteInfo = SiteInfo(name="Simulated practice", timezone="Europe/London")
    devices: dict[Annotated[str, AfterValidator(_simulated_kind)], Annotated[int, Field(ge=0)]] = (
        Field(min_length=1, description="how many devices of each kind")
    )
    interval: Seconds = 10.0
    qos: Literal[0, 1, 2] = 1
    units_per_port: int = Field(default=50, ge=1, le=247)
    modbus_host: str = "127.0.0.1"
    seed: int = 1

    @field_validator("devices")
    @classmethod
    def _some_devices(cls, devices: dict[str, int]) -> dict[str, int]:
        if sum(devices.values()) == 0:
            raise ValueError("the fleet has no devices")
        return devices


def fleet_of(count: int, **settings: Any) -> FleetSpec:
    """``count`` devices in the proportions of ``MIX``, every kind present once there is room."""
    if count < 1:
        raise ValueError("a fleet needs at least one device")
    mix = {kind: weight for kind, weight in MIX.items() if kind in MODELS}
    total = sum(mix.values())
    kinds = dict.fromkeys(mix, 1 if count >= len(mix) else 0)
    for _ in range(count - sum(kinds.values())):
        # deal the rest out where the share falls furthest short: stable and exact
        kind = max(mix, key=lambda k: (mix[k] * count / total - kinds[k], mix[k]))
        kinds[kind] += 1
    return FleetSpec(devices={k: n for k, n in kinds.items() if n}, **settings)


def load_fleet(path: Path | str) -> FleetSpec:
    return parse_document(read_text(path), str(path), FleetSpec)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "site"


def generate_site(spec: FleetSpec, *, mqtt_url: str | None) -> SiteConfig:
    """The site configuration that reads ``spec``'s devices; Modbus gateways get free ports."""
    slug = _slug(spec.site.name)
    devices: list[dict[str, Any]] = []
    modbus_index = 0
    ports: list[int] = []
    for kind, count in spec.devices.items():
        model = MODELS[kind]
        for number in range(1, count + 1):
            device_id = f"{kind.replace('_', '-')}-{number:03d}"
            if model.transport == "mqtt":
                topic, status = topics(slug, device_id)
                source: dict[str, Any] = {
                    "protocol": "mqtt",
                    "topic": topic,
                    "status_topic": status,
                    "timestamp_field": "ts",
                    "expected_interval": spec.interval,
                    "fields": _payload_fields(model),
                }
            else:
                port_index, unit = divmod(modbus_index, spec.units_per_port)
                modbus_index += 1
                if port_index == len(ports):
                    ports.append(free_port())
                source = {
                    "protocol": "modbus",
                    "host": spec.modbus_host,
                    "port": ports[port_index],
                    "unit": unit + 1,
                    "interval": spec.interval,
                    "timeout": 1.0,
                    "registers": [
                        r.model_dump(mode="json", exclude_defaults=True) for r in model.register_map
                    ],
                }
            plans = [
                {"id": f"{device_id}-{plan['suffix']}"}
                | {k: v for k, v in plan.items() if k != "suffix"}
                for plan in model.default_plans
            ]
            devices.append(
                {
                    "id": device_id,
                    "kind": kind,
                    "manufacturer": "Simulated",
                    "model": f"{kind} simulator",
                    "serial": f"SIM-{zlib.crc32(device_id.encode()) % 1_000_000:06d}",
                    "location": f"Room {number % 12 + 1}",
                    "source": source,
                    "plans": plans,
                }
            )
    data = {
        "site": spec.site.model_dump(mode="json"),
        "mqtt": {"url": mqtt_url} if mqtt_url else {},
        "simulation": {"seed": spec.seed},
        "devices": devices,
    }
    return parse_config(site_yaml_text(data), "<generated fleet>")


def _payload_fields(model: type[DeviceModel]) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = []
    for channel in model.channels:
        field: dict[str, Any] = {"field": channel.name, "kind": str(channel.kind)}
        if channel.unit:
            field["unit"] = channel.unit
        if channel.width:
            field["width"] = channel.width
        if channel.scale != 1.0:
            field["scale"] = channel.scale  # the device publishes the raw counter
        fields.append(field)
    fields.append({"field": "faults", "kind": "fault"})
    return fields


def site_yaml_text(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, width=100)


def site_yaml(site: SiteConfig) -> str:
    """A site configuration as the YAML a technician would write."""
    header = "# generated by `equipwatch simulate`; check with `equipwatch check-config`\n"
    return header + site_yaml_text(site.model_dump(mode="json", exclude_defaults=True))


def default_start(zone: ZoneInfo, today: datetime) -> datetime:
    """The most recent Monday at 07:50 local time, so a simulation starts with a clinic day."""
    local = today.astimezone(zone)
    monday = local.date() - timedelta(days=local.weekday())
    return datetime.combine(monday, time(7, 50), zone)


def localize_modbus_endpoints(site: SiteConfig) -> tuple[SiteConfig, dict[str, str]]:
    """Point every Modbus endpoint at a free local port, where the simulators will serve it."""
    ports: dict[tuple[str, int], int] = {}
    devices = []
    for device in site.devices:
        source = device.source
        if isinstance(source, ModbusSource):
            key = (source.host, source.port)
            ports.setdefault(key, free_port())
            source = source.model_copy(update={"host": "127.0.0.1", "port": ports[key]})
            devices.append(device.model_copy(update={"source": source}))
        else:
            devices.append(device)
    moved = {f"{h}:{p}": f"127.0.0.1:{n}" for (h, p), n in ports.items()}
    return site.model_copy(update={"devices": devices}), moved


def device_seed(site_seed: int, device_id: str) -> int:
    """Stable across processes (``hash`` of a string is not)."""
    return site_seed * 1_000_003 + zlib.crc32(device_id.encode())


class SimulatedFleet:
    """The simulated devices of a site, as named coroutines to run in a TaskGroup.

    A device is simulated when its kind has a model and its transport is the model's; the
    others are listed in ``skipped``.
    """

    def __init__(
        self,
        site: SiteConfig,
        *,
        mqtt_url: str | None,
        clock: AcceleratedClock,
        qos: int = 1,
        stats: SimStats | None = None,
    ) -> None:
        self._site = site
        self._mqtt_url = mqtt_url
        self._clock = clock
        self._qos = qos
        self.stats = stats or SimStats()
        zone = ZoneInfo(site.site.timezone)
        hours = ClinicHours(zone)
        start = clock.now()
        self.targets: dict[str, Target] = {}
        self.skipped: list[str] = []
        for device in site.devices:
            model_type = MODELS.get(device.kind)
            if model_type is None or not self._transport_fits(device, model_type):
                self.skipped.append(device.id)
                continue
            model = model_type(
                seed=device_seed(site.simulation.seed, device.id),
                start=start,
                hours=hours,
                initial=site.simulation.initial.get(device.id),
            )
            self.targets[device.id] = Target(device.kind, model, Behaviour())

    def _transport_fits(self, device: Device, model: type[DeviceModel]) -> bool:
        if isinstance(device.source, MqttSource):
            # a simulated device publishes on its own topic, not on a template's
            return model.transport == "mqtt" and bool(self._mqtt_url and device.source.topic)
        return model.transport == "modbus"

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        tasks: list[tuple[str, Coroutine[Any, Any, None]]] = []
        gateways: dict[tuple[str, int], dict[int, ModbusUnit]] = {}
        mqtt_ids = [d.id for d in self._site.devices if isinstance(d.source, MqttSource)]
        position = {device_id: index for index, device_id in enumerate(mqtt_ids)}
        for device in self._site.devices:
            target = self.targets.get(device.id)
            if target is None:
                continue
            source = device.source
            if isinstance(source, MqttSource):
                assert self._mqtt_url is not None
                assert source.topic is not None
                # spread first messages over one interval so a fleet does not publish in step
                phase = source.expected_interval * position[device.id] / len(mqtt_ids)
                sim = MqttDeviceSim(
                    device_id=device.id,
                    url=self._mqtt_url,
                    topic=source.topic,
                    status_topic=source.status_topic,
                    model=target.model,
                    clock=self._clock,
                    interval=source.expected_interval,
                    qos=self._qos,
                    behaviour=target.behaviour,
                    stats=self.stats,
                    phase=phase,
                )
                tasks.append((f"simulator[{device.id}]", sim.run()))
            else:
                units = gateways.setdefault((source.host, source.port), {})
                units[source.unit] = ModbusUnit(target.model, target.behaviour)
        for (host, port), units in gateways.items():
            server = ModbusSimServer(host, port, units, clock=self._clock, stats=self.stats)
            tasks.append((f"simulator[modbus {host}:{port}]", server.serve()))
        return tasks
