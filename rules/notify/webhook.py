"""Webhooks: each notice POSTed as JSON, signed so the receiver can trust it.

Headers of every request:

    X-Equipwatch-Timestamp: 1795510800                 Unix seconds when this attempt was made
    X-Equipwatch-Event: maintenance_due                the event kind
    X-Equipwatch-Signature: sha256=<hex>

The signature is HMAC-SHA256, keyed with the webhook's secret, of the bytes
``<timestamp>.<event kind>.<body>``. A receiver recomputes it over the exact body it received,
compares in constant time, and refuses a timestamp more than a few minutes from its own clock,
so a captured request cannot be replayed later. The body's ``key`` identifies the event: a
receiver that may see a retried delivery twice uses it to ignore the repeat.

Server errors (5xx), 408, 429, timeouts and connection failures are retried with capped,
jittered exponential backoff; a ``Retry-After`` on 429 or 503 is honoured when it is no longer
than ``retry_after_max`` (a longer wait is left to the dispatcher's later retry). Other 4xx mean
the request itself is wrong and are not retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from core.clock import Clock, SystemClock
from core.notify_config import WebhookSettings
from rules.notify.errors import DeliveryError, MissingSecret
from rules.notify.events import Event
from rules.notify.payload import notice_json
from rules.notify.routing import Delivery

__all__ = [
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookChannel",
    "WebhookEndpoint",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-Equipwatch-Signature"
TIMESTAMP_HEADER = "X-Equipwatch-Timestamp"
EVENT_HEADER = "X-Equipwatch-Event"
USER_AGENT = "equipwatch-webhook/1"
_ERROR_BODY_CHARS = 200


def sign(secret: bytes, timestamp: int, event: str, body: bytes) -> str:
    """The signature header's value for one request."""
    material = f"{timestamp}.{event}.".encode() + body
    return "sha256=" + hmac.new(secret, material, hashlib.sha256).hexdigest()


def verify(
    secret: bytes,
    *,
    timestamp: str,
    event: str,
    body: bytes,
    signature: str,
    now: float,
    tolerance: float = 300.0,
) -> bool:
    """A receiver's check: the signature matches and the timestamp is within ``tolerance``
    seconds of ``now`` (Unix seconds)."""
    try:
        moment = int(timestamp)
    except ValueError:
        return False
    if abs(now - moment) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, moment, event, body), signature)


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    url: str
    secret: bytes
    timeout: float = 10.0
    attempts: int = 4


Sleep = Callable[[float], Awaitable[None]]


class WebhookChannel:
    """Every webhook of the site, by name, over one connection pool. ``clock`` gives the
    signed timestamp, which receivers compare with their own clocks: keep it the real time."""

    def __init__(
        self,
        endpoints: Mapping[str, WebhookEndpoint],
        *,
        site_name: str,
        clock: Clock | None = None,
        backoff: float = 0.5,
        backoff_max: float = 8.0,
        retry_after_max: float = 60.0,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._endpoints = dict(endpoints)
        self._site = site_name
        self._clock = clock or SystemClock()
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._retry_after_max = retry_after_max
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._client = httpx.AsyncClient(headers={"User-Agent": USER_AGENT}, follow_redirects=False)

    @classmethod
    def from_settings(
        cls,
        webhooks: Mapping[str, WebhookSettings],
        *,
        site_name: str,
        environ: Mapping[str, str] = os.environ,
    ) -> WebhookChannel:
        endpoints = {}
        for name, hook in webhooks.items():
            secret = environ.get(hook.secret_env)
            if not secret:
                raise MissingSecret(hook.secret_env, f"notifications.webhooks.{name}")
            endpoints[name] = WebhookEndpoint(
                hook.url, secret.encode(), timeout=hook.timeout, attempts=hook.attempts
            )
        return cls(endpoints, site_name=site_name)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, event: Event, delivery: Delivery) -> None:
        endpoint = self._endpoints.get(delivery.address)
        if endpoint is None:
            raise DeliveryError(f"no webhook named {delivery.address!r}", retryable=False)
        where = f"webhook {delivery.address}"
        for attempt in range(1, endpoint.attempts + 1):
            failure, wait = await self._attempt(endpoint, event, where, attempt)
            if failure is None:
                return
            if wait is None or attempt == endpoint.attempts:
                raise failure
            await self._sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _attempt(
        self, endpoint: WebhookEndpoint, event: Event, where: str, attempt: int
    ) -> tuple[DeliveryError | None, float | None]:
        """(None, None) when delivered; otherwise the failure and how long to wait before the
        next attempt, or None for a failure that no retry in this round can fix."""
        sent_at = self._clock.now()
        timestamp = int(sent_at.timestamp())
        body = notice_json(event, site=self._site, sent_at=sent_at)
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            EVENT_HEADER: event.kind,
            SIGNATURE_HEADER: sign(endpoint.secret, timestamp, event.kind, body),
        }
        try:
            response = await self._client.post(
                endpoint.url, content=body, headers=headers, timeout=endpoint.timeout
            )
        except httpx.TimeoutException as exc:
            late = DeliveryError(f"{where}: no answer within {endpoint.timeout:g}s", retryable=True)
            return _caused_by(late, exc), self._backoff_delay(attempt)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise DeliveryError(
                f"{where}: bad url {endpoint.url!r}: {exc}", retryable=False
            ) from exc
        except httpx.TransportError as exc:
            lost = DeliveryError(f"{where}: {type(exc).__name__}: {exc}", retryable=True)
            return _caused_by(lost, exc), self._backoff_delay(attempt)
        status = response.status_code
        if 200 <= status < 300:
            return None, None
        text = response.text[:_ERROR_BODY_CHARS].strip()
        described = f"{where} answered {status} {response.reason_phrase}" + (
            f": {text}" if text else ""
        )
        if status in (429, 503) and "Retry-After" in response.headers:
            wait = self._retry_after(response.headers["Retry-After"], sent_at)
            if wait is not None and wait > self._retry_after_max:
                return DeliveryError(
                    f"{described} (asked to wait {wait:g}s, longer than this round waits)",
                    retryable=True,
                ), None
            if wait is not None:
                return DeliveryError(described, retryable=True), wait
        if status >= 500 or status in (408, 429):
            return DeliveryError(described, retryable=True), self._backoff_delay(attempt)
        return DeliveryError(described, retryable=False), None

    def _backoff_delay(self, attempt: int) -> float:
        """Doubles with each attempt up to the cap; the jitter (half to all of it) keeps
        senders that failed together from coming back in step."""
        ceiling = min(self._backoff_max, self._backoff * 2 ** (attempt - 1))
        return self._rng.uniform(ceiling / 2, ceiling)

    def _retry_after(self, value: str, now: datetime) -> float | None:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:  # "-0000": a date in UTC whose source zone is unknown
            moment = moment.replace(tzinfo=UTC)
        return max((moment - now).total_seconds(), 0.0)


def _caused_by(error: DeliveryError, cause: BaseException) -> DeliveryError:
    error.__cause__ = cause
    return error
