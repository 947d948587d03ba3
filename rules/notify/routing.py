"""Who hears about an event, and on which channel.

Each role receives a set of event kinds from a minimum severity up; the defaults follow the
practice's jobs (a technician works faults and work orders; the manager tracks maintenance,
supplies and the digest; an admin sees everything) and a site may replace any role's route.

A person's mailbox receives its own copy. A webhook or the MQTT alert topic is one
destination however many recipients name it, so a machine receiver gets each event once; the
notification log records such a notice under the webhook's name or the topic.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from core.notify_config import (
    EVENT_KINDS,
    EventKind,
    NotificationSettings,
    RecipientSettings,
    Role,
    Severity,
)
from rules.notify.events import Event, severity_at_least

__all__ = [
    "DEFAULT_ROUTES",
    "ChannelName",
    "Delivery",
    "RoleRoute",
    "Router",
    "alert_topic",
    "site_segment",
]

ChannelName = Literal["email", "webhook", "mqtt"]


@dataclass(frozen=True, slots=True)
class RoleRoute:
    kinds: frozenset[EventKind]
    min_severity: Severity = "info"

    def admits(self, event: Event) -> bool:
        return event.kind in self.kinds and severity_at_least(event.severity, self.min_severity)


DEFAULT_ROUTES: Mapping[Role, RoleRoute] = {
    "technician": RoleRoute(
        frozenset({"fault_alarm", "alarm_escalated", "work_order_opened", "work_order_assigned"})
    ),
    "manager": RoleRoute(
        frozenset(
            {
                "maintenance_upcoming",
                "maintenance_due",
                "maintenance_overdue",
                "supplies_reorder",
                "digest",
                "alarm_escalated",
            }
        )
    ),
    "admin": RoleRoute(frozenset(EVENT_KINDS)),
}


class Delivery(NamedTuple):
    """One notice to send: ``recipient`` and ``channel`` are what the notification log keys
    on (with the event key); ``address`` is where it goes (a mail address, a webhook's name,
    an MQTT topic)."""

    recipient: str
    channel: ChannelName
    address: str


def site_segment(configured: str | None, site_name: str) -> str:
    """The ``{site}`` of an alert topic: as configured, or the site name in lower case with
    dashes for anything that is not a letter or digit."""
    if configured is not None:
        return configured
    return re.sub(r"[^a-z0-9]+", "-", site_name.lower()).strip("-") or "site"


def alert_topic(template: str, site: str, event: Event) -> str:
    return (
        template.replace("{site}", site)
        .replace("{severity}", event.severity)
        .replace("{kind}", event.kind)
    )


class Router:
    """Routes from the site's notification settings. ``site_name`` fills ``{site}`` of the
    alert topic unless the settings name it."""

    def __init__(self, settings: NotificationSettings, *, site_name: str) -> None:
        self._settings = settings
        self._site = site_segment(settings.mqtt.site, site_name)
        self._routes: dict[Role, RoleRoute] = dict(DEFAULT_ROUTES)
        for role, override in settings.routes.items():
            kinds = DEFAULT_ROUTES[role].kinds if override.kinds is None else override.kinds
            self._routes[role] = RoleRoute(frozenset(kinds), override.min_severity)
        self._by_name = {r.name: r for r in settings.recipients}

    def route_of(self, role: Role) -> RoleRoute:
        return self._routes[role]

    def route(self, event: Event) -> list[Delivery]:
        """Every notice the event gives, in the order recipients are configured, each once."""
        deliveries: dict[tuple[str, str], Delivery] = {}
        for recipient in self._settings.recipients:
            if event.recipients and recipient.name not in event.recipients:
                continue
            if not self._routes[recipient.role].admits(event):
                continue
            for delivery in self._deliveries(recipient, event):
                deliveries.setdefault((delivery.recipient, delivery.channel), delivery)
        return list(deliveries.values())

    def resolve(self, recipient: str, channel: str) -> Delivery | None:
        """The delivery a logged notice stands for under the current settings, or None when
        its recipient or channel is no longer configured (e.g. after an edit and a restart)."""
        if channel == "email":
            person = self._by_name.get(recipient)
            if person is None or person.channels.email is None:
                return None
            return Delivery(recipient, "email", person.channels.email)
        if channel == "webhook":
            if recipient not in self._settings.webhooks:
                return None
            return Delivery(recipient, "webhook", recipient)
        if channel == "mqtt" and any(r.channels.mqtt for r in self._settings.recipients):
            return Delivery(recipient, "mqtt", recipient)
        return None

    def _deliveries(self, recipient: RecipientSettings, event: Event) -> list[Delivery]:
        channels = recipient.channels
        found: list[Delivery] = []
        if channels.email is not None:
            found.append(Delivery(recipient.name, "email", channels.email))
        if channels.webhook is not None:
            found.append(Delivery(channels.webhook, "webhook", channels.webhook))
        if channels.mqtt:
            topic = alert_topic(self._settings.mqtt.topic, self._site, event)
            found.append(Delivery(topic, "mqtt", topic))
        return found
