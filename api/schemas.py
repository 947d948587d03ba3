"""What the API returns, as pydantic models so that OpenAPI documents every field."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

__all__ = [
    "AlarmOut",
    "DeviceOut",
    "MaintenanceDueOut",
    "MetricValue",
    "ReadingOut",
    "ReadingsOut",
]


class MetricValue(BaseModel):
    value: float
    unit: str | None
    kind: str
    ts: datetime
    quality: str
    stale: bool


class DeviceOut(BaseModel):
    id: str
    kind: str
    manufacturer: str
    model: str
    serial: str
    location: str
    risk_class: str
    protocol: Literal["mqtt", "modbus"]
    status: Literal["online", "offline", "unknown"]
    status_reason: str | None
    last_seen: datetime | None
    latest: dict[str, MetricValue]


class ReadingOut(BaseModel):
    metric: str
    value: float
    ts: datetime
    quality: str


class ReadingsOut(BaseModel):
    device_id: str
    start: datetime
    end: datetime
    readings: list[ReadingOut]


class MaintenanceDueOut(BaseModel):
    id: int
    plan_id: str
    plan_name: str
    device_id: str
    basis: str
    detail: str
    due_at: datetime | None
    due_value: float | None
    detected: datetime


class AlarmOut(BaseModel):
    id: int
    device_id: str
    type: str
    severity: str
    message: str
    active: bool
    acknowledged: bool
    count: int
    first_seen: datetime
    last_seen: datetime


class DeadLetterOut(BaseModel):
    id: int
    source: str
    topic: str
    payload: str
    reason: str
    detail: str
    ts: datetime
