"""Notifications without the network: the settings and their errors, routing by role and
severity, the digest, the digest's timing across daylight-saving changes, and the dispatcher's
once-only sending (across a restart too), retries and give-ups, on an in-memory log."""

from __future__ import annotations

import asyncio
import html.parser
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from core.clock import ManualClock
from core.config import parse_config
from core.errors import ConfigError
from core.notices import NoticeRecord
from core.notify_config import EVENT_KINDS, ROLES, EventKind, NotificationSettings, Severity
from rules.notify.digest import (
    AlarmRow,
    DigestData,
    MaintenanceRow,
    SupplyRow,
    digest_event,
    next_digest_time,
    render_digest,
)
from rules.notify.dispatcher import Dispatcher
from rules.notify.errors import DeliveryError, InvalidEvent
from rules.notify.events import Event, due_key
from rules.notify.routing import DEFAULT_ROUTES, ChannelName, Delivery, Router

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)

# --- an in-memory notification log, as the records database will keep it ------------------


@dataclass
class LogRow:
    record: NoticeRecord
    status: str = "pending"
    error: str | None = None
    sent_at: datetime | None = None
    failures: int = 0


class MemoryLog:
    """The NotificationLog contract over a dict: a claim succeeds once per (event key,
    recipient, channel)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], LogRow] = {}

    async def claim(self, notice: NoticeRecord) -> bool:
        key = (notice.event_key, notice.recipient, notice.channel)
        if key in self.rows:
            return False
        self.rows[key] = LogRow(notice)
        return True

    async def mark_sent(self, event_key: str, recipient: str, channel: str, at: datetime) -> None:
        row = self.rows[(event_key, recipient, channel)]
        row.status, row.sent_at, row.error = "sent", at, None

    async def mark_failed(
        self, event_key: str, recipient: str, channel: str, at: datetime, error: str
    ) -> None:
        row = self.rows[(event_key, recipient, channel)]
        row.status, row.error = "failed", error
        row.failures += 1

    async def unsent(self, limit: int = 100) -> list[NoticeRecord]:
        waiting = [row.record for row in self.rows.values() if row.status != "sent"]
        return sorted(waiting, key=lambda r: r.created_at)[:limit]

    def status(self, event_key: str, recipient: str, channel: str) -> str:
        return self.rows[(event_key, recipient, channel)].status


class BrokenLog(MemoryLog):
    async def claim(self, notice: NoticeRecord) -> bool:
        raise ConnectionError("database is down")


class RecordingChannel:
    """Keeps what it was asked to send; fails while ``failures`` has entries (one per call)."""

    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.sent: list[tuple[Event, Delivery]] = []
        self.calls = 0
        self.failures = list(failures or [])

    async def send(self, event: Event, delivery: Delivery) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((event, delivery))

    async def aclose(self) -> None:
        pass


# --- settings -------------------------------------------------------------------------------

SITE = """\
site: {name: Riverside Family Practice, timezone: Europe/London}
devices:
  - id: autoclave-1
    kind: autoclave
    source:
      protocol: mqtt
      topic: clinic/autoclave-1
      fields:
        - {field: cycles_total, kind: counter, width: 32}
"""

NOTIFICATIONS = """\
notifications:
  smtp:
    host: mail.clinic.example
    port: 587
    security: starttls
    username: equipwatch
    password_env: EQUIPWATCH_SMTP_PASSWORD
    from_address: equipwatch@clinic.example
  webhooks:
    cmms: {url: "https://cmms.clinic.example/hooks/equipwatch", secret_env: CMMS_SECRET}
  mqtt: {topic: "clinic/{site}/alerts/{severity}", site: riverside}
  recipients:
    - {name: tom, role: technician, channels: {email: tom@clinic.example}}
    - {name: mia, role: manager, channels: {email: mia@clinic.example, webhook: cmms}}
    - {name: ops, role: admin, channels: {webhook: cmms, mqtt: true}}
  routes:
    technician: {min_severity: minor}
  digest_at: "07:30"
"""
# lines of the combined file: 10 notifications, 22 tom, 23 mia, 24 ops, 26 technician route


def settings(text: str = NOTIFICATIONS) -> NotificationSettings:
    return parse_config(SITE + text, "site.yaml").notifications


def config_issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(SITE + text, "site.yaml")
    return [str(issue) for issue in caught.value.issues]


def test_notification_settings_load() -> None:
    loaded = settings()
    assert loaded.smtp is not None
    assert loaded.smtp.password_env == "EQUIPWATCH_SMTP_PASSWORD"
    assert loaded.webhooks["cmms"].secret_env == "CMMS_SECRET"
    assert [r.name for r in loaded.recipients] == ["tom", "mia", "ops"]
    assert loaded.digest_at == time(7, 30)
    assert loaded.routes["technician"].min_severity == "minor"


def test_a_site_without_notifications_gets_the_defaults() -> None:
    loaded = parse_config(SITE, "site.yaml").notifications
    assert loaded.recipients == []
    assert loaded.digest_at == time(7, 0)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            "webhook: cmms}}\n    - {name: ops",
            "webhook: crm}}\n    - {name: ops",
            "site.yaml:23:",
            id="unknown-webhook",
        ),
        pytest.param(
            "{name: tom, role: technician",
            "{name: tom, role: janitor",
            "site.yaml:22:",
            id="unknown-role",
        ),
        pytest.param(
            "technician: {min_severity: minor}",
            "technician: {kinds: [fault_alarm, coffee_low]}",
            "site.yaml:26:",
            id="unknown-kind",
        ),
        pytest.param(
            "{name: ops, role: admin",
            "{name: tom, role: admin",
            "site.yaml:24:",
            id="duplicate-recipient",
        ),
    ],
)
def test_a_bad_recipient_or_route_is_reported_at_its_line(
    old: str, new: str, expected: str
) -> None:
    assert old in NOTIFICATIONS
    issues = config_issues(NOTIFICATIONS.replace(old, new))
    assert len(issues) == 1, issues
    assert issues[0].startswith(expected), issues


def test_unknown_webhook_names_the_field_and_the_known_webhooks() -> None:
    issues = config_issues(NOTIFICATIONS.replace("webhook: cmms}}\n", "webhook: crm}}\n"))
    assert issues == [
        "site.yaml:23:72: notifications.recipients[1].channels.webhook: no webhook named 'crm' "
        "in notifications.webhooks (cmms)"
    ]


def test_an_email_recipient_needs_an_smtp_server() -> None:
    text = """\
notifications:
  recipients:
    - {name: mia, role: manager, channels: {email: mia@clinic.example}}
"""
    issues = config_issues(text)
    assert issues == [
        "site.yaml:12:45: notifications.recipients[0].channels.email: an email recipient needs "
        "an smtp section in notifications"
    ]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        pytest.param(
            "password_env: EQUIPWATCH_SMTP_PASSWORD",
            "password: hunter2",
            "notifications.smtp.password: never put the password in this file",
            id="smtp-password-in-file",
        ),
        pytest.param(
            "secret_env: CMMS_SECRET",
            "secret: abc",
            "notifications.webhooks.cmms.secret: never put the secret in this file",
            id="webhook-secret-in-file",
        ),
        pytest.param(
            'digest_at: "07:30"',
            "digest_at: 7:30",
            "notifications.digest_at: quote the time of day",
            id="unquoted-time",
        ),
        pytest.param(
            '"clinic/{site}/alerts/{severity}"',
            '"clinic/+/alerts"',
            "notifications.mqtt.topic: an alert topic names one topic",
            id="wildcard-topic",
        ),
        pytest.param(
            '"clinic/{site}/alerts/{severity}"',
            '"clinic/{site}/alerts/{room}"',
            "notifications.mqtt.topic: unknown field {room}",
            id="unknown-topic-field",
        ),
        pytest.param(
            "security: starttls",
            "security: none",
            "notifications.smtp.security: a password is never sent in clear text",
            id="password-in-clear",
        ),
        pytest.param(
            "{name: ops, role: admin, channels: {webhook: cmms, mqtt: true}}",
            "{name: ops, role: admin, channels: {}}",
            "notifications.recipients[2].channels: a recipient needs at least one of",
            id="no-channel",
        ),
        pytest.param(
            "tom@clinic.example",
            '"tom@clinic.example\\nBcc: all@x"',
            "notifications.recipients[0].channels.email: String should match pattern",
            id="header-injection",
        ),
    ],
)
def test_bad_notification_settings_name_the_field(old: str, new: str, message: str) -> None:
    assert old in NOTIFICATIONS
    issues = config_issues(NOTIFICATIONS.replace(old, new))
    assert any(message in issue for issue in issues), issues


# --- events ---------------------------------------------------------------------------------


def event(
    kind: EventKind = "maintenance_due",
    severity: Severity = "warning",
    *,
    key: str | None = None,
    recipients: tuple[str, ...] = (),
) -> Event:
    return Event(
        key=key or due_key("ac1-service", 9),
        kind=kind,
        severity=severity,
        device_id="autoclave-1",
        subject="Maintenance due: Autoclave service on autoclave-1 (Sterilisation room)",
        body="Autoclave service is due at 4,500 cycles (now 4,503).",
        data={"cycles_total": 4503, "due_value": 4500},
        recipients=recipients,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"kind": "coffee_low"}, "unknown event kind", id="kind"),
        pytest.param({"severity": "urgent"}, "unknown severity", id="severity"),
        pytest.param({"subject": "Due\r\nBcc: everyone@x"}, "one non-empty line", id="subject"),
        pytest.param({"data": {"temp": float("nan")}}, "not plain JSON", id="nan"),
        pytest.param({"data": {"when": NOW}}, "not plain JSON", id="datetime"),
        pytest.param({"key": ""}, "printable line", id="key"),
    ],
)
def test_an_event_that_cannot_be_sent_is_refused_when_made(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidEvent, match=message):
        replace(event(), **change)


# --- routing --------------------------------------------------------------------------------


def names(deliveries: list[Delivery]) -> set[tuple[str, str]]:
    return {(d.recipient, d.channel) for d in deliveries}


def test_every_role_has_a_default_route() -> None:
    assert set(DEFAULT_ROUTES) == set(ROLES)
    assert DEFAULT_ROUTES["admin"].kinds == frozenset(EVENT_KINDS)


TOPIC_CRITICAL = "clinic/riverside/alerts/critical"


@pytest.mark.parametrize(
    ("kind", "severity", "expected"),
    [
        # technician (tom): faults and work orders, minor and up (the override);
        # manager (mia): maintenance, supplies, digest, escalations; admin (ops): everything
        (
            "fault_alarm",
            "critical",
            {("tom", "email"), ("cmms", "webhook"), (TOPIC_CRITICAL, "mqtt")},
        ),
        (
            "fault_alarm",
            "warning",
            {("cmms", "webhook"), ("clinic/riverside/alerts/warning", "mqtt")},
        ),
        (
            "maintenance_due",
            "warning",
            {("mia", "email"), ("cmms", "webhook"), ("clinic/riverside/alerts/warning", "mqtt")},
        ),
        (
            "alarm_escalated",
            "critical",
            {("tom", "email"), ("mia", "email"), ("cmms", "webhook"), (TOPIC_CRITICAL, "mqtt")},
        ),
        (
            "work_order_opened",
            "major",
            {("tom", "email"), ("cmms", "webhook"), ("clinic/riverside/alerts/major", "mqtt")},
        ),
        (
            "digest",
            "info",
            {("mia", "email"), ("cmms", "webhook"), ("clinic/riverside/alerts/info", "mqtt")},
        ),
    ],
)
def test_routing_table(kind: EventKind, severity: Severity, expected: set[tuple[str, str]]) -> None:
    router = Router(settings(), site_name="Riverside Family Practice")
    assert names(router.route(event(kind, severity))) == expected


def test_a_webhook_named_by_two_recipients_gets_the_event_once() -> None:
    router = Router(settings(), site_name="x")
    deliveries = router.route(event("maintenance_due"))
    assert [d for d in deliveries if d.channel == "webhook"] == [
        Delivery("cmms", "webhook", "cmms")
    ]


def test_routes_can_be_replaced_per_role() -> None:
    text = NOTIFICATIONS.replace(
        "technician: {min_severity: minor}",
        "technician: {min_severity: minor}\n    manager: {kinds: [digest], min_severity: info}",
    )
    router = Router(settings(text), site_name="x")
    assert ("mia", "email") not in names(router.route(event("maintenance_due")))
    assert ("mia", "email") in names(router.route(event("digest", "info")))


def test_an_event_for_named_recipients_reaches_only_them() -> None:
    text = NOTIFICATIONS.replace(
        "    - {name: mia",
        "    - {name: ann, role: technician, channels: {email: ann@clinic.example}}\n"
        "    - {name: mia",
    )
    router = Router(settings(text), site_name="x")
    assigned = event("work_order_assigned", "major", key="work_order:7:assigned:ann")
    assert {("tom", "email"), ("ann", "email")} <= names(router.route(assigned))
    only_ann = replace(assigned, recipients=("ann",))
    assert names(router.route(only_ann)) == {("ann", "email")}


def test_the_alert_topic_takes_the_site_name_when_not_configured() -> None:
    text = NOTIFICATIONS.replace(", site: riverside}", "}")
    router = Router(settings(text), site_name="Riverside Family Practice")
    topics = {d.address for d in router.route(event()) if d.channel == "mqtt"}
    assert topics == {"clinic/riverside-family-practice/alerts/warning"}


def test_a_logged_notice_resolves_to_its_delivery_while_configured() -> None:
    router = Router(settings(), site_name="x")
    assert router.resolve("mia", "email") == Delivery("mia", "email", "mia@clinic.example")
    assert router.resolve("cmms", "webhook") == Delivery("cmms", "webhook", "cmms")
    assert router.resolve("gone", "email") is None
    assert router.resolve("crm", "webhook") is None


# --- digest ---------------------------------------------------------------------------------

DAY = date(2026, 11, 24)


def digest_data(**changes: Any) -> DigestData:
    data = DigestData(
        site="Riverside Family Practice",
        local_date=DAY,
        timezone="Europe/London",
        due_this_week=[
            MaintenanceRow("ups-1", "Server cupboard", "UPS battery test", date(2026, 11, 27)),
            MaintenanceRow("xray-1", "X-ray room", "Tube check", date(2026, 11, 25)),
        ],
        overdue=[
            MaintenanceRow(
                "autoclave-1", "Sterilisation room", "Autoclave service", date(2026, 11, 20)
            )
        ],
        open_alarms=[
            AlarmRow(
                "fridge-1",
                "Treatment room",
                "EXCURSION",
                "critical",
                datetime(2026, 11, 24, 6, 5, tzinfo=UTC),
            )
        ],
        supplies=[SupplyRow("copier-1", "Reception", "Toner", "8 % left")],
    )
    return replace(data, **changes)


class _Collect(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(page: str) -> _Collect:
    collector = _Collect()
    collector.feed(page)
    collector.close()
    return collector


def test_digest_text_lists_every_section_most_urgent_first() -> None:
    text, _ = render_digest(digest_data())
    assert text.splitlines()[0] == "Riverside Family Practice: equipment digest for Tue 24 Nov 2026"
    assert (
        text.index("Overdue (1)") < text.index("Due this week (2)") < text.index("Open alarms (1)")
    )
    assert (
        "  - autoclave-1 (Sterilisation room): Autoclave service, was due Fri 20 Nov 2026, "
        "4 days overdue" in text
    )
    # sorted by date: the X-ray's check (Wed) before the UPS test (Fri)
    assert text.index("Tube check, due Wed 25 Nov 2026") < text.index("UPS battery test, due Fri")
    # 06:05 UTC is 06:05 in London in November
    assert (
        "fridge-1 (Treatment room): EXCURSION (critical) since 24 Nov 2026 06:05, not acknowledged"
        in text
    )
    assert "copier-1 (Reception): Toner, 8 % left" in text


def test_digest_html_is_a_table_per_section_with_inline_styles_only() -> None:
    _, page = render_digest(digest_data())
    document = parsed(page)
    assert document.tags.count("table") == 4
    assert "link" not in document.tags
    assert "style" not in document.tags
    assert "script" not in document.tags
    assert "Autoclave service" in document.text
    assert "4 days overdue" in document.text


def test_digest_escapes_what_it_shows() -> None:
    hostile = "<script>alert('x')</script> & co"
    data = digest_data(
        site="Smith & Jones <Practice>",
        supplies=[SupplyRow("copier-1", hostile, "Toner <black>", "")],
    )
    text, page = render_digest(data)
    assert "<script>" not in page
    assert "Toner <black>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page
    assert "Smith &amp; Jones &lt;Practice&gt;" in page
    # the text part is not HTML: it shows the values as they are
    assert f"copier-1 ({hostile}): Toner <black>" in text
    assert "script" not in parsed(page).tags
    assert hostile in parsed(page).text


def test_an_empty_digest_says_so_in_every_section() -> None:
    text, page = render_digest(
        digest_data(due_this_week=[], overdue=[], open_alarms=[], supplies=[])
    )
    for line in (
        "Overdue (0)",
        "Nothing is overdue.",
        "Due this week (0)",
        "Nothing falls due this week.",
        "Open alarms (0)",
        "No open alarms.",
        "Supplies to reorder (0)",
        "Nothing to reorder.",
    ):
        assert line in text
        assert line in page
    assert "<table" not in page


def test_the_digest_event_is_keyed_by_site_and_local_day() -> None:
    digest = digest_event(digest_data())
    assert digest.key == "digest:Riverside Family Practice:2026-11-24"
    assert digest.kind == "digest"
    assert digest.html is not None
    assert digest.html.startswith("<!DOCTYPE html>")
    assert digest.data == {
        "local_date": "2026-11-24",
        "overdue": 1,
        "due_this_week": 2,
        "open_alarms": 1,
        "supplies_to_reorder": 1,
    }
    assert digest_event(digest_data(open_alarms=[])).key == digest.key


LONDON = ZoneInfo("Europe/London")


@pytest.mark.parametrize(
    ("now", "at", "expected"),
    [
        pytest.param(
            datetime(2026, 11, 24, 6, 0, tzinfo=UTC), time(7, 0),
            datetime(2026, 11, 24, 7, 0, tzinfo=UTC), id="later-today",
        ),
        pytest.param(
            datetime(2026, 11, 24, 7, 0, tzinfo=UTC), time(7, 0),
            datetime(2026, 11, 25, 7, 0, tzinfo=UTC), id="exactly-now-is-tomorrow",
        ),
        pytest.param(
            datetime(2026, 7, 1, 6, 30, tzinfo=UTC), time(7, 0),
            datetime(2026, 7, 2, 6, 0, tzinfo=UTC), id="summer-time-is-utc-plus-one",
        ),
        pytest.param(
            datetime(2026, 3, 28, 8, 0, tzinfo=UTC), time(7, 0),
            datetime(2026, 3, 29, 6, 0, tzinfo=UTC), id="across-spring-forward",
        ),
        pytest.param(
            datetime(2026, 10, 24, 8, 0, tzinfo=UTC), time(7, 0),
            datetime(2026, 10, 25, 7, 0, tzinfo=UTC), id="across-fall-back",
        ),
        pytest.param(
            datetime(2026, 3, 28, 8, 0, tzinfo=UTC), time(1, 30),
            datetime(2026, 3, 29, 1, 30, tzinfo=UTC), id="skipped-time-runs-an-hour-later",
        ),
        pytest.param(
            datetime(2026, 10, 24, 8, 0, tzinfo=UTC), time(1, 30),
            datetime(2026, 10, 25, 0, 30, tzinfo=UTC), id="repeated-time-runs-the-first-time",
        ),
    ],
)  # fmt: skip
def test_next_digest_time_follows_the_site_clock(
    now: datetime, at: time, expected: datetime
) -> None:
    moment = next_digest_time(now, LONDON, at)
    # by the instant: a wall time shown twice never compares equal across zones
    assert moment.astimezone(UTC) == expected
    assert moment.tzinfo is LONDON


def test_a_year_of_digests_is_one_a_day_at_the_local_time() -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    days = []
    for _ in range(365):
        moment = next_digest_time(moment, LONDON, time(7, 0))
        days.append(moment.date())
        assert (moment.hour, moment.minute) == (7, 0)
    assert len(set(days)) == 365
    assert days[-1] == date(2026, 12, 31)


# --- the dispatcher -------------------------------------------------------------------------

ROUTED = """\
notifications:
  webhooks:
    cmms: {url: "https://cmms.clinic.example/hooks", secret_env: CMMS_SECRET}
  recipients:
    - {name: mia, role: manager, channels: {webhook: cmms, mqtt: true}}
"""


def make_dispatcher(
    log: MemoryLog,
    channels: Mapping[ChannelName, RecordingChannel],
    clock: ManualClock,
    *,
    max_attempts: int = 3,
    text: str = ROUTED,
) -> Dispatcher:
    router = Router(settings(text), site_name="Riverside")
    return Dispatcher(
        router, channels, log, clock, max_attempts=max_attempts, retry_every=60, give_up_after=3600
    )


async def test_one_event_gives_one_notice_per_recipient_across_re_evaluation_and_restart() -> None:
    log, clock = MemoryLog(), ManualClock(NOW)
    webhook, mqtt = RecordingChannel(), RecordingChannel()
    first = make_dispatcher(log, {"webhook": webhook, "mqtt": mqtt}, clock)
    outcomes = await first.notify(event())
    assert {(o.recipient, o.channel, o.status) for o in outcomes} == {
        ("cmms", "webhook", "sent"),
        ("clinic/riverside/alerts/warning", "mqtt", "sent"),
    }
    again = await first.notify(event())  # the rules run again and see the same occurrence
    assert {o.status for o in again} == {"duplicate"}

    # a restart: new channels, a new dispatcher, the same log
    webhook2, mqtt2 = RecordingChannel(), RecordingChannel()
    second = make_dispatcher(log, {"webhook": webhook2, "mqtt": mqtt2}, clock)
    after_restart = await second.notify(event())
    assert {o.status for o in after_restart} == {"duplicate"}
    assert await second.retry_unsent() == []
    assert (len(webhook.sent), len(mqtt.sent), webhook2.calls, mqtt2.calls) == (1, 1, 0, 0)
    assert log.status(due_key("ac1-service", 9), "cmms", "webhook") == "sent"

    # the next occurrence is a new event and is sent
    await second.notify(event(key=due_key("ac1-service", 10)))
    assert len(webhook2.sent) == 1


async def test_a_retryable_failure_is_retried_later_and_sent_once() -> None:
    log, clock = MemoryLog(), ManualClock(NOW)
    webhook = RecordingChannel([DeliveryError("cmms answered 503", retryable=True)])
    dispatcher = make_dispatcher(
        log, {"webhook": webhook}, clock, text=ROUTED.replace(", mqtt: true", "")
    )
    [outcome] = await dispatcher.notify(event())
    assert outcome.status == "failed"
    assert outcome.error == "cmms answered 503"
    key = (due_key("ac1-service", 9), "cmms", "webhook")
    assert log.rows[key].status == "failed"
    assert log.rows[key].error == "cmms answered 503"

    assert await dispatcher.retry_unsent() == []  # not yet: the first retry waits retry_every
    clock.advance(timedelta(seconds=61))
    [retried] = await dispatcher.retry_unsent()
    assert retried.status == "sent"
    assert log.rows[key].status == "sent"
    assert webhook.calls == 2
    assert len(webhook.sent) == 1
    # the retry sent the whole event, device data included
    assert webhook.sent[0][0].data == {"cycles_total": 4503, "due_value": 4500}
    clock.advance(timedelta(hours=1))
    assert await dispatcher.retry_unsent() == []


async def test_attempts_are_capped_and_the_final_failure_recorded() -> None:
    log, clock = MemoryLog(), ManualClock(NOW)
    always_down = RecordingChannel([DeliveryError("connection refused", retryable=True)] * 10)
    dispatcher = make_dispatcher(
        log,
        {"webhook": always_down},
        clock,
        max_attempts=3,
        text=ROUTED.replace(", mqtt: true", ""),
    )
    await dispatcher.notify(event())
    statuses = []
    for _ in range(6):
        clock.advance(timedelta(minutes=10))
        statuses += [o.status for o in await dispatcher.retry_unsent()]
    assert statuses == ["failed", "gave_up"]
    assert always_down.calls == 3
    row = log.rows[(due_key("ac1-service", 9), "cmms", "webhook")]
    assert row.status == "failed"
    assert row.error == "gave up after 3 attempt(s): connection refused"
    assert dispatcher.stats.gave_up == 1


async def test_a_failure_that_cannot_pass_is_not_retried() -> None:
    log, clock = MemoryLog(), ManualClock(NOW)
    webhook = RecordingChannel([DeliveryError("cmms answered 400 Bad Request", retryable=False)])
    dispatcher = make_dispatcher(
        log, {"webhook": webhook}, clock, text=ROUTED.replace(", mqtt: true", "")
    )
    [outcome] = await dispatcher.notify(event())
    assert outcome.status == "gave_up"
    clock.advance(timedelta(hours=1))
    assert await dispatcher.retry_unsent() == []
    assert webhook.calls == 1


async def test_unsent_notices_are_sent_after_a_restart() -> None:
    log, clock = MemoryLog(), ManualClock(NOW)
    down = RecordingChannel([DeliveryError("timed out", retryable=True)])
    first = make_dispatcher(log, {"webhook": down}, clock, text=ROUTED.replace(", mqtt: true", ""))
    await first.notify(event())
    assert down.sent == []

    up = RecordingChannel()
    second = make_dispatcher(log, {"webhook": up}, clock, text=ROUTED.replace(", mqtt: true", ""))
    [outcome] = await second.retry_unsent()  # a new process retries at once
    assert outcome.status == "sent"
    [(sent, delivery)] = up.sent
    # rebuilt from the log: the same notice, without the data the log does not keep
    assert (sent.key, sent.kind, sent.severity, sent.subject, sent.body) == (
        event().key,
        "maintenance_due",
        "warning",
        event().subject,
        event().body,
    )
    assert sent.data == {}
    assert delivery == Delivery("cmms", "webhook", "cmms")
    assert await second.retry_unsent() == []


async def test_old_notices_and_vanished_recipients_are_given_up_without_sending() -> None:
    log, clock = MemoryLog(), ManualClock(NOW)
    down = RecordingChannel([DeliveryError("timed out", retryable=True)] * 2)
    first = make_dispatcher(log, {"webhook": down}, clock, text=ROUTED.replace(", mqtt: true", ""))
    await first.notify(event())
    await first.notify(event(key="due:other:1"))

    # the webhook was removed from the settings before the restart
    clock.advance(timedelta(minutes=5))
    text = ROUTED.replace("webhook: cmms, mqtt: true", "mqtt: true")
    text = text.replace(
        '    cmms: {url: "https://cmms.clinic.example/hooks", secret_env: CMMS_SECRET}\n', ""
    )
    text = text.replace("  webhooks:\n", "")
    up = RecordingChannel()
    second = make_dispatcher(log, {"webhook": up, "mqtt": up}, clock, text=text)
    outcomes = await second.retry_unsent()
    assert {o.status for o in outcomes} == {"gave_up"}
    assert "no longer configured" in (outcomes[0].error or "")
    assert up.calls == 0

    # and one that waited past give_up_after (an hour here)
    log2 = MemoryLog()
    third = make_dispatcher(
        log2,
        {"webhook": RecordingChannel([DeliveryError("x", retryable=True)])},
        clock,
        text=ROUTED.replace(", mqtt: true", ""),
    )
    await third.notify(event())
    clock.advance(timedelta(hours=2))
    fresh = RecordingChannel()
    fourth = make_dispatcher(
        log2, {"webhook": fresh}, clock, text=ROUTED.replace(", mqtt: true", "")
    )
    [late] = await fourth.retry_unsent()
    assert late.status == "gave_up"
    assert "still unsent 1 h" in (late.error or "")
    assert fresh.calls == 0


async def test_a_failure_never_reaches_the_rules_engine() -> None:
    clock = ManualClock(NOW)
    exploding = RecordingChannel([RuntimeError("bug in a channel")])
    fine = RecordingChannel()
    dispatcher = make_dispatcher(MemoryLog(), {"webhook": exploding, "mqtt": fine}, clock)
    outcomes = {o.channel: o for o in await dispatcher.notify(event())}
    assert outcomes["webhook"].status == "failed"
    assert outcomes["webhook"].error == "RuntimeError: bug in a channel"
    assert outcomes["mqtt"].status == "sent"
    assert len(fine.sent) == 1

    broken_log = make_dispatcher(BrokenLog(), {"webhook": fine, "mqtt": fine}, clock)
    outcomes_without_log = await broken_log.notify(event(key="due:x:1"))
    assert {o.status for o in outcomes_without_log} == {"log_error"}
    assert len(fine.sent) == 1  # nothing is sent that could not be claimed


async def test_a_channel_that_is_not_set_up_is_a_recorded_failure() -> None:
    log = MemoryLog()
    dispatcher = make_dispatcher(log, {"mqtt": RecordingChannel()}, ManualClock(NOW))
    outcomes = {o.channel: o for o in await dispatcher.notify(event())}
    assert outcomes["webhook"].status == "gave_up"
    assert outcomes["webhook"].error == "gave up after 1 attempt(s): no webhook channel is set up"


class SlowClaimLog(MemoryLog):
    """Inserts the row, then holds the claim until ``release`` is set, as a database commit
    that takes a while."""

    def __init__(self) -> None:
        super().__init__()
        self.inserted = asyncio.Event()
        self.release = asyncio.Event()

    async def claim(self, notice: NoticeRecord) -> bool:
        claimed = await super().claim(notice)
        self.inserted.set()
        await self.release.wait()
        return claimed


async def test_a_retry_pass_during_a_claim_does_not_send_the_fresh_notice_too() -> None:
    log, clock = SlowClaimLog(), ManualClock(NOW)
    webhook = RecordingChannel()
    dispatcher = make_dispatcher(
        log, {"webhook": webhook}, clock, text=ROUTED.replace(", mqtt: true", "")
    )
    notifying = asyncio.create_task(dispatcher.notify(event()))
    async with asyncio.timeout(5):
        await log.inserted.wait()
    assert await dispatcher.retry_unsent() == []  # the pending row is the claim in progress
    log.release.set()
    [outcome] = await notifying
    assert outcome.status == "sent"
    assert webhook.calls == 1
