"""The site's devices and plans, indexed once per app: every request looks them up by id, and
a site may have thousands."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from core.config import (
    CalendarPlan,
    CalendarSchedule,
    ConditionPlan,
    Device,
    MeterPlan,
    MeterSchedule,
    MqttSource,
    Plan,
    SiteConfig,
    SuppliesPlan,
    WhicheverFirstPlan,
)
from core.errors import NotFound
from core.records import MetricKind

__all__ = ["Catalogue", "Interval", "PlanInfo"]


@dataclass(frozen=True, slots=True)
class Interval:
    """One part of a plan's maintenance interval: ``count`` of ``unit`` (days, weeks, months,
    years, or a counter's unit)."""

    count: float
    unit: str
    basis: str  # calendar or meter

    def __str__(self) -> str:
        return f"{self.count:g} {self.unit}"


@dataclass(frozen=True, slots=True)
class PlanInfo:
    plan: Plan
    device: Device
    metric: str | None
    """The counter a meter plan counts, or the gauge a condition or supplies plan watches."""
    intervals: tuple[Interval, ...]
    """Calendar and/or meter intervals; none for event plans (condition, fault, supplies)."""

    @property
    def id(self) -> str:
        return self.plan.id

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def type(self) -> str:
        return self.plan.type

    @property
    def schedule(self) -> str:
        """The interval in words, e.g. ``every 6 months or 2000 h, whichever first``."""
        if not self.intervals:
            return f"on {self.type}"
        text = " or ".join(str(interval) for interval in self.intervals)
        return f"every {text}" + (", whichever first" if len(self.intervals) > 1 else "")


def _calendar(schedule: CalendarSchedule) -> Interval:
    return Interval(schedule.every.count, schedule.every.unit, "calendar")


def _meter(schedule: MeterSchedule, device: Device) -> Interval:
    unit = device.units.get(schedule.metric) or schedule.metric
    return Interval(schedule.every, unit, "meter")


def _plan_info(plan: Plan, device: Device) -> PlanInfo:
    if isinstance(plan, CalendarPlan):
        return PlanInfo(plan, device, None, (_calendar(plan),))
    if isinstance(plan, MeterPlan):
        return PlanInfo(plan, device, plan.metric, (_meter(plan, device),))
    if isinstance(plan, WhicheverFirstPlan):
        intervals = (_calendar(plan.calendar), _meter(plan.meter, device))
        return PlanInfo(plan, device, plan.meter.metric, intervals)
    if isinstance(plan, ConditionPlan | SuppliesPlan):
        return PlanInfo(plan, device, plan.metric, ())
    return PlanInfo(plan, device, None, ())


class Catalogue:
    """Devices and plans of one site, by id and in id order (the order listings page in)."""

    def __init__(self, site: SiteConfig) -> None:
        self.site = site
        self.zone = ZoneInfo(site.site.timezone)
        ordered = sorted(site.devices, key=lambda device: device.id)
        self.devices: dict[str, Device] = {device.id: device for device in ordered}
        plans = [
            _plan_info(plan, device) for device in ordered for plan in site.device_plans(device)
        ]
        plans.sort(key=lambda info: info.id)
        self.plans: dict[str, PlanInfo] = {info.id: info for info in plans}
        self.plans_of: dict[str, list[PlanInfo]] = {device.id: [] for device in ordered}
        for info in plans:
            self.plans_of[info.device.id].append(info)
        # Device.metrics and .units build their dicts on every call; listings want them often
        self.metrics_of = {device.id: device.metrics for device in ordered}
        self.units_of = {device.id: device.units for device in ordered}
        self.offline_after = {device.id: device.offline_after for device in ordered}
        self.meters_of: dict[str, list[tuple[PlanInfo, str, float]]] = {
            device.id: [
                (info, info.metric, interval.count)
                for info in self.plans_of[device.id]
                for interval in info.intervals
                if interval.basis == "meter"
                and info.metric is not None
                and self.metrics_of[device.id].get(info.metric) is MetricKind.COUNTER
            ]
            for device in ordered
        }
        self.protocols = {
            device.id: "mqtt" if isinstance(device.source, MqttSource) else "modbus"
            for device in ordered
        }

    def device(self, device_id: str) -> Device:
        device = self.devices.get(device_id)
        if device is None:
            raise NotFound(f"no device with id {device_id!r}")
        return device

    def plan(self, plan_id: str) -> PlanInfo:
        info = self.plans.get(plan_id)
        if info is None:
            raise NotFound(f"no maintenance plan with id {plan_id!r}")
        return info

    def metric(self, device: Device, metric: str) -> MetricKind:
        """The kind of ``metric`` on ``device``; NotFound when it has none of that name."""
        metrics = self.metrics_of.get(device.id) or device.metrics
        kind = metrics.get(metric)
        if kind is None:
            names = ", ".join(sorted(metrics)) or "none"
            raise NotFound(f"device {device.id!r} has no metric {metric!r} (it has: {names})")
        return kind
