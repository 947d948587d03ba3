"""The site configuration: devices, where their data comes from, and their maintenance plans.

Loaded from one YAML file into pydantic models. Every problem is reported with the file, the
line and the dotted field path, so that a technician can fix the file without reading code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
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
    model_validator,
)

from core.errors import ConfigError, ConfigIssue
from core.notify_config import NotificationSettings
from core.records import MetricKind
from core.registers import DataType, Order, register_count

__all__ = [
    "DEVICE_KINDS",
    "CalendarPlan",
    "Device",
    "InfluxSettings",
    "ModbusSource",
    "MqttSettings",
    "MqttSource",
    "OutboxSettings",
    "PayloadField",
    "Plan",
    "PostgresSettings",
    "RegisterSpec",
    "ReportPolicy",
    "RetentionSettings",
    "SiteConfig",
    "StoreSettings",
    "TlsSettings",
    "TopicTemplate",
    "UsagePlan",
    "load_config",
    "parse_config",
    "parse_document",
    "parse_duration",
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


class UsagePlan(_Model):
    """Due every ``every`` units of a counter since the last completed service."""

    id: Identifier
    name: str
    type: Literal["usage"]
    metric: Identifier
    every: float = Field(gt=0)
    first_due: float | None = Field(
        default=None, ge=0, description="counter value at which the first service falls due"
    )


class CalendarPlan(_Model):
    """Due every ``every_days`` days from ``start`` (or from the day the plan is first seen)."""

    id: Identifier
    name: str
    type: Literal["calendar"]
    every_days: int = Field(gt=0)
    start: date | None = None


Plan = Annotated[UsagePlan | CalendarPlan, Field(discriminator="type")]


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
    def _plans_use_counters(self) -> Device:
        metrics = self.metrics
        for plan in self.plans:
            if isinstance(plan, UsagePlan) and metrics.get(plan.metric) is not MetricKind.COUNTER:
                counters = [m for m, k in metrics.items() if k is MetricKind.COUNTER]
                raise ValueError(
                    f"plan {plan.id!r} counts {plan.metric!r}, which is not a counter of this "
                    f"device (counters: {', '.join(counters) or 'none'})"
                )
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
    password: str | None = None
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
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
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

    def device(self, device_id: str) -> Device | None:
        return next((d for d in self.devices if d.id == device_id), None)


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
    plan_ids: dict[str, tuple[int, int]] = {}
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
        for plan_index, plan in enumerate(device.get("plans") or []):
            plan_id = plan.get("id") if isinstance(plan, dict) else None
            if isinstance(plan_id, str):
                if plan_id in plan_ids:
                    where = "devices[{}].plans[{}]".format(*plan_ids[plan_id])
                    yield (
                        ("devices", index, "plans", plan_index, "id"),
                        f"duplicate plan id {plan_id!r} (first at {where})",
                    )
                else:
                    plan_ids[plan_id] = (index, plan_index)


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
