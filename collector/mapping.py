"""Turning one MQTT payload into records, as the device's payload map says. Pure: no I/O."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from core.config import Device, MqttSource, PayloadField
from core.errors import PayloadError
from core.records import MetricKind, Quality, Reading

__all__ = ["MappedPayload", "map_payload"]


class MappedPayload:
    """The readings of one payload and the fault codes it reports as active."""

    __slots__ = ("active_faults", "readings", "ts")

    def __init__(
        self, readings: list[Reading], active_faults: set[str] | None, ts: datetime
    ) -> None:
        self.readings = readings
        self.active_faults = active_faults
        self.ts = ts


def _lookup(document: dict[str, Any], path: str) -> Any:
    """A top-level key, or a JSON pointer (RFC 6901) when the path starts with '/'."""
    if not path.startswith("/"):
        if path not in document:
            raise KeyError(path)
        return document[path]
    node: Any = document
    for escaped in path[1:].split("/"):
        token = escaped.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        elif isinstance(node, dict) and token in node:
            node = node[token]
        else:
            raise KeyError(path)
    return node


def _timestamp(value: Any) -> datetime:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, int | float):
        # seconds, or milliseconds when the number is too large to be seconds
        seconds = value / 1000 if value > 1e11 else value
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(value, str):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    raise ValueError(f"{value!r} is not a time")


def _number(spec: PayloadField, value: Any) -> tuple[float, int | None]:
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise PayloadError("wrong_type", f"{spec.field}: expected a number, got {value!r}")
    raw = int(value) if spec.kind is MetricKind.COUNTER else None
    if raw is not None and raw != value:
        raise PayloadError("wrong_type", f"{spec.field}: a counter must be a whole number")
    if raw is not None and raw < 0:
        raise PayloadError("out_of_range", f"{spec.field}: a counter cannot be negative")
    if raw is not None and spec.width is not None and raw >= 2**spec.width:
        raise PayloadError("out_of_range", f"{spec.field}: {raw} does not fit {spec.width} bits")
    return value * spec.scale + spec.offset, raw


def _faults(spec: PayloadField, value: Any) -> set[str]:
    if value is None or value == "":
        return set()
    if isinstance(value, str):
        return {value}
    if isinstance(value, list) and all(isinstance(code, str) for code in value):
        return {code for code in value if code}
    raise PayloadError("wrong_type", f"{spec.field}: expected a fault code or a list of codes")


def map_payload(device: Device, payload: bytes, received: datetime) -> MappedPayload:
    """Map one payload of ``device``; raise PayloadError with a countable reason if it can't be."""
    source = device.source
    assert isinstance(source, MqttSource)
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # a bare number is a valid JSON document too, so this is not JSON at all
        raise PayloadError("bad_json", str(exc)) from exc
    if not isinstance(document, dict):
        if len(source.fields) == 1 and isinstance(document, int | float):
            document = {source.fields[0].field.lstrip("/"): document}
        else:
            raise PayloadError(
                "not_an_object", f"expected a JSON object, got {type(document).__name__}"
            )

    ts = received
    if source.timestamp_field is not None:
        try:
            ts = _timestamp(_lookup(document, source.timestamp_field))
        except KeyError as exc:
            raise PayloadError("missing_field", f"{source.timestamp_field} is missing") from exc
        except (ValueError, OverflowError, OSError) as exc:
            raise PayloadError("bad_timestamp", f"{source.timestamp_field}: {exc}") from exc

    readings: list[Reading] = []
    active_faults: set[str] | None = None
    for spec in source.fields:
        try:
            value = _lookup(document, spec.field)
        except KeyError as exc:
            raise PayloadError("missing_field", f"{spec.field} is missing") from exc
        if spec.kind is MetricKind.FAULT:
            active_faults = (active_faults or set()) | _faults(spec, value)
            continue
        number, raw = _number(spec, value)
        readings.append(
            Reading(device.id, spec.metric_name, number, ts, Quality.GOOD, raw, spec.width)
        )
    return MappedPayload(readings, active_faults, ts)
