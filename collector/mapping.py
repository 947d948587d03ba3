"""Turning one MQTT payload into records, as the device's payload map says. Pure: no I/O."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from core.config import Device, MqttSource, PayloadField
from core.errors import PayloadError
from core.records import MetricKind, Quality, Reading

__all__ = ["MappedPayload", "channel_field", "map_payload"]


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
    number = value * spec.scale + spec.offset
    # the plausible range is in the metric's unit, so it is checked after scale and offset
    if (spec.minimum is not None and number < spec.minimum) or (
        spec.maximum is not None and number > spec.maximum
    ):
        raise PayloadError(
            "out_of_range",
            f"{spec.field}: {number:g} is outside [{_bound(spec.minimum)}, {_bound(spec.maximum)}]",
        )
    return number, raw


def _bound(limit: float | None) -> str:
    return "…" if limit is None else f"{limit:g}"


def _faults(spec: PayloadField, value: Any) -> set[str]:
    if value is None or value == "":
        return set()
    if isinstance(value, str):
        return {value}
    if isinstance(value, list) and all(isinstance(code, str) for code in value):
        return {code for code in value if code}
    raise PayloadError("wrong_type", f"{spec.field}: expected a fault code or a list of codes")


def channel_field(source: MqttSource, channel: str) -> PayloadField:
    """The payload field a ``{channel}`` topic segment names: by metric name or by field."""
    for spec in source.fields:
        if channel in (spec.metric_name, spec.field, spec.field.strip("/")):
            return spec
    raise PayloadError(
        "unknown_channel",
        f"{channel!r} is none of {', '.join(spec.metric_name for spec in source.fields)}",
    )


def map_payload(
    device: Device, payload: bytes, received: datetime, channel: str | None = None
) -> MappedPayload:
    """Map one payload of ``device``; raise PayloadError with a countable reason if it can't be.

    A payload is a JSON object whose fields the device's payload map names. A plain JSON value
    (``21.5``, ``true``, ``"E12"``) is the value of one field: the one the topic's ``{channel}``
    names, or the device's only field; it carries no time of its own, so it is stamped with
    ``received``. With a ``channel``, only that channel's field is mapped.
    """
    source = device.source
    assert isinstance(source, MqttSource)
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # a bare number is a valid JSON document too, so this is not JSON at all
        raise PayloadError("bad_json", str(exc)) from exc
    specs = source.fields if channel is None else [channel_field(source, channel)]
    ts = received
    if isinstance(document, dict):
        if source.timestamp_field is not None:
            try:
                ts = _timestamp(_lookup(document, source.timestamp_field))
            except KeyError as exc:
                raise PayloadError("missing_field", f"{source.timestamp_field} is missing") from exc
            except (ValueError, OverflowError, OSError) as exc:
                raise PayloadError("bad_timestamp", f"{source.timestamp_field}: {exc}") from exc
        values = []
        for spec in specs:
            try:
                values.append(_lookup(document, spec.field))
            except KeyError as exc:
                raise PayloadError("missing_field", f"{spec.field} is missing") from exc
    elif len(specs) == 1 and not isinstance(document, list):
        values = [document]
    else:
        raise PayloadError(
            "not_an_object", f"expected a JSON object, got {type(document).__name__}"
        )

    readings: list[Reading] = []
    active_faults: set[str] | None = None
    for spec, value in zip(specs, values, strict=True):
        if spec.kind is MetricKind.FAULT:
            active_faults = (active_faults or set()) | _faults(spec, value)
            continue
        number, raw = _number(spec, value)
        readings.append(
            Reading(device.id, spec.metric_name, number, ts, Quality.GOOD, raw, spec.width)
        )
    return MappedPayload(readings, active_faults, ts)
