"""Builds the simulated devices a site configuration describes.

A device is simulated when the simulators know its kind; its initial counters come from the
configuration's ``simulation.initial`` section.
"""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from core.clock import Clock, SystemClock
from core.config import Device, ModbusSource, MqttSource, SiteConfig
from core.net import free_port
from simulators.devices.autoclave import AutoclaveModel
from simulators.devices.ups import REGISTER_COUNT, UpsModel
from simulators.devices.usage import ClinicHours
from simulators.modbus import ModbusSimServer
from simulators.mqtt import MqttDeviceSim

__all__ = ["SimulatedFleet", "default_start", "localize_modbus_endpoints"]

PUBLISH_INTERVAL = 2.0  # real seconds between an MQTT device's messages


def default_start(zone: ZoneInfo, today: datetime) -> datetime:
    """The most recent Monday at 07:50 local time, so a demo starts with a clinic day."""
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


class SimulatedFleet:
    """The simulated devices of a site, as named coroutines to run in a TaskGroup."""

    def __init__(self, site: SiteConfig, *, mqtt_url: str | None, clock: Clock) -> None:
        self._site = site
        self._mqtt_url = mqtt_url
        self._clock = clock
        self._wall = SystemClock()
        self.skipped = [d.id for d in site.devices if not self._simulates(d)]

    def _simulates(self, device: Device) -> bool:
        if device.kind == "autoclave":
            return isinstance(device.source, MqttSource) and self._mqtt_url is not None
        return device.kind == "ups" and isinstance(device.source, ModbusSource)

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        site = self._site
        zone = ZoneInfo(site.site.timezone)
        start = self._clock.now()
        hours = ClinicHours(zone)
        tasks: list[tuple[str, Coroutine[Any, Any, None]]] = []
        modbus_units: dict[tuple[str, int], dict[int, tuple[int, Any]]] = {}
        for index, device in enumerate(site.devices):
            initial = site.simulation.initial.get(device.id, {})
            seed = site.simulation.seed * 1000 + index
            source = device.source
            if not self._simulates(device):
                continue
            if isinstance(source, MqttSource):
                assert self._mqtt_url is not None
                model = AutoclaveModel(
                    seed=seed,
                    start=start,
                    hours=hours,
                    cycles_total=int(initial.get("cycles_total", 0)),
                    failed_cycles=int(initial.get("failed_cycles", 0)),
                )
                sim = MqttDeviceSim(
                    device_id=device.id,
                    url=self._mqtt_url,
                    topic=source.topic,
                    status_topic=source.status_topic,
                    payload=self._autoclave_payload(model),
                    interval=PUBLISH_INTERVAL,
                )
                tasks.append((f"simulator[{device.id}]", sim.run()))
            else:
                assert isinstance(source, ModbusSource)
                ups = UpsModel(
                    seed=seed,
                    start=start,
                    run_hours=initial.get("run_hours", 0.0),
                    line_fail_count=int(initial.get("line_fail_count", 0)),
                )
                units = modbus_units.setdefault((source.host, source.port), {})
                units[source.unit] = (REGISTER_COUNT, self._ups_registers(ups))
        for (host, port), units in modbus_units.items():
            server = ModbusSimServer(host, port, units)
            tasks.append((f"simulator[modbus {host}:{port}]", server.serve()))
        return tasks

    def _autoclave_payload(self, model: AutoclaveModel) -> Any:
        def payload() -> dict[str, Any]:
            model.advance(self._clock.now())
            return model.payload(self._wall.now())

        return payload

    def _ups_registers(self, model: UpsModel) -> Any:
        def registers() -> list[int]:
            model.advance(self._clock.now())
            return model.registers()

        return registers
