"""Alerts published on the site's MQTT broker: the webhook's JSON, QoS 1, not retained (an
alert is news when it happens, not a state a late subscriber should be told).

One short connection per alert: alerts are rare, and a connection that is not kept cannot go
stale between them. A publish returns once the broker has acknowledged it (PUBACK).
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

import aiomqtt

from core.aio import raise_if_cancelling
from core.clock import Clock, SystemClock
from core.config import TlsSettings
from rules.notify.errors import DeliveryError
from rules.notify.events import Event
from rules.notify.payload import notice_json
from rules.notify.routing import Delivery

__all__ = ["MqttChannel"]

QOS = 1
_CLIENT_PREFIX = "equipwatch-notify-"
# CONNACK return codes that no retry can fix: bad user name or password, not authorised
_REFUSED_FOR_GOOD = {4, 5, 134, 135}


class MqttChannel:
    def __init__(
        self,
        url: str,
        *,
        site_name: str,
        username: str | None = None,
        password: str | None = None,
        tls: TlsSettings | None = None,
        timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"{url!r} is not an mqtt://host:port or mqtts://host:port URL")
        secure = parts.scheme == "mqtts"
        self._host = parts.hostname
        self._port = parts.port or (8883 if secure else 1883)
        self._tls = None
        if secure:
            files = tls or TlsSettings()
            self._tls = aiomqtt.TLSParameters(
                ca_certs=str(files.ca_file) if files.ca_file else None,
                certfile=str(files.cert_file) if files.cert_file else None,
                keyfile=str(files.key_file) if files.key_file else None,
            )
        self._username = username
        self._password = password
        self._timeout = timeout
        self._site = site_name
        self._clock = clock or SystemClock()

    async def aclose(self) -> None:
        """Nothing is held between alerts."""

    async def send(self, event: Event, delivery: Delivery) -> None:
        payload = notice_json(event, site=self._site, sent_at=self._clock.now())
        where = f"MQTT {self._host}:{self._port}"
        client = aiomqtt.Client(
            self._host,
            self._port,
            # a fresh identity each time: two alerts sent at once must not take over each
            # other's session
            identifier=_CLIENT_PREFIX + secrets.token_hex(6),
            username=self._username,
            password=self._password,
            tls_params=self._tls,
            timeout=self._timeout,
        )
        try:
            async with client:
                raise_if_cancelling()  # aiomqtt's connect can swallow a cancellation
                await client.publish(
                    delivery.address, payload, qos=QOS, retain=False, timeout=self._timeout
                )
                raise_if_cancelling()
        except aiomqtt.MqttCodeError as exc:
            code = exc.rc if isinstance(exc.rc, int) else getattr(exc.rc, "value", None)
            raise DeliveryError(f"{where}: {exc}", retryable=code not in _REFUSED_FOR_GOOD) from exc
        except (aiomqtt.MqttError, OSError) as exc:
            raise DeliveryError(f"{where}: {exc}", retryable=True) from exc
