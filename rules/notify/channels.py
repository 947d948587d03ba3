"""The channel contract, and building the channels a site's settings ask for.

A channel sends one notice or raises ``DeliveryError``; it never returns a failure for the
caller to remember to check.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

from core.config import MqttSettings
from core.notify_config import NotificationSettings
from rules.notify.errors import NotifyError
from rules.notify.events import Event
from rules.notify.mqtt import MqttChannel
from rules.notify.routing import ChannelName, Delivery
from rules.notify.smtp import EmailChannel
from rules.notify.webhook import WebhookChannel

__all__ = ["Channel", "build_channels"]


class Channel(Protocol):
    async def send(self, event: Event, delivery: Delivery) -> None:
        """Deliver one notice, or raise DeliveryError saying why and whether to try again."""
        ...

    async def aclose(self) -> None:
        """Release connections; the channel is not used afterwards."""
        ...


def build_channels(
    settings: NotificationSettings,
    *,
    site_name: str,
    mqtt: MqttSettings | None = None,
    mqtt_url: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> dict[ChannelName, Channel]:
    """The channels the recipients use. The SMTP password and webhook secrets are read from
    ``environ`` now, so a missing variable stops start-up (MissingSecret) rather than the first
    notice. ``mqtt_url`` overrides ``mqtt.url`` (e.g. the demo's embedded broker).

    The channels stamp notices with the real time even when the rules run on simulated time:
    a webhook receiver checks the signed timestamp against its own clock."""
    used = {
        channel
        for recipient in settings.recipients
        for channel, wanted in (
            ("email", recipient.channels.email is not None),
            ("webhook", recipient.channels.webhook is not None),
            ("mqtt", recipient.channels.mqtt),
        )
        if wanted
    }
    channels: dict[ChannelName, Channel] = {}
    if "email" in used and settings.smtp is not None:
        channels["email"] = EmailChannel.from_settings(settings.smtp, environ=environ)
    if "webhook" in used:
        channels["webhook"] = WebhookChannel.from_settings(
            settings.webhooks, site_name=site_name, environ=environ
        )
    if "mqtt" in used:
        broker = mqtt or MqttSettings()
        url = mqtt_url or broker.url
        if url is None:
            raise NotifyError("recipients want MQTT alerts but no broker URL is configured")
        channels["mqtt"] = MqttChannel(
            url,
            site_name=site_name,
            username=broker.username,
            password=broker.password,
            tls=broker.tls,
        )
    return channels
