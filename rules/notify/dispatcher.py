"""From an event to notices sent once: route, claim in the log, send, record the outcome.

The notification log is what makes a notice happen once: a notice is sent only by whoever
claims its (event key, recipient, channel) first, so re-evaluating a rule, restarting, or
catching up after downtime sends nothing twice. The one window left is a crash between a
successful send and ``mark_sent``: that notice is sent again after the restart (at least once,
never silently lost). Mail clients fold the copy by its Message-ID; webhook and MQTT receivers
can by the event key.

A failure never reaches the caller (the rules engine): it is logged, recorded with
``mark_failed`` and, when it may pass, retried by ``retry_unsent`` with a growing delay, up to
``max_attempts`` deliveries and for at most ``give_up_after``. Retries made by this process
send the full event; after a restart only the logged notice is known, so a retried digest goes
as plain text and webhook/MQTT ``data`` is empty.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Literal, NamedTuple

from core.clock import Clock
from core.notices import NoticeRecord, NotificationLog
from core.notify_config import EVENT_KINDS, SEVERITIES, EventKind, NotificationSettings, Severity
from rules.notify.channels import Channel
from rules.notify.errors import DeliveryError, InvalidEvent
from rules.notify.events import Event
from rules.notify.routing import ChannelName, Delivery, Router

__all__ = ["DispatchStats", "Dispatcher", "Outcome"]

log = logging.getLogger(__name__)

UNSENT_WINDOW = 1000  # the most unsent notices read at once (the records store's page limit)

Status = Literal["sent", "failed", "gave_up", "duplicate", "log_error"]


class Outcome(NamedTuple):
    """What became of one notice: sent; failed (to be retried); gave_up (failed for good, or
    its recipient is no longer configured); duplicate (claimed before: sent, or being sent);
    log_error (the log could not be read or written)."""

    recipient: str
    channel: str
    status: Status
    error: str | None = None


@dataclass(slots=True)
class DispatchStats:
    sent: int = 0
    failed: int = 0
    gave_up: int = 0
    duplicates: int = 0
    log_errors: int = 0

    def count(self, status: Status) -> None:
        if status == "sent":
            self.sent += 1
        elif status == "failed":
            self.failed += 1
        elif status == "gave_up":
            self.gave_up += 1
        elif status == "duplicate":
            self.duplicates += 1
        elif status == "log_error":
            self.log_errors += 1


NoticeId = tuple[str, str, str]  # event key, recipient, channel: the log's identity of a notice


@dataclass(slots=True)
class _Retry:
    event: Event
    attempts: int
    next_at: datetime


class Dispatcher:
    def __init__(
        self,
        router: Router,
        channels: Mapping[ChannelName, Channel],
        log: NotificationLog,
        clock: Clock,
        *,
        max_attempts: int = 8,
        retry_every: float = 60.0,
        retry_max: float = 3600.0,
        give_up_after: float = 86400.0,
        retry_concurrency: int = 4,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._router = router
        self._channels = dict(channels)
        self._log = log
        self._clock = clock
        self._max_attempts = max_attempts
        self._retry_every = retry_every
        self._retry_max = retry_max
        self._give_up_after = timedelta(seconds=give_up_after)
        self._retries: dict[NoticeId, _Retry] = {}
        self._in_flight: set[NoticeId] = set()
        self._given_up: set[NoticeId] = set()
        # after an outage, many notices wait; a server that just came back should not get
        # them all at once
        self._retry_slots = asyncio.Semaphore(retry_concurrency)
        self.stats = DispatchStats()

    @classmethod
    def from_settings(
        cls,
        settings: NotificationSettings,
        router: Router,
        channels: Mapping[ChannelName, Channel],
        log: NotificationLog,
        clock: Clock,
    ) -> Dispatcher:
        return cls(
            router,
            channels,
            log,
            clock,
            max_attempts=settings.max_attempts,
            retry_every=settings.retry_every,
            give_up_after=settings.give_up_after,
        )

    async def __aenter__(self) -> Dispatcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for name, channel in self._channels.items():
            try:
                await channel.aclose()
            except Exception:
                log.exception("notify: closing the %s channel failed", name)

    async def notify(self, event: Event) -> list[Outcome]:
        """Send the event's notices that were not sent before; never raises (but a
        cancellation)."""
        deliveries = self._router.route(event)
        outcomes = await asyncio.gather(*(self._first(event, d) for d in deliveries))
        return list(outcomes)

    async def retry_unsent(self, limit: int = 100) -> list[Outcome]:
        """Try again the logged notices still unsent whose retry is due; never raises."""
        now = self._clock.now()
        try:
            # notices given up on stay unsent in the log; ask past them, within what one read of
            # the log allows
            records = await self._log.unsent(min(limit + len(self._given_up), UNSENT_WINDOW))
        except Exception:
            log.exception("notify: reading unsent notices failed")
            self.stats.log_errors += 1
            return []
        outcomes: list[Outcome] = []
        due: list[tuple[Delivery, _Retry]] = []
        for record in records:
            notice = (record.event_key, record.recipient, record.channel)
            if notice in self._in_flight or notice in self._given_up:
                continue
            retry = self._retries.get(notice)
            if retry is not None and retry.next_at > now:
                continue
            delivery = self._router.resolve(record.recipient, record.channel)
            if delivery is None:
                error = f"{record.channel} recipient {record.recipient!r} is no longer configured"
                outcomes.append(await self._give_up(notice, error))
                continue
            if now - record.created_at > self._give_up_after:
                hours = self._give_up_after.total_seconds() / 3600
                error = f"still unsent {hours:g} h after it was made"
                outcomes.append(await self._give_up(notice, error))
                continue
            if retry is None:
                try:
                    event = _event_of(record)
                except InvalidEvent as exc:
                    outcomes.append(await self._give_up(notice, str(exc)))
                    continue
                retry = _Retry(event, attempts=0, next_at=now)
            due.append((delivery, retry))
            if len(due) >= limit:
                break
        outcomes += await asyncio.gather(*(self._again(d, r) for d, r in due))
        return outcomes

    async def run(self, every: float | None = None) -> None:
        """Retry unsent notices on a timer until cancelled."""
        while True:
            await self.retry_unsent()
            await asyncio.sleep(every or self._retry_every)

    async def _first(self, event: Event, delivery: Delivery) -> Outcome:
        notice = (event.key, delivery.recipient, delivery.channel)
        record = NoticeRecord(
            event_key=event.key,
            recipient=delivery.recipient,
            channel=delivery.channel,
            kind=event.kind,
            severity=event.severity,
            device_id=event.device_id,
            subject=event.subject,
            body=event.body,
            created_at=self._clock.now(),
        )
        # in flight from before the claim: a retry pass reading the log meanwhile must not
        # take the fresh pending row for one left over from a crash
        self._in_flight.add(notice)
        try:
            claimed = await self._log.claim(record)
        except Exception as exc:
            self._in_flight.discard(notice)
            log.exception("notify: claiming %s for %s failed", event.key, delivery.recipient)
            return self._counted(Outcome(*notice[1:], "log_error", str(exc)))
        if not claimed:
            self._in_flight.discard(notice)
            return self._counted(Outcome(*notice[1:], "duplicate"))
        return await self._deliver(notice, delivery, _Retry(event, 0, record.created_at))

    async def _again(self, delivery: Delivery, retry: _Retry) -> Outcome:
        notice = (retry.event.key, delivery.recipient, delivery.channel)
        self._in_flight.add(notice)
        async with self._retry_slots:
            return await self._deliver(notice, delivery, retry)

    async def _deliver(self, notice: NoticeId, delivery: Delivery, retry: _Retry) -> Outcome:
        """Send once and record the outcome; ``notice`` is in flight until this returns."""
        try:
            retry.attempts += 1
            error = await self._send(retry.event, delivery)
            now = self._clock.now()
            if error is None:
                self._retries.pop(notice, None)
                return await self._record(
                    Outcome(*notice[1:], "sent"), self._log.mark_sent(*notice, now)
                )
            if not error.retryable or retry.attempts >= self._max_attempts:
                self._retries.pop(notice, None)
                self._given_up.add(notice)
                reason = f"gave up after {retry.attempts} attempt(s): {error.reason}"
                log.warning("notify: %s to %s: %s", notice[0], delivery.recipient, reason)
                return await self._record(
                    Outcome(*notice[1:], "gave_up", reason),
                    self._log.mark_failed(*notice, now, reason),
                )
            delay = min(self._retry_every * 2 ** (retry.attempts - 1), self._retry_max)
            retry.next_at = now + timedelta(seconds=delay)
            self._retries[notice] = retry
            log.warning(
                "notify: %s to %s failed (attempt %d, next in %gs): %s",
                notice[0],
                delivery.recipient,
                retry.attempts,
                delay,
                error.reason,
            )
            return await self._record(
                Outcome(*notice[1:], "failed", error.reason),
                self._log.mark_failed(*notice, now, error.reason),
            )
        finally:
            self._in_flight.discard(notice)

    async def _send(self, event: Event, delivery: Delivery) -> DeliveryError | None:
        channel = self._channels.get(delivery.channel)
        if channel is None:
            return DeliveryError(f"no {delivery.channel} channel is set up", retryable=False)
        try:
            await channel.send(event, delivery)
        except DeliveryError as exc:
            return exc
        except Exception as exc:
            # a defect in a channel must not cost the other notices, nor the rules engine
            log.exception("notify: the %s channel failed unexpectedly", delivery.channel)
            return DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True)
        return None

    async def _give_up(self, notice: NoticeId, reason: str) -> Outcome:
        self._given_up.add(notice)
        self._retries.pop(notice, None)
        reason = f"gave up: {reason}"
        log.warning("notify: %s to %s: %s", notice[0], notice[1], reason)
        return await self._record(
            Outcome(*notice[1:], "gave_up", reason),
            self._log.mark_failed(*notice, self._clock.now(), reason),
        )

    async def _record(self, outcome: Outcome, write: Awaitable[None]) -> Outcome:
        """Count the outcome once its row is written; a failed write is logged and counted,
        and the outcome stands (a sent notice was sent even if the log missed it)."""
        try:
            await write
        except Exception:
            log.exception("notify: recording %s to %s failed", outcome.status, outcome.recipient)
            self.stats.log_errors += 1
        return self._counted(outcome)

    def _counted(self, outcome: Outcome) -> Outcome:
        self.stats.count(outcome.status)
        return outcome


_KINDS: dict[str, EventKind] = {kind: kind for kind in EVENT_KINDS}
_SEVERITIES: dict[str, Severity] = {severity: severity for severity in SEVERITIES}


def _event_of(record: NoticeRecord) -> Event:
    """The event a logged notice came from, as far as the log keeps it."""
    kind = _KINDS.get(record.kind)
    severity = _SEVERITIES.get(record.severity)
    if kind is None or severity is None:
        raise InvalidEvent(f"logged notice has kind {record.kind!r}, severity {record.severity!r}")
    return Event(
        key=record.event_key,
        kind=kind,
        severity=severity,
        device_id=record.device_id,
        subject=record.subject,
        body=record.body,
    )
