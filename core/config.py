"""The site configuration: devices, where their data comes from, and their maintenance plans.

Loaded from one YAML file into pydantic models. Every problem is reported with the file, the
line and the dotted field path, so that a technician can fix the file without reading code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from core.errors import ConfigError, ConfigIssue
from core.notify_config import NotificationSettings
from core.records import MetricKind
from core.registers import DataType, Order, register_count

__all__ = [
    "DEVICE_KINDS",
    "PLAN_TYPES",
    "CalendarPlan",
    "CalendarSchedule",
    "ConditionPlan",
    "Device",
    "FaultPlan",
    "InfluxSettings",
    "MeterPlan",
    "MeterSchedule",
    "ModbusSource",
    "MqttSettings",
    "MqttSource",
    "OutboxSettings",
    "PayloadField",
    "Period",
    "Plan",
    "PostgresSettings",
    "RegisterSpec",
    "ReportPolicy",
    "RetentionSettings",
    "SiteConfig",
    "StoreSettings",
    "SuppliesPlan",
    "TlsSettings",
    "TopicTemplate",
    "WhicheverFirstPlan",
    "derived_plan_id",
    "load_config",
    "parse_config",
    "parse_document",
    "parse_duration",
    "plan_problems",
    "read_text",
]

DEVICE_KINDS = (
    "autoclave",
    "vaccine_fridge",
    "xray",
    "infusion_pump",
    "ups",
    "copier",
    "compressor",
    "patient_monitor",
)

OFFLINE_AFTER_INTERVALS = 3  # an MQTT device silent for this many expected intervals is offline

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> object:
    """Accept ``10``, ``"10s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"250ms"`` as seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration such as 10s, 5m, 2h or 1d")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
NonNegativeSeconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- where data comes from -------------------------------------------------------------


class ReportPolicy(_Model):
    """Which samples of a metric are kept: every one, or only changes beyond ``deadband``,
    with one sample at least every ``heartbeat`` so a steady value still shows it is alive."""

    mode: Literal["every", "change"] = "every"
    deadband: float = Field(default=0.0, ge=0)
    heartbeat: Seconds = 900.0


EVERY_SAMPLE = ReportPolicy()


class PayloadField(_Model):
    """One JSON field of an MQTT payload and the metric it feeds."""

    field: str = Field(min_length=1, description="top-level key, or a JSON pointer (/a/b)")
    metric: Identifier | None = None
    unit: str | None = None
    kind: MetricKind = MetricKind.GAUGE
    scale: float = 1.0
    offset: float = 0.0
    width: Literal[16, 32, 64] | None = Field(
        default=None, description="register width of a counter, so a wrap can be told from a reset"
    )
    minimum: float | None = Field(default=None, description="lower bound of a plausible value")
    maximum: float | None = Field(default=None, description="upper bound of a plausible value")
    report: ReportPolicy = EVERY_SAMPLE

    @property
    def metric_name(self) -> str:
        return self.metric or self.field.strip("/").replace("/", "_")

    @model_validator(mode="after")
    def _range(self) -> PayloadField:
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum:g} is above maximum {self.maximum:g}")
        if self.kind is MetricKind.FAULT and (self.minimum is not None or self.maximum is not None):
            raise ValueError("a fault field holds codes, not numbers: it has no minimum or maximum")
        return self


class MqttSource(_Model):
    """A device that publishes over MQTT. Its topics are given here, or matched by one of the
    site's topic templates (``mqtt.subscriptions``) through the ``{device_id}`` segment."""

    protocol: Literal["mqtt"]
    topic: str | None = Field(default=None, min_length=1)
    status_topic: str | None = Field(
        default=None, description="retained online/offline messages, e.g. the device's last will"
    )
    timestamp_field: str | None = None
    expected_interval: Seconds = 60.0
    fields: list[PayloadField] = Field(min_length=1)

    @field_validator("topic", "status_topic")
    @classmethod
    def _no_wildcards(cls, topic: str | None) -> str | None:
        if topic is not None and ("+" in topic or "#" in topic):
            raise ValueError("a device's topic names one topic; wildcards are not allowed here")
        return topic


class RegisterSpec(_Model):
    """One value read from a Modbus device. Addresses are zero-based (register 40001 is
    holding register address 0)."""

    name: Identifier
    table: Literal["holding", "input", "coil", "discrete"] = "holding"
    address: int = Field(ge=0, le=65535)
    type: DataType = DataType.UINT16
    count: int | None = Field(default=None, ge=1, le=125)
    byte_order: Order = Order.BIG
    word_order: Order = Order.BIG
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    kind: MetricKind = MetricKind.GAUGE
    report: ReportPolicy = EVERY_SAMPLE

    @field_validator("count")
    @classmethod
    def _count_fits_type(cls, count: int | None, info: ValidationInfo) -> int | None:
        data_type = info.data.get("type")
        if count is None or data_type is None:
            return count
        needed = register_count(data_type)
        if needed is not None and count != needed:
            raise ValueError(f"{data_type} needs {needed} register(s) but count gives {count}")
        return count

    @model_validator(mode="after")
    def _table_fits_type(self) -> RegisterSpec:
        if self.type is DataType.STRING and self.count is None:
            raise ValueError("a string register needs count (its length in registers)")
        bit_table = self.table in ("coil", "discrete")
        if bit_table != (self.type is DataType.BIT):
            raise ValueError("coil and discrete tables hold type bit, and only they do")
        if self.kind is MetricKind.COUNTER and self.type in (
            DataType.FLOAT32,
            DataType.FLOAT64,
            DataType.STRING,
        ):
            raise ValueError("a counter must be an integer type")
        return self

    @property
    def registers(self) -> int:
        return self.count if self.count is not None else (register_count(self.type) or 1)

    @property
    def width(self) -> int | None:
        """Bit width of an unsigned counter register, for wrap detection."""
        return {DataType.UINT16: 16, DataType.UINT32: 32, DataType.UINT64: 64}.get(self.type)


class ModbusSource(_Model):
    protocol: Literal["modbus"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=0, le=65535)
    unit: int = Field(default=1, ge=0, le=247)
    interval: Seconds = 10.0
    jitter: float = Field(default=0.1, ge=0, le=0.5, description="fraction of the interval")
    timeout: Seconds = 2.0
    retries: int = Field(default=0, ge=0, le=5, description="extra attempts within one poll")
    offline_after_failures: int = Field(
        default=3, ge=1, description="consecutive failed polls that open the breaker"
    )
    backoff_max: Seconds = Field(
        default=300.0, description="longest wait between retries of an offline device"
    )
    max_request: int = Field(default=125, ge=1, le=125, description="registers per read, at most")
    max_gap: int = Field(default=0, ge=0, le=124, description="unused registers one read bridges")
    pause: NonNegativeSeconds = Field(
        default=0.0, description="quiet time between requests on this host:port"
    )
    registers: list[RegisterSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> ModbusSource:
        _require_unique([r.name for r in self.registers], "register name")
        return self


Source = Annotated[MqttSource | ModbusSource, Field(discriminator="protocol")]


# --- maintenance plans ------------------------------------------------------------------

PeriodUnit = Literal["days", "weeks", "months", "years"]
Severity = Literal["critical", "major", "minor", "warning"]
Priority = Literal["low", "medium", "high", "urgent"]

_PERIOD = re.compile(r"^\s*(\d+)\s*(day|week|month|year)s?\s*$")
# average lengths, only to compare periods of different units (a lead against an interval)
_AVERAGE_DAYS = {"days": 1.0, "weeks": 7.0, "months": 30.436875, "years": 365.2425}

_Loc = tuple[str | int, ...]


def _located(title: str, issues: Iterable[tuple[_Loc, str]]) -> ValidationError:
    """A validation error whose issues sit on the fields they are about (pydantic would put
    a model validator's ValueError on the whole model), so the file's line is the field's."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(type=PydanticCustomError("plan", message), loc=loc, input=None)
            for loc, message in issues
        ],
    )


class Period(_Model):
    """A stretch of the site's calendar: a whole number of days, weeks, months or years.

    Written ``6 months`` (also ``1 month``, ``2 weeks``, ``180 days``, ``1 year``) or
    ``{count: 6, unit: months}``; written back as text."""

    count: int = Field(gt=0)
    unit: PeriodUnit

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        match = _PERIOD.match(value)
        if match is None:
            raise ValueError(
                f"{value!r} is not a period such as 180 days, 2 weeks, 6 months or 1 year"
            )
        if int(match.group(1)) == 0:
            raise ValueError(f"{value!r}: a period is at least 1 {match.group(2)}")
        return {"count": int(match.group(1)), "unit": match.group(2) + "s"}

    @model_serializer
    def _as_text(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return f"{self.count} {self.unit[:-1] if self.count == 1 else self.unit}"

    @property
    def average_days(self) -> float:
        return self.count * _AVERAGE_DAYS[self.unit]


class _PlanHeader(_Model):
    id: Identifier
    name: str = Field(min_length=1)
    type: str


class CalendarSchedule(_Model):
    """Due every ``every`` on the site's calendar, at the start of the due day (site time).

    ``fixed`` counts from the schedule's own dates, ``start + every``, ``start + 2 x every``...:
    a late service does not move them, and dates passed without any service fold into one
    occurrence. ``floating`` counts from the last completion. ``start`` is the date the
    schedule counts from (typically the last service before equipwatch); without it, the day
    the plan is first seen."""

    every: Period
    mode: Literal["fixed", "floating"] = "fixed"
    start: date | None = None
    lead: Period | None = Field(
        default=None, description="announced as upcoming this long before the due date"
    )
    grace: Period | None = Field(
        default=None,
        description="overdue this long after the due date; without it, from the next due date",
    )

    @model_validator(mode="after")
    def _lead_is_shorter(self) -> Self:
        if self.lead is not None and self.lead.average_days >= self.every.average_days:
            raise _located(
                type(self).__name__,
                [(("lead",), f"lead {self.lead} is not shorter than every {self.every}")],
            )
        return self


class MeterSchedule(_Model):
    """Due every ``every`` units a counter counts since the last completed service; a wrap or
    a reset of the counter is never negative use. ``first_due`` is the counter value at which
    the first service falls due (after the last service before equipwatch)."""

    metric: Identifier
    every: float = Field(gt=0)
    first_due: float | None = Field(
        default=None, ge=0, description="counter value at which the first service falls due"
    )
    lead: float | None = Field(
        default=None, gt=0, description="announced as upcoming this many units before due"
    )
    grace: float | None = Field(
        default=None,
        gt=0,
        description="overdue this many units past due; without it, from the next due point",
    )

    @model_validator(mode="after")
    def _lead_is_smaller(self) -> Self:
        if self.lead is not None and self.lead >= self.every:
            raise _located(
                type(self).__name__,
                [(("lead",), f"lead {self.lead:g} is not smaller than every {self.every:g}")],
            )
        return self


class CalendarPlan(CalendarSchedule, _PlanHeader):
    """Due every period on the site's calendar; see ``CalendarSchedule``."""

    type: Literal["calendar"]


class MeterPlan(MeterSchedule, _PlanHeader):
    """Due every so many units of a counter; see ``MeterSchedule``."""

    type: Literal["meter"]


class WhicheverFirstPlan(_PlanHeader):
    """Due when its calendar part or its meter part falls due, whichever comes first; one
    completion serves both."""

    type: Literal["whichever_first"]
    calendar: CalendarSchedule
    meter: MeterSchedule


class ConditionPlan(_PlanHeader):
    """A gauge beyond a threshold (``above`` or ``below``) for at least ``for``. It fires once,
    and fires again only after the value has come back past the threshold by ``hysteresis``."""

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    type: Literal["condition"]
    metric: Identifier
    above: float | None = None
    below: float | None = None
    duration: NonNegativeSeconds = Field(default=0.0, alias="for")
    hysteresis: float = Field(default=0.0, ge=0)
    severity: Severity = "major"

    @model_validator(mode="after")
    def _one_threshold(self) -> Self:
        if (self.above is None) == (self.below is None):
            raise ValueError("a condition needs exactly one of above or below")
        return self

    @property
    def threshold(self) -> float:
        if self.above is not None:
            return self.above
        assert self.below is not None  # exactly one is set, by _one_threshold
        return self.below


class FaultPlan(_PlanHeader):
    """A fault opens a corrective work order: one ``code``, any of ``codes``, or ``any``
    fault; with ``count``, only that many within ``within``."""

    type: Literal["fault"]
    code: str | None = Field(default=None, min_length=1)
    codes: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    any: bool = Field(default=False, description="every fault code counts")
    count: int = Field(default=1, ge=1)
    within: Seconds | None = None
    priority: Priority = "high"

    @model_validator(mode="after")
    def _what_counts(self) -> Self:
        chosen = [self.code is not None, self.codes is not None, self.any]
        if sum(chosen) != 1:
            raise ValueError("a fault plan needs exactly one of code, codes or any: true")
        if self.count > 1 and self.within is None:
            raise _located(
                type(self).__name__,
                [(("count",), f"count {self.count} needs within: the window they fall in")],
            )
        if self.count == 1 and self.within is not None:
            raise _located(
                type(self).__name__, [(("within",), "within applies only with a count above 1")]
            )
        return self

    @property
    def fault_codes(self) -> frozenset[str] | None:
        """The codes that count, or None when any code does."""
        if self.code is not None:
            return frozenset((self.code,))
        return frozenset(self.codes) if self.codes is not None else None


class SuppliesPlan(_PlanHeader):
    """A consumable's gauge (toner %, water level) below ``below`` raises one reorder notice;
    the next needs the gauge back at ``below + hysteresis`` or more (a refill) first."""

    type: Literal["supplies"]
    metric: Identifier
    below: float
    hysteresis: float = Field(default=0.0, ge=0)
    item: str = Field(min_length=1, description="what to reorder")


Plan = Annotated[
    CalendarPlan | MeterPlan | WhicheverFirstPlan | ConditionPlan | FaultPlan | SuppliesPlan,
    Field(discriminator="type"),
]
PLAN_TYPES = ("calendar", "meter", "whichever_first", "condition", "fault", "supplies")


def derived_plan_id(plan_id: str, device_id: str) -> str:
    """The id a kind's plan (``kind_plans``) takes on one device of that kind."""
    return f"{plan_id}.{device_id}"


def plan_problems(plan: Plan, device: Device) -> Iterator[tuple[_Loc, str]]:
    """What keeps ``plan`` from working on ``device``: (field within the plan, message)."""
    metrics = device.metrics

    def needs(metric: str, kind: MetricKind, loc: _Loc) -> Iterator[tuple[_Loc, str]]:
        if metrics.get(metric) is not kind:
            names = ", ".join(m for m, k in metrics.items() if k is kind) or "none"
            yield loc, f"{metric!r} is not a {kind} of device {device.id!r} ({kind}s: {names})"

    if isinstance(plan, MeterPlan):
        yield from needs(plan.metric, MetricKind.COUNTER, ("metric",))
    elif isinstance(plan, WhicheverFirstPlan):
        yield from needs(plan.meter.metric, MetricKind.COUNTER, ("meter", "metric"))
    elif isinstance(plan, ConditionPlan | SuppliesPlan):
        yield from needs(plan.metric, MetricKind.GAUGE, ("metric",))
    elif isinstance(plan, FaultPlan):
        if MetricKind.FAULT not in metrics.values():
            yield (), f"device {device.id!r} reports no faults (no field or register of kind fault)"
        elif isinstance(device.source, ModbusSource) and plan.fault_codes is not None:
            # a Modbus fault register raises the fault named by its upper-cased name
            raised = {n.upper() for n, k in metrics.items() if k is MetricKind.FAULT}
            unknown = sorted(plan.fault_codes - raised)
            if unknown:
                yield (
                    (("code",) if plan.code is not None else ("codes",)),
                    (
                        f"device {device.id!r} never raises {', '.join(map(repr, unknown))} "
                        f"(its fault registers raise: {', '.join(sorted(raised))})"
                    ),
                )


# --- devices and the site ---------------------------------------------------------------


class Device(_Model):
    id: Identifier
    kind: str
    manufacturer: str = ""
    model: str = ""
    serial: str = ""
    location: str = ""
    risk_class: Literal["low", "medium", "high"] = "medium"
    source: Source
    plans: list[Plan] = Field(default_factory=list)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in DEVICE_KINDS:
            raise ValueError(
                f"unknown device kind {kind!r}; known kinds: {', '.join(DEVICE_KINDS)}"
            )
        return kind

    @property
    def channels(self) -> dict[str, PayloadField | RegisterSpec]:
        """Every metric of the device and the spec that produces it."""
        if isinstance(self.source, MqttSource):
            return {f.metric_name: f for f in self.source.fields}
        return {r.name: r for r in self.source.registers}

    @property
    def metrics(self) -> dict[str, MetricKind]:
        return {name: spec.kind for name, spec in self.channels.items()}

    @property
    def units(self) -> dict[str, str | None]:
        return {name: spec.unit for name, spec in self.channels.items()}

    @property
    def offline_after(self) -> float:
        """Seconds without data after which the device counts as offline."""
        if isinstance(self.source, MqttSource):
            return OFFLINE_AFTER_INTERVALS * self.source.expected_interval
        return (self.source.offline_after_failures + 1) * self.source.interval + self.source.timeout

    @model_validator(mode="after")
    def _plans_fit_device(self) -> Device:
        issues = [
            (("plans", index, *loc), message)
            for index, plan in enumerate(self.plans)
            for loc, message in plan_problems(plan, self)
        ]
        if issues:
            raise _located("Device", issues)
        return self


class SiteInfo(_Model):
    name: str = "My practice"
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r}") from exc
        return name


class TlsSettings(_Model):
    ca_file: Path | None = Field(default=None, description="CA bundle the broker's cert chains to")
    cert_file: Path | None = Field(default=None, description="client certificate (PEM)")
    key_file: Path | None = Field(default=None, description="client private key (PEM)")

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        return self


_SEGMENT = re.compile(r"^\{([a-z_]+)\}$")
TEMPLATE_NAMES = ("site", "device_id", "channel", "any")


class TopicTemplate(_Model):
    """Topics with named segments, e.g. ``clinic/{site}/devices/{device_id}/telemetry``.

    ``{device_id}`` names the device; ``{channel}`` names the payload field of a plain
    (non-JSON) payload; ``{site}`` and ``{any}`` match any one level."""

    topic: str = Field(min_length=1)
    status: bool = Field(default=False, description="messages here are online/offline statuses")

    @field_validator("topic")
    @classmethod
    def _segments(cls, topic: str) -> str:
        names = []
        for level in topic.split("/"):
            if "+" in level or "#" in level:
                raise ValueError("use named segments such as {device_id}, not MQTT wildcards")
            if "{" in level or "}" in level:
                match = _SEGMENT.match(level)
                if match is None or match.group(1) not in TEMPLATE_NAMES:
                    raise ValueError(
                        f"segment {level!r}: a segment is a whole level, one of "
                        + ", ".join("{" + n + "}" for n in TEMPLATE_NAMES)
                    )
                names.append(match.group(1))
        if "device_id" not in names:
            raise ValueError("a topic template needs a {device_id} segment")
        if len(set(names) - {"any"}) != len([n for n in names if n != "any"]):
            raise ValueError("each named segment may appear once")
        return topic


class MqttSettings(_Model):
    url: str | None = Field(
        default=None,
        pattern=r"^mqtts?://[^:/]+(:\d+)?/?$",
        description="mqtt://host:port, or mqtts://host:port for TLS (port 8883 by default)",
    )
    client_id: Identifier = "equipwatch-collector"
    username: str | None = None
    password: str | None = Field(
        default=None, description="prefer password_env: a password here travels with the file"
    )
    password_env: str | None = Field(
        default=None, description="environment variable that holds the broker password"
    )
    tls: TlsSettings | None = None
    protocol: Annotated[Literal["auto", "5", "3.1.1"], BeforeValidator(str)] = Field(
        default="auto",
        description="MQTT version; auto uses 5 and falls back to 3.1.1 when the broker does not "
        "speak 5 (3.1.1 has no session expiry and no receive maximum)",
    )
    qos: Literal[0, 1, 2] = Field(
        default=1,
        description="subscription QoS. 1 with acknowledgement after the commit loses nothing "
        "across a crash; at 2, paho confirms receipt (PUBREC) before the collector sees the "
        "message, so a crash before the commit loses it",
    )
    session_expiry: NonNegativeSeconds = Field(
        default=86400.0,
        description="how long the broker keeps the session (and queued QoS 1 messages) while "
        "the collector is away; 0 starts clean every time",
    )
    receive_maximum: int = Field(
        default=10_000,
        ge=1,
        le=65535,
        description="QoS 1/2 messages the broker may send before the collector acknowledges. "
        "Acknowledgements wait for the store's commit, so this window bounds throughput",
    )
    shared_group: Identifier | None = Field(
        default=None, description="subscribe as $share/<group>/... so collectors split a stream"
    )
    backoff_max: Seconds = 30.0
    subscriptions: list[TopicTemplate] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if (self.password is not None or self.password_env is not None) and self.username is None:
            raise ValueError("a password needs a username")
        if self.password is not None and self.password_env is not None:
            raise ValueError("give password or password_env, not both")
        if self.tls is not None and self.url is not None and not self.url.startswith("mqtts://"):
            raise ValueError("tls settings need an mqtts:// url")
        return self


class PostgresSettings(_Model):
    """A PostgreSQL server for the readings (and, through SQLAlchemy, the records)."""

    dsn: str = Field(description="postgresql://user@host:port/database, without a password")
    password_env: str | None = Field(
        default=None, description="environment variable that holds the password, if any"
    )

    @field_validator("dsn")
    @classmethod
    def _is_postgres(cls, dsn: str) -> str:
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("dsn must start with postgresql://")
        if re.match(r"^postgres(?:ql)?://[^/@]*:[^/@]*@", dsn):
            raise ValueError("put the password in the variable named by password_env, not here")
        return dsn


class OutboxSettings(_Model):
    """The on-disk queue between the collectors and a store or sink that can be unreachable."""

    path: Path = Path("equipwatch-data/outbox.sqlite")
    max_records: int = Field(default=1_000_000, ge=1)
    max_age: Seconds = 7 * 86400.0


class RetentionSettings(_Model):
    """Days each resolution is kept; coarser data at least as long as finer."""

    raw_days: int = Field(default=90, gt=0)
    minute_days: int = Field(default=365, gt=0)
    hour_days: int = Field(default=730, gt=0)
    every: Seconds = 3600.0

    @model_validator(mode="after")
    def _coarser_lives_longer(self) -> RetentionSettings:
        if not self.raw_days <= self.minute_days <= self.hour_days:
            raise ValueError("retention needs raw_days <= minute_days <= hour_days")
        return self


class StoreSettings(_Model):
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    path: Path = Path("equipwatch-data/equipwatch.sqlite")
    postgresql: PostgresSettings | None = None
    batch_size: int = Field(default=500, ge=1)
    flush_interval: Seconds = 0.2
    outbox: OutboxSettings = OutboxSettings()
    retention: RetentionSettings = RetentionSettings()

    @model_validator(mode="after")
    def _backend_is_configured(self) -> StoreSettings:
        if self.backend == "postgresql" and self.postgresql is None:
            raise ValueError("backend postgresql needs a postgresql section with its dsn")
        return self


class InfluxSettings(_Model):
    """A server that speaks the InfluxDB v2 write API (InfluxDB 2/3, Cloud, VictoriaMetrics)."""

    url: str
    org: str = ""
    bucket: str
    token_env: str | None = Field(
        default=None, description="environment variable that holds the API token, if any"
    )
    batch_size: int = Field(default=5000, ge=1)
    flush_interval: NonNegativeSeconds = 1.0
    timeout: Seconds = 10.0

    @field_validator("url")
    @classmethod
    def _is_http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return url.rstrip("/")


class ApiSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)


class RulesSettings(_Model):
    tick: Seconds = 1.0
    takeover: Seconds = Field(
        default=10.0,
        description="a standby rules engine takes over at most this long after the leader's "
        "database session ends",
    )


class SimulationSettings(_Model):
    """Used only by the simulators: how fast simulated time runs and where devices start."""

    speed: float = Field(default=3600.0, gt=0)
    start: datetime | None = None
    seed: int = 1
    initial: dict[str, dict[str, float]] = Field(default_factory=dict)


class SiteConfig(_Model):
    site: SiteInfo = SiteInfo()
    mqtt: MqttSettings = MqttSettings()
    store: StoreSettings = StoreSettings()
    influx: InfluxSettings | None = None
    api: ApiSettings = ApiSettings()
    rules: RulesSettings = RulesSettings()
    simulation: SimulationSettings = SimulationSettings()
    notifications: NotificationSettings = NotificationSettings()
    devices: list[Device] = Field(min_length=1)
    kind_plans: dict[str, list[Plan]] = Field(
        default_factory=dict,
        description="plans every device of a kind gets, each as <plan id>.<device id>; a "
        "device's own plan with the same id replaces it for that device",
    )

    def device(self, device_id: str) -> Device | None:
        return next((d for d in self.devices if d.id == device_id), None)

    def device_plans(self, device: Device) -> list[Plan]:
        """Every plan that applies to ``device``: its own, then those of its kind it does not
        replace. A kind's plan, and a device's plan replacing one, carry the derived id
        ``<plan id>.<device id>``, so their state survives adding or removing a replacement."""
        kind_plans = self.kind_plans.get(device.kind, [])
        kind_ids = {plan.id for plan in kind_plans}
        own_ids = {plan.id for plan in device.plans}
        plans: list[Plan] = [
            plan.model_copy(update={"id": derived_plan_id(plan.id, device.id)})
            if plan.id in kind_ids
            else plan
            for plan in device.plans
        ]
        plans += [
            plan.model_copy(update={"id": derived_plan_id(plan.id, device.id)})
            for plan in kind_plans
            if plan.id not in own_ids
        ]
        return plans

    @model_validator(mode="after")
    def _kind_plans_fit_devices(self) -> SiteConfig:
        """Each kind's plan must work on every device of the kind that does not replace it;
        one issue per field, naming the first device it fails on."""
        issues: list[tuple[_Loc, str]] = []
        for kind, plans in self.kind_plans.items():
            if kind not in DEVICE_KINDS:
                known = ", ".join(DEVICE_KINDS)
                issues.append(
                    (("kind_plans", kind), f"unknown device kind {kind!r}; known: {known}")
                )
                continue
            devices = [d for d in self.devices if d.kind == kind]
            for index, plan in enumerate(plans):
                found: dict[_Loc, list[str]] = {}
                for device in devices:
                    if any(own.id == plan.id for own in device.plans):
                        continue
                    for loc, message in plan_problems(plan, device):
                        found.setdefault(loc, []).append(message)
                for loc, messages in found.items():
                    more = f" (and {len(messages) - 1} more device(s))" if len(messages) > 1 else ""
                    issues.append((("kind_plans", kind, index, *loc), messages[0] + more))
        if issues:
            raise _located("SiteConfig", issues)
        return self


def _require_unique(values: list[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}")
        seen.add(value)


# --- loading with locations -------------------------------------------------------------

_Path = tuple[str | int, ...]
_M = TypeVar("_M", bound=BaseModel)


def _marks(node: yaml.Node, path: _Path = ()) -> Iterator[tuple[_Path, tuple[int, int]]]:
    """(path, (line, column)) for every node; keys are located at the key itself."""
    yield path, (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            yield (*path, key), (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            for sub_path, mark in _marks(value_node, (*path, key)):
                if sub_path != (*path, key):
                    yield sub_path, mark
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _marks(item, (*path, index))


def _resolve(data: object, loc: tuple[str | int, ...], missing: bool) -> _Path:
    """Map a pydantic error location onto a path in the file, dropping the union tags and
    validator names pydantic inserts. A missing field is reported under its own name."""
    path: list[str | int] = []
    node: Any = data
    for part in loc:
        if isinstance(node, dict):
            found = part in node
        else:
            found = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if found:
            node = node[part]
            path.append(part)
    if missing and loc and isinstance(loc[-1], str) and (not path or path[-1] != loc[-1]):
        path.append(loc[-1])
    return tuple(path)


def _dotted(path: _Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(top level)"


def _issue(
    file: str, marks: dict[_Path, tuple[int, int]], path: _Path, message: str
) -> ConfigIssue:
    located = path
    while located and located not in marks:
        located = located[:-1]
    line, column = marks.get(located, (None, None))
    return ConfigIssue(file=file, line=line, column=column, field=_dotted(path), message=message)


def _cross_checks(data: dict[str, Any]) -> Iterator[tuple[_Path, str]]:
    """Checks that span devices; pydantic validates each device on its own."""
    device_ids: dict[str, int] = {}
    yield from _mqtt_cross_checks(data)
    for index, device in enumerate(data.get("devices") or []):
        if not isinstance(device, dict):
            continue
        device_id = device.get("id")
        if isinstance(device_id, str):
            if device_id in device_ids:
                first_device = device_ids[device_id]
                yield (
                    ("devices", index, "id"),
                    f"duplicate device id {device_id!r} (first at devices[{first_device}])",
                )
            else:
                device_ids[device_id] = index
    yield from _plan_id_checks(data)


def _ids_in(plans: object) -> Iterator[tuple[int, str]]:
    for index, plan in enumerate(plans if isinstance(plans, list) else []):
        plan_id = plan.get("id") if isinstance(plan, dict) else None
        if isinstance(plan_id, str):
            yield index, plan_id


def _plan_id_checks(data: dict[str, Any]) -> Iterator[tuple[_Path, str]]:
    """Every plan id on the site is unique, counting the ids a kind's plans take on each device
    (``<plan id>.<device id>``); a device's plan with the id of one of its kind's plans replaces
    that plan and takes its derived id."""
    kind_plans = data.get("kind_plans")
    by_kind: dict[str, dict[str, int]] = {}
    for kind, plans in kind_plans.items() if isinstance(kind_plans, dict) else ():
        ids = by_kind.setdefault(str(kind), {})
        for index, plan_id in _ids_in(plans):
            if plan_id in ids:
                yield (
                    ("kind_plans", kind, index, "id"),
                    f"duplicate plan id {plan_id!r} (first at kind_plans.{kind}[{ids[plan_id]}])",
                )
            else:
                ids[plan_id] = index
    first_at: dict[str, str] = {}  # effective plan id -> where it was first declared
    for index, device in enumerate(data.get("devices") or []):
        if not isinstance(device, dict):
            continue
        device_id, kind = device.get("id"), device.get("kind")
        kind_ids = by_kind.get(kind, {}) if isinstance(kind, str) else {}
        if not isinstance(device_id, str):
            kind_ids = {}
        own: set[str] = set()
        for plan_index, plan_id in _ids_in(device.get("plans")):
            own.add(plan_id)
            effective = plan_id
            if plan_id in kind_ids:
                effective = derived_plan_id(plan_id, str(device_id))
            if effective in first_at:
                yield (
                    ("devices", index, "plans", plan_index, "id"),
                    f"duplicate plan id {effective!r} (first at {first_at[effective]})",
                )
            else:
                first_at[effective] = f"devices[{index}].plans[{plan_index}]"
        for plan_id, kind_index in kind_ids.items():
            if plan_id in own:
                continue
            effective = derived_plan_id(plan_id, str(device_id))
            if effective in first_at:
                yield (
                    ("kind_plans", str(kind), kind_index, "id"),
                    f"plan id {effective!r}, which this plan takes on device {device_id!r}, is "
                    f"already used at {first_at[effective]}",
                )
            else:
                first_at[effective] = f"kind_plans.{kind}[{kind_index}] on device {device_id}"


def _mqtt_cross_checks(data: dict[str, Any]) -> Iterator[tuple[_Path, str]]:
    """An MQTT device's data must arrive somewhere: on its own ``topic`` or on a topic template
    (one that is not a status template), and no two devices may claim the same topic."""
    mqtt = data.get("mqtt")
    templates = mqtt.get("subscriptions") if isinstance(mqtt, dict) else None
    has_data_template = isinstance(templates, list) and any(
        isinstance(t, dict) and not t.get("status", False) for t in templates
    )
    topics: dict[str, int] = {}
    for index, device in enumerate(data.get("devices") or []):
        source = device.get("source") if isinstance(device, dict) else None
        if not isinstance(source, dict) or source.get("protocol") != "mqtt":
            continue
        for key in ("topic", "status_topic"):
            topic = source.get(key)
            if isinstance(topic, str):
                if topic in topics:
                    yield (
                        ("devices", index, "source", key),
                        f"topic {topic!r} is already used by devices[{topics[topic]}]",
                    )
                else:
                    topics[topic] = index
        if source.get("topic") is None and not has_data_template:
            yield (
                ("devices", index, "source"),
                "an MQTT device needs a topic, or a topic template in mqtt.subscriptions "
                "(with {device_id} and without status: true) that matches it",
            )


def parse_document(
    text: str,
    file: str,
    model: type[_M],
    *,
    checks: Callable[[dict[str, Any]], Iterable[tuple[_Path, str]]] | None = None,
    after: Callable[[_M], Iterable[tuple[_Path, str]]] | None = None,
) -> _M:
    """Validate a YAML document against ``model``; raise ConfigError listing every issue, each
    with the file, line and field. ``checks`` look at the raw data (issues pydantic cannot see
    across items); ``after`` looks at the validated model (issues that need other files)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        raise ConfigError(
            [ConfigIssue(file, line, column, "(syntax)", str(exc.problem or exc))]
        ) from exc
    if not isinstance(data, dict) or node is None:
        raise ConfigError(
            [ConfigIssue(file, 1, 1, "(top level)", "expected a mapping of settings")]
        )
    marks = dict(_marks(node))
    issues = [_issue(file, marks, path, message) for path, message in (checks or _none)(data)]
    try:
        document = model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            issues.append(
                _issue(
                    file, marks, _resolve(data, error["loc"], error["type"] == "missing"), message
                )
            )
    else:
        if after is not None:
            issues += [_issue(file, marks, path, message) for path, message in after(document)]
    if issues:
        issues.sort(key=lambda i: (i.line or 0, i.column or 0))
        raise ConfigError(issues)
    return document


def _none(data: dict[str, Any]) -> Iterable[tuple[_Path, str]]:
    return ()


def parse_config(text: str, file: str = "<config>") -> SiteConfig:
    """Validate a site configuration given as YAML text; raise ConfigError listing every issue."""
    return parse_document(text, file, SiteConfig, checks=_cross_checks)


def read_text(path: Path | str) -> str:
    """A configuration file's text, or a ConfigError naming the file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(str(path), None, None, "(file)", exc.strerror or str(exc))]
        ) from exc


def load_config(path: Path | str) -> SiteConfig:
    """Read and validate a site configuration file."""
    return parse_config(read_text(path), str(path))
