"""What the API takes and returns, as pydantic models, so that OpenAPI documents every field."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from api.pagination import Page

__all__ = [
    "AlarmOut",
    "AlarmPage",
    "AuditEntryOut",
    "AuditPage",
    "Bucket",
    "ComplianceGroup",
    "ComplianceReport",
    "DeadLetterOut",
    "DeadLetterPage",
    "DeviceDetail",
    "DeviceHealth",
    "DevicePage",
    "DeviceSummary",
    "DueItem",
    "DuePage",
    "FaultOut",
    "FaultPage",
    "ForecastOut",
    "ForecastPage",
    "HistoryPage",
    "MeterUsage",
    "MetricValue",
    "NextMaintenance",
    "PlanOut",
    "PlanPage",
    "ReadingOut",
    "ReadingPage",
    "Standing",
    "StatusChangeOut",
    "StatusChangePage",
    "WhoAmI",
    "WorkOrderCompletion",
    "WorkOrderDraftIn",
    "WorkOrderOut",
    "WorkOrderPage",
    "WorkOrderUpdate",
]

DeviceState = Literal["online", "offline", "unknown"]
PlanStatusName = Literal["ok", "upcoming", "due", "overdue"]
WorkOrderState = Literal["open", "in_progress", "on_hold", "done", "cancelled"]
PriorityName = Literal["low", "normal", "high", "urgent"]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]
Code = Annotated[str, Field(min_length=1, max_length=64)]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]


class _In(BaseModel):
    """A request body: unknown fields are refused rather than silently dropped."""

    model_config = ConfigDict(extra="forbid")


# --- devices ---------------------------------------------------------------------------------


class MetricValue(BaseModel):
    value: float
    unit: str | None
    kind: str = Field(description="counter, gauge, state or fault")
    ts: datetime
    quality: str = Field(description="good, uncertain or bad")
    stale: bool = Field(description="the device is not online: this value may be out of date")


class Standing(BaseModel):
    """Where a plan stands now."""

    status: PlanStatusName
    basis: str = Field(description="what decided it: calendar, meter, both, condition, ...")
    cycle: int = Field(description="the occurrence: completions before it")
    detail: str
    due_at: datetime | None
    due_value: float | None = Field(description="counter value at which a meter plan is due")
    usage: float | None = Field(description="units counted since the last service")
    upcoming_at: datetime | None
    overdue_at: datetime | None
    forecast_at: datetime | None = Field(
        description="when the meter reaches due at the recent rate"
    )
    source: Literal["rules", "records"] = Field(
        description="rules: the engine's assessment; records: an open due occurrence only"
    )


class NextMaintenance(BaseModel):
    """The device's most pressing plan: the worst status, then the earliest date."""

    plan_id: str
    plan_name: str
    status: PlanStatusName
    basis: str
    due_at: datetime | None
    due_value: float | None
    forecast_at: datetime | None


class MeterUsage(BaseModel):
    plan_id: str
    metric: str
    usage: float | None = Field(description="units since the last service (null: not known yet)")
    every: float


class DeviceHealth(BaseModel):
    status: DeviceState
    status_reason: str | None
    last_seen: datetime | None
    open_alarms: int
    next_maintenance: NextMaintenance | None
    usage_since_service: list[MeterUsage]


class DeviceSummary(BaseModel):
    id: str
    kind: str
    manufacturer: str
    model: str
    serial: str
    location: str
    risk_class: Literal["low", "medium", "high"]
    protocol: Literal["mqtt", "modbus"]
    health: DeviceHealth


class DeviceDetail(DeviceSummary):
    latest: dict[str, MetricValue] = Field(description="the newest value of every metric")


class DevicePage(Page[DeviceSummary]):
    pass


class ReadingOut(BaseModel):
    metric: str
    value: float
    ts: datetime
    quality: str


class ReadingPage(Page[ReadingOut]):
    device_id: str
    start: datetime
    end: datetime


class Bucket(BaseModel):
    start: datetime = Field(description="bucket start, a multiple of step since the Unix epoch")
    value: float


class HistoryPage(Page[Bucket]):
    device_id: str
    metric: str
    unit: str | None
    step: int
    aggregate: str
    start: datetime
    end: datetime


class FaultOut(BaseModel):
    code: str
    ts: datetime
    active: bool = Field(description="false: the device reported the fault clear")


class FaultPage(Page[FaultOut]):
    device_id: str


class StatusChangeOut(BaseModel):
    online: bool
    ts: datetime
    reason: str


class StatusChangePage(Page[StatusChangeOut]):
    device_id: str


# --- maintenance -------------------------------------------------------------------------------


class PlanOut(BaseModel):
    id: str
    name: str
    type: str
    device_id: str
    metric: str | None
    schedule: str = Field(description="the interval in words")
    standing: Standing | None = Field(description="null: not assessed yet")


class PlanPage(Page[PlanOut]):
    pass


class DueItem(BaseModel):
    plan_id: str
    plan_name: str
    device_id: str
    status: PlanStatusName
    basis: str
    cycle: int
    detail: str
    due_at: datetime | None
    due_value: float | None
    usage: float | None
    forecast_at: datetime | None
    occurrence_id: int | None = Field(description="the recorded due occurrence, once one is open")
    detected: datetime | None = Field(description="when the occurrence was recorded")


class DuePage(Page[DueItem]):
    window_end: datetime


class ForecastOut(BaseModel):
    plan_id: str
    plan_name: str
    device_id: str
    metric: str
    status: PlanStatusName
    usage: float | None
    every: float
    due_value: float | None
    forecast_at: datetime | None = Field(description="null: not enough readings to tell a rate")


class ForecastPage(Page[ForecastOut]):
    pass


# --- work orders -------------------------------------------------------------------------------


class WorkOrderOut(BaseModel):
    id: int
    kind: Literal["pm", "corrective"]
    device_id: str
    plan_id: str | None
    cycle: int | None
    fault_key: str | None
    title: str
    state: WorkOrderState
    priority: PriorityName
    assignee: str | None
    due_from: datetime | None
    due_to: datetime | None
    notes: str
    problem_code: str | None
    cause_code: str | None
    remedy_code: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    counters: dict[str, float] | None


class WorkOrderPage(Page[WorkOrderOut]):
    pass


class WorkOrderDraftIn(_In):
    device_id: ShortText
    title: ShortText
    kind: Literal["pm", "corrective"] = "corrective"
    plan_id: ShortText | None = Field(default=None, description="pm only: the plan")
    cycle: int | None = Field(
        default=None, ge=0, le=1_000_000, description="pm only: the plan occurrence"
    )
    priority: PriorityName = "normal"
    assignee: ShortText | None = None
    due_from: AwareDatetime | None = None
    due_to: AwareDatetime | None = None
    notes: str = Field(default="", max_length=10_000)


class WorkOrderUpdate(_In):
    """Fields to change; a field left out stays, a null clears it. ``done`` is reached through
    ``/complete``, which records the counters at service."""

    state: WorkOrderState | None = None
    assignee: ShortText | None = None
    priority: PriorityName | None = None
    notes: str | None = Field(default=None, max_length=10_000)
    due_from: AwareDatetime | None = None
    due_to: AwareDatetime | None = None
    problem_code: Code | None = None
    cause_code: Code | None = None
    remedy_code: Code | None = None


class WorkOrderCompletion(_In):
    completed_at: AwareDatetime | None = Field(default=None, description="default: now")
    counters: dict[Annotated[str, Field(min_length=1, max_length=64)], FiniteFloat] = Field(
        default_factory=dict,
        max_length=100,
        description="each counter's value at service (metric -> value): resets meter plans",
    )
    problem_code: Code | None = Field(default=None, description="failure coding: the problem")
    cause_code: Code | None = Field(default=None, description="... its cause")
    remedy_code: Code | None = Field(default=None, description="... and what was done")
    notes: str | None = Field(default=None, max_length=10_000)


# --- alarms, audit, dead letters -------------------------------------------------------------


class AlarmOut(BaseModel):
    id: int
    device_id: str
    type: str
    severity: Literal["critical", "major", "minor", "warning"]
    message: str
    active: bool
    acknowledged: bool
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    count: int
    first_seen: datetime
    last_seen: datetime
    cleared_at: datetime | None
    escalated_at: datetime | None


class AlarmPage(Page[AlarmOut]):
    pass


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    actor: str
    entity: str
    entity_id: str
    action: str
    before: dict[str, object] | None
    after: dict[str, object] | None


class AuditPage(Page[AuditEntryOut]):
    pass


class DeadLetterOut(BaseModel):
    id: int
    source: str
    topic: str
    payload: str
    reason: str
    detail: str
    ts: datetime


class DeadLetterPage(Page[DeadLetterOut]):
    pass


# --- reports and the caller ---------------------------------------------------------------------


class ComplianceGroup(BaseModel):
    due: int = Field(description="preventive work orders whose due window ends in the period")
    on_time: int = Field(description="... of them completed by the end of their window")
    percent: float | None = Field(description="on_time / due x 100; null when nothing was due")


class ComplianceReport(BaseModel):
    start: datetime
    end: datetime
    all: ComplianceGroup
    high_risk: ComplianceGroup = Field(description="high-risk devices: must be 100 %")
    by_risk_class: dict[str, ComplianceGroup]


class WhoAmI(BaseModel):
    name: str
    role: str
