"""FHIR R4 resources built from equipwatch's records, as JSON-ready dicts.

How equipwatch maps onto FHIR:
- Device: a configured device. ``identifier`` is its asset tag (the site's device id);
  ``status`` is active (retired devices are not configured, so not listed); ``statusReason``
  online or offline from the device-status-reason code system; ``property`` carries the risk
  class and one PM interval per calendar or meter part of each plan.
- DeviceMetric: one per counter and gauge (state metrics too; fault codes are not numbers and
  are left out), ``source`` the Device, ``operationalStatus`` on/off with the device.
- Observation: one reading: ``code`` the metric, ``subject`` the Device, ``device`` the
  DeviceMetric, ``effectiveDateTime``, ``valueQuantity``; ``status`` final for a good reading,
  preliminary for an uncertain or bad one.
- Task: one work order: ``status`` from its state, ``businessStatus`` "overdue" once its due
  window has passed unfinished, ``focus`` the Device, ``restriction.period`` the due window,
  ``executionPeriod.end`` the completion, ``output`` the counters at service and the failure
  codes.
FHIR forbids empty strings, so a field equipwatch leaves empty is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from api.catalogue import PlanInfo
from core.config import Device
from core.db import WorkOrder
from core.records import MetricKind, Quality, Reading

__all__ = [
    "ASSET_TAG_SYSTEM",
    "FHIR_VERSION",
    "bundle",
    "capability_statement",
    "device_metric_resource",
    "device_resource",
    "instant",
    "observation_resource",
    "task_resource",
]

FHIR_VERSION = "4.0.1"
ASSET_TAG_SYSTEM = "urn:equipwatch:asset-tag"
KIND_SYSTEM = "urn:equipwatch:device-kind"
METRIC_SYSTEM = "urn:equipwatch:metric"
PROPERTY_SYSTEM = "urn:equipwatch:device-property"
RISK_SYSTEM = "urn:equipwatch:risk-class"
WORK_SYSTEM = "urn:equipwatch:work-order-kind"
STATUS_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/device-status-reason"
UCUM = "http://unitsofmeasure.org"

# units as the site files write them, and their UCUM codes where there is one
_UCUM = {
    "°C": "Cel",
    "C": "Cel",
    "degC": "Cel",
    "kPa": "kPa",
    "Pa": "Pa",
    "bar": "bar",
    "%": "%",
    "h": "h",
    "min": "min",
    "s": "s",
    "V": "V",
    "A": "A",
    "W": "W",
    "kW": "kW",
    "Hz": "Hz",
    "l": "L",
    "L": "L",
    "days": "d",
    "weeks": "wk",
    "months": "mo",
    "years": "a",
}

_TASK_STATUS = {
    "open": "ready",
    "in_progress": "in-progress",
    "on_hold": "on-hold",
    "done": "completed",
    "cancelled": "cancelled",
}
_TASK_PRIORITY = {"low": "routine", "normal": "routine", "high": "urgent", "urgent": "asap"}
_FINISHED = ("done", "cancelled")


def instant(moment: datetime) -> str:
    """A FHIR dateTime/instant in UTC, e.g. ``2026-03-02T09:00:00Z``."""
    text = moment.astimezone(UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"


def _drop_empty(resource: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if value not in ("", None, [], {})}


def _quantity(value: float, unit: str | None) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if unit:
        quantity["unit"] = unit
        code = _UCUM.get(unit)
        if code is not None:
            quantity["system"] = UCUM
            quantity["code"] = code
    return quantity


def _concept(system: str, code: str, text: str | None = None) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}], "text": text or code}


def _reference(kind: str, fhir_id: str, display: str | None = None) -> dict[str, Any]:
    reference = {"reference": f"{kind}/{fhir_id}"}
    if display:
        reference["display"] = display
    return reference


def device_resource(
    device: Device,
    fhir_id: str,
    state: str,
    reason: str | None,
    plans: Sequence[PlanInfo],
) -> dict[str, Any]:
    properties: list[dict[str, Any]] = [
        {
            "type": _concept(PROPERTY_SYSTEM, "risk-class", "Risk class"),
            "valueCode": [_concept(RISK_SYSTEM, device.risk_class)],
        }
    ]
    for info in plans:
        for interval in info.intervals:
            properties.append(
                {
                    "type": _concept(
                        PROPERTY_SYSTEM,
                        "pm-interval",
                        f"PM interval ({interval.basis}): {info.name}",
                    ),
                    "valueQuantity": [_quantity(interval.count, interval.unit)],
                }
            )
    status_reason = None
    if state in ("online", "offline"):
        status_reason = [
            {
                "coding": [{"system": STATUS_REASON_SYSTEM, "code": state}],
                "text": reason or state,
            }
        ]
    names = [{"name": device.id, "type": "user-friendly-name"}]
    if device.model:
        names.append({"name": device.model, "type": "model-name"})
    return _drop_empty(
        {
            "resourceType": "Device",
            "id": fhir_id,
            "identifier": [
                {
                    "use": "official",
                    "type": {"text": "Asset tag"},
                    "system": ASSET_TAG_SYSTEM,
                    "value": device.id,
                }
            ],
            "status": "active",
            "statusReason": status_reason,
            "manufacturer": device.manufacturer,
            "deviceName": names,
            "modelNumber": device.model,
            "serialNumber": device.serial,
            "type": _concept(KIND_SYSTEM, device.kind, device.kind.replace("_", " ")),
            "location": {"display": device.location} if device.location else None,
            "property": properties,
        }
    )


_CATEGORIES = {
    MetricKind.COUNTER: "measurement",
    MetricKind.GAUGE: "measurement",
    MetricKind.STATE: "setting",
}


def device_metric_resource(
    fhir_id: str,
    device_fhir_id: str,
    metric: str,
    kind: MetricKind,
    unit: str | None,
    state: str,
) -> dict[str, Any]:
    unit_concept = None
    if unit:
        code = _UCUM.get(unit)
        unit_concept = (
            {"coding": [{"system": UCUM, "code": code}], "text": unit}
            if code is not None
            else {"text": unit}
        )
    operational = {"online": "on", "offline": "off"}.get(state)
    return _drop_empty(
        {
            "resourceType": "DeviceMetric",
            "id": fhir_id,
            "type": _concept(METRIC_SYSTEM, metric, f"{metric} ({kind})"),
            "unit": unit_concept,
            "source": _reference("Device", device_fhir_id),
            "operationalStatus": operational,
            "category": _CATEGORIES.get(kind, "unspecified"),
        }
    )


def observation_resource(
    fhir_id: str,
    device_fhir_id: str,
    metric_fhir_id: str,
    reading: Reading,
    unit: str | None,
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": fhir_id,
        "status": "final" if reading.quality is Quality.GOOD else "preliminary",
        "code": _concept(METRIC_SYSTEM, reading.metric),
        "subject": _reference("Device", device_fhir_id),
        "device": _reference("DeviceMetric", metric_fhir_id),
        "effectiveDateTime": instant(reading.ts),
        "valueQuantity": _quantity(reading.value, unit),
    }


def task_resource(order: WorkOrder, device_fhir_id: str, now: datetime) -> dict[str, Any]:
    overdue = order.state not in _FINISHED and order.due_to is not None and order.due_to < now
    period = _drop_empty(
        {
            "start": instant(order.due_from) if order.due_from else None,
            "end": instant(order.due_to) if order.due_to else None,
        }
    )
    reason = None
    if order.plan_id is not None:
        reason = f"maintenance plan {order.plan_id}, occurrence {order.cycle}"
    elif order.fault_key is not None:
        reason = f"fault {order.fault_key}"
    outputs: list[dict[str, Any]] = [
        {"type": {"text": f"counter at service: {metric}"}, "valueDecimal": value}
        for metric, value in sorted((order.counters or {}).items())
    ]
    for label, code in (
        ("problem code", order.problem_code),
        ("cause code", order.cause_code),
        ("remedy code", order.remedy_code),
    ):
        if code:
            outputs.append({"type": {"text": label}, "valueString": code})
    kind_text = "preventive maintenance" if order.kind == "pm" else "corrective maintenance"
    return _drop_empty(
        {
            "resourceType": "Task",
            "id": str(order.id),
            "identifier": [{"system": "urn:equipwatch:work-order", "value": str(order.id)}],
            "status": _TASK_STATUS[order.state],
            "businessStatus": {"text": "overdue" if overdue else order.state.replace("_", " ")},
            "intent": "order",
            "priority": _TASK_PRIORITY.get(order.priority, "routine"),
            "code": _concept(WORK_SYSTEM, order.kind, kind_text),
            "description": order.title,
            "focus": _reference("Device", device_fhir_id, order.device_id),
            "authoredOn": instant(order.created_at),
            "lastModified": instant(order.updated_at),
            "restriction": {"period": period} if period else None,
            "executionPeriod": (
                {"end": instant(order.completed_at)} if order.completed_at else None
            ),
            "owner": {"display": order.assignee} if order.assignee else None,
            "reasonCode": {"text": reason} if reason else None,
            "note": [{"text": order.notes}] if order.notes.strip() else None,
            "output": outputs,
        }
    )


def bundle(
    base: str, self_url: str, next_url: str | None, resources: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """A searchset Bundle; ``base`` is the server's FHIR base URL (for each entry's fullUrl)."""
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
                "resource": resource,
                "search": {"mode": "match"},
            }
            for resource in resources
        ],
    }


def _search(name: str, kind: str, documentation: str) -> dict[str, str]:
    return {"name": name, "type": kind, "documentation": documentation}


def capability_statement(base: str, software_version: str, now: datetime) -> dict[str, Any]:
    paging = _search("_count", "number", "page size, at most 1000 (the next link pages on)")
    read_search = [{"code": "read"}, {"code": "search-type"}]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(now),
        "kind": "instance",
        "software": {"name": "equipwatch", "version": software_version},
        "implementation": {"description": "equipwatch FHIR view (read-only)", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Read-only. Every request needs Authorization: Bearer <token>.",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": (
                                        "http://terminology.hl7.org/CodeSystem/"
                                        "restful-security-service"
                                    ),
                                    "code": "OAuth",
                                }
                            ],
                            "text": "Bearer API tokens (not OAuth-issued)",
                        }
                    ],
                    "description": "equipwatch API tokens as bearer tokens",
                },
                "resource": [
                    {
                        "type": "Device",
                        "interaction": read_search,
                        "searchParam": [
                            _search("identifier", "token", "the asset tag"),
                            _search("type", "token", "the device kind, e.g. autoclave"),
                            paging,
                        ],
                    },
                    {
                        "type": "DeviceMetric",
                        "interaction": read_search,
                        "searchParam": [
                            _search("source", "reference", "Device/<id>"),
                            paging,
                        ],
                    },
                    {
                        "type": "Observation",
                        "interaction": read_search,
                        "searchParam": [
                            _search("subject", "reference", "Device/<id> (required)"),
                            _search("device", "reference", "DeviceMetric/<id>"),
                            _search("code", "token", "the metric"),
                            _search("date", "date", "ge, gt, le, lt or eq; repeatable"),
                            paging,
                        ],
                    },
                    {
                        "type": "Task",
                        "interaction": read_search,
                        "searchParam": [
                            _search("focus", "reference", "Device/<id>"),
                            _search("status", "token", "ready, in-progress, on-hold, ..."),
                            paging,
                        ],
                    },
                ],
            }
        ],
    }
