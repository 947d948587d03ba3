"""Notification settings: the SMTP server, webhooks, the MQTT alert topic, who receives what.

Part of the site file (the ``notifications:`` section). Secrets never live in the file: the SMTP
password and each webhook's signing secret are read from environment variables named here.
Checks that span fields (a recipient naming a webhook that is not defined, an email recipient
without an SMTP server) report the exact field, so the loader can give file, line and field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "EVENT_KINDS",
    "ROLES",
    "SEVERITIES",
    "EventKind",
    "MqttAlertSettings",
    "NotificationSettings",
    "RecipientChannels",
    "RecipientSettings",
    "Role",
    "RouteSettings",
    "Severity",
    "SmtpSettings",
    "WebhookSettings",
]

EventKind = Literal[
    "fault_alarm",
    "alarm_escalated",
    "maintenance_upcoming",
    "maintenance_due",
    "maintenance_overdue",
    "work_order_opened",
    "work_order_assigned",
    "supplies_reorder",
    "digest",
]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)

Severity = Literal["critical", "major", "minor", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = get_args(Severity)  # most severe first

Role = Literal["technician", "manager", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)

# core.config imports this module for SiteConfig, so its duration parser cannot be imported here
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def _duration(value: object) -> object:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration such as 10s, 5m, 2h or 1d")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


def _time_of_day(value: object) -> object:
    # YAML 1.1 reads an unquoted 07:00 as the base-60 number 420, which cannot be told apart
    # from a number meant as minutes or seconds
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            "quote the time of day, e.g. '07:00' (unquoted, YAML reads it as a number)"
        )
    return value


Seconds = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# one mailbox, nothing that could split a header or add a second address
EmailAddress = Annotated[str, Field(pattern=r"^[^@\s<>,;:\"()\[\]\\]+@[^@\s<>,;:\"()\[\]\\]+$")]

_TOPIC_FIELDS = ("site", "severity", "kind")
_TOPIC_FIELD = re.compile(r"\{([^{}]*)\}")


class _Model(BaseModel):
    # the same settings as core.config's models, which cannot be imported here without a cycle
    model_config = ConfigDict(extra="forbid", frozen=True)


def _invalid(title: str, problems: Sequence[tuple[tuple[str | int, ...], str]]) -> None:
    """Raise one validation error per problem, each at its own field, so that the loader
    reports the line of the offending field rather than of the whole section."""
    if problems:
        raise ValidationError.from_exception_data(
            title,
            [
                InitErrorDetails(
                    type=PydanticCustomError("notification_settings", message),
                    loc=loc,
                    input=None,
                )
                for loc, message in problems
            ],
        )


def _no_secret_in_file(data: Any, key: str, variable: str, title: str) -> Any:
    if isinstance(data, dict) and key in data:
        _invalid(
            title,
            [
                (
                    (key,),
                    f"never put the {key} in this file: name an environment variable in {variable}",
                )
            ],
        )
    return data


class SmtpSettings(_Model):
    """The mail server notices are sent through."""

    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls upgrades a plain connection (port 587); tls is implicit TLS "
        "(port 465); none sends in clear text, for a relay on the same machine only",
    )
    username: str | None = None
    password_env: EnvName | None = Field(
        default=None, description="environment variable that holds the SMTP password"
    )
    from_address: EmailAddress
    ca_file: Path | None = Field(default=None, description="CA bundle the server's cert chains to")
    timeout: Seconds = 30.0

    @model_validator(mode="before")
    @classmethod
    def _no_password(cls, data: Any) -> Any:
        return _no_secret_in_file(data, "password", "password_env", "SmtpSettings")

    @model_validator(mode="after")
    def _credentials(self) -> SmtpSettings:
        if (self.username is None) != (self.password_env is None):
            _invalid(
                "SmtpSettings",
                [
                    (
                        ("username",) if self.username is None else ("password_env",),
                        "username and password_env go together",
                    )
                ],
            )
        if self.security == "none" and self.username is not None:
            _invalid(
                "SmtpSettings",
                [(("security",), "a password is never sent in clear text: use starttls or tls")],
            )
        return self


class WebhookSettings(_Model):
    """An HTTP endpoint that receives each notice as signed JSON."""

    url: str
    secret_env: EnvName = Field(
        description="environment variable that holds the HMAC-SHA256 signing secret"
    )
    timeout: Seconds = 10.0
    attempts: int = Field(
        default=4, ge=1, le=10, description="tries per delivery round, with backoff between"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_secret(cls, data: Any) -> Any:
        return _no_secret_in_file(data, "secret", "secret_env", "WebhookSettings")

    @field_validator("url")
    @classmethod
    def _is_http(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError("url must start with http:// or https:// and name a host")
        return url


class MqttAlertSettings(_Model):
    """Where alerts are published on the site's MQTT broker (QoS 1, not retained)."""

    topic: str = Field(
        default="clinic/{site}/alerts/{severity}",
        description="topic template; {site}, {severity} and {kind} are filled in",
    )
    site: Identifier | None = Field(
        default=None,
        description="the value of {site}; by default the site name, lower case, dashes for spaces",
    )

    @field_validator("topic")
    @classmethod
    def _template(cls, topic: str) -> str:
        if "+" in topic or "#" in topic:
            raise ValueError("an alert topic names one topic; wildcards are not allowed")
        if not topic or topic.startswith("/") or topic.endswith("/") or "//" in topic:
            raise ValueError("an alert topic has no empty levels")
        for name in _TOPIC_FIELD.findall(topic):
            if name not in _TOPIC_FIELDS:
                raise ValueError(
                    f"unknown field {{{name}}}; known: "
                    + ", ".join("{" + n + "}" for n in _TOPIC_FIELDS)
                )
        if "{" in _TOPIC_FIELD.sub("", topic) or "}" in _TOPIC_FIELD.sub("", topic):
            raise ValueError("unbalanced { } in the topic")
        return topic


class RecipientChannels(_Model):
    email: EmailAddress | None = None
    webhook: Identifier | None = Field(default=None, description="the name of a webhook")
    mqtt: bool = Field(default=False, description="publish this recipient's notices as alerts")


class RecipientSettings(_Model):
    name: Identifier
    role: Role
    channels: RecipientChannels

    @model_validator(mode="after")
    def _reachable(self) -> RecipientSettings:
        channels = self.channels
        if channels.email is None and channels.webhook is None and not channels.mqtt:
            _invalid(
                "RecipientSettings",
                [(("channels",), "a recipient needs at least one of email, webhook, mqtt")],
            )
        return self


class RouteSettings(_Model):
    """What one role receives: event kinds (the role's defaults when left out) from a
    minimum severity up."""

    kinds: list[EventKind] | None = None
    min_severity: Severity = "info"


class NotificationSettings(_Model):
    smtp: SmtpSettings | None = None
    webhooks: dict[Identifier, WebhookSettings] = Field(default_factory=dict)
    mqtt: MqttAlertSettings = MqttAlertSettings()
    recipients: list[RecipientSettings] = Field(default_factory=list)
    routes: dict[Role, RouteSettings] = Field(
        default_factory=dict, description="per role, replaces that role's default route"
    )
    digest_at: Annotated[time, BeforeValidator(_time_of_day)] = Field(
        default=time(7, 0), description="site-local time of the manager's daily digest"
    )
    escalate_after: Seconds = Field(
        default=1800.0, description="a critical alarm unacknowledged this long is escalated"
    )
    retry_every: Seconds = Field(
        default=60.0, description="wait before the first retry of a failed notice; then doubling"
    )
    max_attempts: int = Field(default=8, ge=1, description="deliveries tried before giving up")
    give_up_after: Seconds = Field(
        default=86400.0, description="a notice still unsent this long after it was made is dropped"
    )

    @model_validator(mode="after")
    def _recipients_resolve(self) -> NotificationSettings:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        seen: dict[str, int] = {}
        for index, recipient in enumerate(self.recipients):
            if recipient.name in seen:
                problems.append(
                    (
                        ("recipients", index, "name"),
                        f"duplicate recipient {recipient.name!r} (first at recipients"
                        f"[{seen[recipient.name]}])",
                    )
                )
            seen.setdefault(recipient.name, index)
            channels = recipient.channels
            if channels.webhook is not None and channels.webhook not in self.webhooks:
                known = ", ".join(self.webhooks) or "none defined"
                problems.append(
                    (
                        ("recipients", index, "channels", "webhook"),
                        f"no webhook named {channels.webhook!r} in notifications.webhooks "
                        f"({known})",
                    )
                )
            if channels.email is not None and self.smtp is None:
                problems.append(
                    (
                        ("recipients", index, "channels", "email"),
                        "an email recipient needs an smtp section in notifications",
                    )
                )
        _invalid("NotificationSettings", problems)
        return self
