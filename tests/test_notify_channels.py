"""The channels against real servers: an SMTP server (aiosmtpd) that keeps what arrives, an
HTTP server (uvicorn) that checks signatures as a receiver would and answers as told, and
Mosquitto. Delays between webhook retries are recorded instead of waited."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import hmac
import json
import ssl
import time as wall
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from core.clock import ManualClock
from core.config import parse_config
from core.db.migrate import upgrade
from core.db.records import RecordStore
from core.net import free_port
from core.notify_config import SmtpSettings
from rules.notify.channels import build_channels
from rules.notify.digest import AlarmRow, DigestData, MaintenanceRow, digest_event
from rules.notify.dispatcher import Dispatcher
from rules.notify.errors import DeliveryError, MissingSecret
from rules.notify.events import Event, alarm_raised_key
from rules.notify.mqtt import MqttChannel
from rules.notify.routing import Delivery, Router
from rules.notify.smtp import EmailChannel
from rules.notify.webhook import WebhookChannel, WebhookEndpoint, sign, verify
from tests.support import wait_for
from tests.test_mqtt_tls import make_certificates
from tests.test_notify import MemoryLog

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
SECRET = b"webhook-secret-for-tests"
TIMEOUT = 10.0


def alarm_event(key: str = alarm_raised_key(41)) -> Event:
    return Event(
        key=key,
        kind="fault_alarm",
        severity="critical",
        device_id="fridge-1",
        subject="Critical: fridge-1 (Treatment room) reports EXCURSION: 9.4 °C",
        body="The vaccine refrigerator fridge-1 is at 9.4 °C, outside 2-8 °C, since 06:05.",
        data={"fault": "EXCURSION", "temperature_c": 9.4, "limits_c": [2, 8]},
    )


def the_digest() -> Event:
    return digest_event(
        DigestData(
            site="Riverside & Co <Practice>",
            local_date=NOW.date(),
            timezone="Europe/London",
            overdue=[
                MaintenanceRow("autoclave-1", "Sterilisation room", "Autoclave service", NOW.date())
            ],
            open_alarms=[AlarmRow("ups-1", "Server cupboard", "ON_BATTERY", "major", NOW)],
        )
    )


# --- SMTP -----------------------------------------------------------------------------------


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps every message, and refuses the addresses in ``refuse``
    with the reply given there."""

    refuse: dict[str, str] = field(default_factory=dict)
    received: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


@contextlib.contextmanager
def smtp_server(inbox: Inbox, *, port: int | None = None, **parameters: Any) -> Iterator[int]:
    port = port or free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **parameters)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def smtp_settings(port: int, **changes: Any) -> SmtpSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from_address": "equipwatch@clinic.example",
        "timeout": 5,
    }
    return SmtpSettings.model_validate(values | changes)


async def test_email_arrives_with_subject_recipient_and_both_parts() -> None:
    inbox = Inbox()
    digest = the_digest()
    assert digest.html is not None
    with smtp_server(inbox) as port:
        channel = EmailChannel(smtp_settings(port), clock=ManualClock(NOW))
        await channel.send(digest, Delivery("mia", "email", "mia@clinic.example"))
    [(sender, recipients, message)] = inbox.received
    assert sender == "equipwatch@clinic.example"
    assert recipients == ["mia@clinic.example"]
    assert message["Subject"] == digest.subject
    assert message["To"] == "mia@clinic.example"
    assert message["From"] == "equipwatch <equipwatch@clinic.example>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Equipwatch-Event"] == digest.key
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",))
    page = message.get_body(("html",))
    assert plain is not None
    assert page is not None
    assert isinstance(plain, EmailMessage)
    assert isinstance(page, EmailMessage)
    # SMTP carries lines ending in CRLF
    assert plain.get_content().replace("\r\n", "\n") == digest.body
    assert page.get_content().replace("\r\n", "\n") == digest.html
    assert "Riverside &amp; Co &lt;Practice&gt;" in page.get_content()


async def test_a_plain_event_is_a_plain_text_mail_with_a_stable_message_id() -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        channel = EmailChannel(smtp_settings(port), clock=ManualClock(NOW))
        delivery = Delivery("tom", "email", "tom@clinic.example")
        await channel.send(alarm_event(), delivery)
        await channel.send(alarm_event(), delivery)  # as after a crash before mark_sent
        await channel.send(alarm_event(), Delivery("ann", "email", "ann@clinic.example"))
    first, again, other = (message for _, _, message in inbox.received)
    assert first.get_content_type() == "text/plain"
    assert first.get_content() == alarm_event().body + "\r\n"
    assert "°C" in first["Subject"]
    assert first["Message-ID"] == again["Message-ID"]
    assert first["Message-ID"] != other["Message-ID"]


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    make_certificates(directory)
    return directory


async def test_email_over_starttls_with_the_password_from_the_environment(
    certificates: Path,
) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(certificates / "server.pem", certificates / "server.key")
    inbox = Inbox()

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        good = (data.login, data.password) == (b"equipwatch", b"correct horse")
        if good:
            inbox.logins.append(data.login.decode())
        # handled=False: aiosmtpd answers (235 or 535) itself
        return AuthResult(success=good, handled=False)

    settings = {
        "security": "starttls",
        "username": "equipwatch",
        "password_env": "EQUIPWATCH_TEST_SMTP_PASSWORD",
        "ca_file": certificates / "ca.pem",
    }
    with smtp_server(
        inbox,
        tls_context=server_tls,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticate,
    ) as port:
        channel = EmailChannel.from_settings(
            smtp_settings(port, **settings),
            environ={"EQUIPWATCH_TEST_SMTP_PASSWORD": "correct horse"},
        )
        await channel.send(alarm_event(), Delivery("tom", "email", "tom@clinic.example"))
        assert inbox.logins == ["equipwatch"]
        assert len(inbox.received) == 1

        wrong = EmailChannel.from_settings(
            smtp_settings(port, **settings), environ={"EQUIPWATCH_TEST_SMTP_PASSWORD": "nope"}
        )
        with pytest.raises(DeliveryError) as caught:
            await wrong.send(alarm_event(), Delivery("tom", "email", "tom@clinic.example"))
        assert caught.value.retryable is False
        assert "535" in caught.value.reason

    with pytest.raises(MissingSecret, match="EQUIPWATCH_TEST_SMTP_PASSWORD is not set"):
        EmailChannel.from_settings(smtp_settings(port, **settings), environ={})


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [("550 5.1.1 no such mailbox", False), ("451 4.3.0 mailbox busy, try later", True)],
)
async def test_a_refused_recipient_is_a_delivery_error(reply: str, retryable: bool) -> None:
    inbox = Inbox(refuse={"gone@clinic.example": reply})
    with smtp_server(inbox) as port:
        channel = EmailChannel(smtp_settings(port))
        with pytest.raises(DeliveryError) as caught:
            await channel.send(alarm_event(), Delivery("gone", "email", "gone@clinic.example"))
    assert caught.value.retryable is retryable
    assert reply.split(maxsplit=1)[0] in caught.value.reason
    assert "gone@clinic.example" in caught.value.reason
    assert inbox.received == []


async def test_no_smtp_server_is_a_retryable_delivery_error() -> None:
    channel = EmailChannel(smtp_settings(free_port()))
    with pytest.raises(DeliveryError) as caught:
        await channel.send(alarm_event(), Delivery("tom", "email", "tom@clinic.example"))
    assert caught.value.retryable is True
    assert "SMTP 127.0.0.1" in caught.value.reason


# --- webhooks -------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    signature_ok: bool


@dataclass
class Receiver:
    """A webhook receiver: verifies each request's signature the way the README tells (with
    its own code, not the sender's), then answers with the next scripted (status, headers);
    "hang" holds the request until ``release`` is set."""

    secret: bytes
    answers: list[tuple[int | str, dict[str, str]]] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def check(self, headers: dict[str, str], body: bytes) -> bool:
        timestamp = headers.get("x-equipwatch-timestamp", "")
        event = headers.get("x-equipwatch-event", "")
        signed = f"{timestamp}.{event}.".encode() + body
        expected = "sha256=" + hmac.new(self.secret, signed, hashlib.sha256).hexdigest()
        fresh = timestamp.isdigit() and abs(wall.time() - int(timestamp)) <= 300
        return fresh and hmac.compare_digest(expected, headers.get("x-equipwatch-signature", ""))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        ok = self.check(headers, body)
        self.requests.append(Received(headers, body, ok))
        status, extra = self.answers.pop(0) if self.answers else (200, {})
        if status == "hang":
            await self.release.wait()
            status = 200
        if not ok:
            status, extra = 401, {}
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in extra.items()],
            }
        )
        await send({"type": "http.response.body", "body": f"answer {status}".encode()})


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # the test process keeps its own signal handling
        yield


@contextlib.asynccontextmanager
async def http_server(app: Receiver) -> AsyncIterator[str]:
    port = free_port()
    server = _Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve(), name=f"webhook-receiver[{port}]")

    async def started() -> bool:
        if task.done():
            task.result()
        return server.started

    try:
        await wait_for(started, timeout=TIMEOUT, what="the webhook receiver to listen")
        yield f"http://127.0.0.1:{port}/hooks/equipwatch"
    finally:
        app.release.set()
        server.should_exit = True
        await task


@dataclass
class Pauses:
    """Stands in for asyncio.sleep between retries: keeps the delays asked for."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def webhook(
    url: str, pauses: Pauses, *, secret: bytes = SECRET, attempts: int = 4, timeout: float = 5
) -> WebhookChannel:
    return WebhookChannel(
        {"cmms": WebhookEndpoint(url, secret, timeout=timeout, attempts=attempts)},
        site_name="Riverside",
        backoff=0.5,
        backoff_max=4.0,
        retry_after_max=30.0,
        sleep=pauses,
    )


CMMS = Delivery("cmms", "webhook", "cmms")


async def test_a_webhook_is_signed_and_the_receiver_verifies_it() -> None:
    receiver = Receiver(SECRET)
    async with http_server(receiver) as url:
        channel = webhook(url, Pauses())
        try:
            await channel.send(alarm_event(), CMMS)
        finally:
            await channel.aclose()
    [request] = receiver.requests
    assert request.signature_ok
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-equipwatch-event"] == "fault_alarm"
    assert request.headers["x-equipwatch-signature"].startswith("sha256=")
    document = json.loads(request.body)
    assert document == {
        "key": "alarm:41:raised",
        "kind": "fault_alarm",
        "severity": "critical",
        "site": "Riverside",
        "device_id": "fridge-1",
        "subject": alarm_event().subject,
        "body": alarm_event().body,
        "data": {"fault": "EXCURSION", "temperature_c": 9.4, "limits_c": [2, 8]},
        "sent_at": document["sent_at"],
    }
    assert abs(datetime.fromisoformat(document["sent_at"]).timestamp() - wall.time()) < 60


async def test_a_receiver_with_another_secret_refuses_and_it_is_not_retried() -> None:
    receiver = Receiver(b"the receiver's own secret")
    pauses = Pauses()
    async with http_server(receiver) as url:
        channel = webhook(url, pauses)
        try:
            with pytest.raises(DeliveryError) as caught:
                await channel.send(alarm_event(), CMMS)
        finally:
            await channel.aclose()
    assert [r.signature_ok for r in receiver.requests] == [False]
    assert caught.value.retryable is False
    assert "401" in caught.value.reason
    assert pauses.delays == []


def test_verify_refuses_a_changed_body_a_changed_kind_and_an_old_timestamp() -> None:
    body = b'{"key":"alarm:41:raised"}'
    now = 1_795_510_800
    signature = sign(SECRET, now, "fault_alarm", body)

    def check(secret: bytes, event: str, sent: bytes, at: float) -> bool:
        return verify(
            secret, timestamp=str(now), event=event, body=sent, signature=signature, now=at
        )

    assert check(SECRET, "fault_alarm", body, now + 10)
    assert not check(SECRET, "fault_alarm", body + b" ", now)
    assert not check(SECRET, "digest", body, now)
    assert not check(SECRET, "fault_alarm", body, now + 301)
    assert not check(b"other", "fault_alarm", body, now)


def dispatcher_for(channel: WebhookChannel, log: MemoryLog) -> Dispatcher:
    text = (
        "site: {name: Riverside, timezone: Europe/London}\n"
        "devices:\n"
        "  - {id: fridge-1, kind: vaccine_fridge, source: {protocol: mqtt, topic: t/fridge-1,\n"
        "     fields: [{field: temperature_c}]}}\n"
        "notifications:\n"
        "  webhooks: {cmms: {url: 'http://127.0.0.1:1/', secret_env: CMMS_SECRET}}\n"
        "  recipients: [{name: tom, role: technician, channels: {webhook: cmms}}]\n"
    )
    site = parse_config(text, "site.yaml")
    router = Router(site.notifications, site_name=site.site.name)
    return Dispatcher(router, {"webhook": channel}, log, ManualClock(NOW), max_attempts=3)


async def test_a_webhook_answering_503_twice_is_retried_and_delivered_once() -> None:
    receiver = Receiver(SECRET, answers=[(503, {}), (503, {})])
    pauses, log = Pauses(), MemoryLog()
    async with http_server(receiver) as url:
        channel = webhook(url, pauses)
        async with dispatcher_for(channel, log) as dispatcher:
            outcomes = await dispatcher.notify(alarm_event())
            again = await dispatcher.notify(alarm_event())
    assert [(o.recipient, o.status) for o in outcomes] == [("cmms", "sent")]
    assert [o.status for o in again] == ["duplicate"]
    assert len(receiver.requests) == 3
    assert all(r.signature_ok for r in receiver.requests)
    assert {json.loads(r.body)["key"] for r in receiver.requests} == {"alarm:41:raised"}
    # capped exponential backoff with jitter: half to all of 0.5 s, then of 1 s
    assert len(pauses.delays) == 2
    assert 0.25 <= pauses.delays[0] <= 0.5
    assert 0.5 <= pauses.delays[1] <= 1.0
    assert log.status("alarm:41:raised", "cmms", "webhook") == "sent"


async def test_a_webhook_answering_400_is_not_retried_and_the_failure_is_recorded() -> None:
    receiver = Receiver(SECRET, answers=[(400, {})])
    pauses, log = Pauses(), MemoryLog()
    async with http_server(receiver) as url:
        channel = webhook(url, pauses)
        async with dispatcher_for(channel, log) as dispatcher:
            [outcome] = await dispatcher.notify(alarm_event())
            assert await dispatcher.retry_unsent() == []
    assert outcome.status == "gave_up"
    assert len(receiver.requests) == 1
    assert pauses.delays == []
    row = log.rows[("alarm:41:raised", "cmms", "webhook")]
    assert row.status == "failed"
    assert (
        row.error == "gave up after 1 attempt(s): webhook cmms answered 400 Bad Request: answer 400"
    )


async def test_a_webhook_honours_retry_after_in_seconds_and_as_a_date() -> None:
    in_20_seconds = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    receiver = Receiver(
        SECRET, answers=[(429, {"Retry-After": "7"}), (503, {"Retry-After": in_20_seconds})]
    )
    pauses = Pauses()
    async with http_server(receiver) as url:
        channel = webhook(url, pauses)
        try:
            await channel.send(alarm_event(), CMMS)
        finally:
            await channel.aclose()
    assert pauses.delays[0] == 7.0
    assert 15 < pauses.delays[1] <= 20  # the date has whole seconds; the request took a moment
    assert len(receiver.requests) == 3


async def test_a_retry_after_longer_than_a_round_waits_is_left_for_later() -> None:
    receiver = Receiver(SECRET, answers=[(503, {"Retry-After": "3600"})])
    pauses = Pauses()
    async with http_server(receiver) as url:
        channel = webhook(url, pauses)
        try:
            with pytest.raises(DeliveryError) as caught:
                await channel.send(alarm_event(), CMMS)
        finally:
            await channel.aclose()
    assert caught.value.retryable is True
    assert "asked to wait 3600s" in caught.value.reason
    assert pauses.delays == []
    assert len(receiver.requests) == 1


async def test_a_webhook_that_does_not_answer_in_time_is_retried() -> None:
    receiver = Receiver(SECRET, answers=[("hang", {})])
    pauses = Pauses()
    async with http_server(receiver) as url:
        channel = webhook(url, pauses, timeout=0.5)
        try:
            await channel.send(alarm_event(), CMMS)
        finally:
            receiver.release.set()
            await channel.aclose()
    assert len(receiver.requests) == 2
    assert len(pauses.delays) == 1


async def test_an_unreachable_webhook_is_a_retryable_failure_after_its_attempts() -> None:
    pauses = Pauses()
    channel = webhook(f"http://127.0.0.1:{free_port()}/hook", pauses, attempts=3)
    try:
        with pytest.raises(DeliveryError) as caught:
            await channel.send(alarm_event(), CMMS)
    finally:
        await channel.aclose()
    assert caught.value.retryable is True
    assert "ConnectError" in caught.value.reason
    assert len(pauses.delays) == 2


def test_a_webhook_secret_comes_from_the_environment() -> None:
    text = (
        "site: {name: Riverside}\n"
        "devices:\n"
        "  - {id: fridge-1, kind: vaccine_fridge, source: {protocol: mqtt, topic: t/fridge-1,\n"
        "     fields: [{field: temperature_c}]}}\n"
        "notifications:\n"
        "  webhooks: {cmms: {url: 'http://127.0.0.1:1/', secret_env: CMMS_TEST_SECRET}}\n"
        "  recipients: [{name: tom, role: technician, channels: {webhook: cmms}}]\n"
    )
    settings = parse_config(text, "site.yaml").notifications
    with pytest.raises(MissingSecret, match=r"CMMS_TEST_SECRET is not set \(notifications"):
        build_channels(settings, site_name="Riverside", environ={})
    channels = build_channels(settings, site_name="Riverside", environ={"CMMS_TEST_SECRET": "s"})
    assert set(channels) == {"webhook"}


# --- MQTT -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def subscriber(url: str, topic: str) -> AsyncIterator[aiomqtt.Client]:
    host, port = url.removeprefix("mqtt://").split(":")
    async with aiomqtt.Client(host, int(port), identifier=None) as client:
        await client.subscribe(topic, qos=1)
        yield client


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(TIMEOUT):
        return await anext(aiter(client.messages))


async def test_an_alert_is_published_on_the_topic(mqtt_url: str, topic_prefix: str) -> None:
    async with subscriber(mqtt_url, f"{topic_prefix}/alerts/#") as client:
        channel = MqttChannel(mqtt_url, site_name="Riverside", clock=ManualClock(NOW))
        topic = f"{topic_prefix}/alerts/critical"
        await channel.send(alarm_event(), Delivery(topic, "mqtt", topic))
        message = await next_message(client)
    assert message.topic.value == topic
    assert message.qos == 1
    assert message.retain is False
    assert isinstance(message.payload, bytes)
    document = json.loads(message.payload)
    assert document["key"] == "alarm:41:raised"
    assert document["severity"] == "critical"
    assert document["data"] == {"fault": "EXCURSION", "temperature_c": 9.4, "limits_c": [2, 8]}
    assert document["sent_at"] == NOW.isoformat()


async def test_an_alert_through_the_dispatcher_is_published_once(
    mqtt_url: str, topic_prefix: str
) -> None:
    text = (
        "site: {name: Riverside Family Practice, timezone: Europe/London}\n"
        f"mqtt: {{url: '{mqtt_url}'}}\n"
        "devices:\n"
        "  - {id: fridge-1, kind: vaccine_fridge, source: {protocol: mqtt, topic: t/fridge-1,\n"
        "     fields: [{field: temperature_c}]}}\n"
        "notifications:\n"
        f"  mqtt: {{topic: '{topic_prefix}/{{site}}/alerts/{{severity}}'}}\n"
        "  recipients:\n"
        "    - {name: tom, role: technician, channels: {mqtt: true}}\n"
        "    - {name: ops, role: admin, channels: {mqtt: true}}\n"
    )
    site = parse_config(text, "site.yaml")
    channels = build_channels(site.notifications, site_name=site.site.name, mqtt=site.mqtt)
    router = Router(site.notifications, site_name=site.site.name)
    expected_topic = f"{topic_prefix}/riverside-family-practice/alerts/critical"
    async with (
        subscriber(mqtt_url, f"{topic_prefix}/#") as client,
        Dispatcher(router, channels, MemoryLog(), ManualClock(NOW)) as dispatcher,
    ):
        outcomes = await dispatcher.notify(alarm_event())
        assert [(o.recipient, o.status) for o in outcomes] == [(expected_topic, "sent")]
        await dispatcher.notify(alarm_event())  # the same event again: nothing new
        first = await next_message(client)
        await client.publish(f"{topic_prefix}/marker", b"after", qos=1)
        following = await next_message(client)
    assert first.topic.value == expected_topic
    # the two recipients share the topic, and the repeat was refused: the next message on the
    # broker is the marker published after them
    assert following.topic.value == f"{topic_prefix}/marker"


async def test_no_broker_is_a_retryable_delivery_error() -> None:
    channel = MqttChannel(f"mqtt://127.0.0.1:{free_port()}", site_name="Riverside", timeout=2)
    with pytest.raises(DeliveryError) as caught:
        await channel.send(alarm_event(), Delivery("a/b", "mqtt", "a/b"))
    assert caught.value.retryable is True
    assert "MQTT 127.0.0.1" in caught.value.reason


# --- the whole path on the records database -------------------------------------------------


async def test_a_digest_mailed_once_across_restarts_on_the_records_database(
    tmp_path: Path,
) -> None:
    """SMTP down at first: the failure is recorded; after a restart the digest is retried and
    arrives; a further restart and the same digest again send nothing."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'records.sqlite'}"
    await upgrade(url)
    inbox = Inbox()
    port = free_port()
    text = (
        "site: {name: Riverside, timezone: Europe/London}\n"
        "devices:\n"
        "  - {id: fridge-1, kind: vaccine_fridge, source: {protocol: mqtt, topic: t/fridge-1,\n"
        "     fields: [{field: temperature_c}]}}\n"
        "notifications:\n"
        f"  smtp: {{host: 127.0.0.1, port: {port}, security: none,\n"
        "         from_address: equipwatch@clinic.example, timeout: 5s}\n"
        "  recipients: [{name: mia, role: manager, channels: {email: mia@clinic.example}}]\n"
    )
    site = parse_config(text, "site.yaml")
    clock = ManualClock(NOW)

    def dispatcher(records: RecordStore) -> Dispatcher:
        channels = build_channels(site.notifications, site_name="Riverside", environ={})
        router = Router(site.notifications, site_name="Riverside")
        return Dispatcher.from_settings(site.notifications, router, channels, records, clock)

    digest = the_digest()
    async with RecordStore.open(url) as records, dispatcher(records) as first:
        [outcome] = await first.notify(digest)  # nothing listens on the SMTP port yet
    assert outcome.status == "failed"
    assert "SMTP 127.0.0.1" in (outcome.error or "")

    with smtp_server(inbox, port=port):
        async with RecordStore.open(url) as records, dispatcher(records) as second:
            assert [o.status for o in await second.notify(digest)] == ["duplicate"]
            [retried] = await second.retry_unsent()
            assert retried.status == "sent"
            assert await records.unsent() == []
        async with RecordStore.open(url) as records, dispatcher(records) as third:
            assert [o.status for o in await third.notify(digest)] == ["duplicate"]
            assert await third.retry_unsent() == []
    [(_, recipients, message)] = inbox.received
    assert recipients == ["mia@clinic.example"]
    assert message["Subject"] == digest.subject
