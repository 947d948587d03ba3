"""The rules engine on real parts: the time series in a SQLite store, the records in a records
database (SQLite, and PostgreSQL for the catch-up case), notices through the real dispatcher to
a real SMTP server (aiosmtpd). Time is a ManualClock the tests move."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.clock import ManualClock
from core.config import SiteConfig, parse_config
from core.db import RecordStore, StoredPlanState, WorkOrder, records_url, upgrade
from core.records import FaultEvent, Reading
from core.store import SqliteStore
from rules.engine import RulesEngine
from rules.notify.channels import build_channels
from rules.notify.dispatcher import Dispatcher
from rules.notify.routing import Router
from rules.plans import Status, new_state
from tests.pg import drop_schema, postgres_dsn, schema_name
from tests.support import wait_for
from tests.test_notify_channels import Inbox, smtp_server

SITE = """\
site: {name: Test practice, timezone: Europe/London}
notifications:
  smtp: {host: 127.0.0.1, port: PORT, security: none, from_address: equipwatch@clinic.example,
         timeout: 5s}
  recipients:
    - {name: tom, role: technician, channels: {email: tom@clinic.example}}
    - {name: mia, role: manager, channels: {email: mia@clinic.example}}
  escalate_after: 30m
  digest_at: "07:00"
kind_plans:
  autoclave:
    - {id: validation, name: Validation, type: calendar, every: 2 weeks, start: 2026-11-09,
       lead: 3 days, grace: 1 week}
devices:
  - id: ac-1
    kind: autoclave
    location: Sterilisation room
    risk_class: high
    source:
      protocol: mqtt
      topic: clinic/ac-1
      fields:
        - {field: cycles, kind: counter, width: 16}
        - {field: temp_c}
        - {field: water_pct}
        - {field: faults, kind: fault}
    plans:
      - {id: service, name: Service, type: meter, metric: cycles, every: 100}
      - {id: too-hot, name: Too hot, type: condition, metric: temp_c, above: 140, for: 10m,
         hysteresis: 5, severity: critical}
      - {id: water, name: Water, type: supplies, metric: water_pct, below: 20, hysteresis: 30,
         item: Distilled water}
      - {id: door, name: Door trouble, type: fault, code: DOOR, count: 2, within: 1h}
"""

# a Monday; the validation plan (every 2 weeks from 2026-11-09) is upcoming from 11-20 00:00,
# due 11-23 00:00 and overdue from 11-30 00:00 (London is on GMT: local midnight is 00:00 UTC)
T0 = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)
VALIDATION = "validation.ac-1"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    with postgres_dsn() as dsn:
        yield dsn


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def records(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[RecordStore]:
    dsn, schema = None, None
    if backend == "sqlite":
        url = records_url(tmp_path / "records.sqlite")
    else:
        dsn = request.getfixturevalue("pg_dsn")
        url, schema = records_url(dsn), schema_name(request.node.name)
    await upgrade(url, schema=schema)
    async with RecordStore.open(url, schema=schema, clock=clock) as opened:
        yield opened
    if dsn is not None and schema is not None:
        await drop_schema(dsn, schema)


@pytest.fixture
async def series(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "series.sqlite", rollup_interval=None) as opened:
        yield opened


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    received = Inbox()
    with smtp_server(received) as port:
        yield received, port


@dataclass
class Rig:
    """The parts an engine runs on; ``engine()`` starts one afresh, as a restart does."""

    site: SiteConfig
    series: SqliteStore
    records: RecordStore
    clock: ManualClock
    inbox: Inbox
    dispatchers: list[Dispatcher] = field(default_factory=list)

    def engine(self) -> RulesEngine:
        settings = self.site.notifications
        channels = build_channels(settings, site_name=self.site.site.name, environ={})
        router = Router(settings, site_name=self.site.site.name)
        dispatcher = Dispatcher.from_settings(settings, router, channels, self.records, self.clock)
        self.dispatchers.append(dispatcher)
        return RulesEngine(
            self.site, self.series, self.records, clock=self.clock, dispatcher=dispatcher
        )

    def mails(self, prefix: str = "") -> list[tuple[str, str]]:
        """(recipient, event key) of every mail received, in order; ``prefix`` filters keys."""
        return [
            (address.partition("@")[0], str(message["X-Equipwatch-Event"]))
            for _, addresses, message in self.inbox.received
            for address in addresses
            if str(message["X-Equipwatch-Event"]).startswith(prefix)
        ]

    def message(self, key: str) -> str:
        [body] = [
            message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
            for _, _, message in self.inbox.received
            if message["X-Equipwatch-Event"] == key
        ][:1]
        return str(body).replace("\r\n", "\n")

    async def work_orders(self) -> list[WorkOrder]:
        return (await self.records.work_orders(limit=100)).items


@pytest.fixture
async def rig(
    inbox: tuple[Inbox, int], series: SqliteStore, records: RecordStore, clock: ManualClock
) -> AsyncIterator[Rig]:
    received, port = inbox
    site = parse_config(SITE.replace("PORT", str(port)), "site.yaml")
    made = Rig(site, series, records, clock, received)
    yield made
    for dispatcher in made.dispatchers:
        await dispatcher.aclose()


async def passes(engine: RulesEngine, count: int, clock: ManualClock, step: timedelta) -> None:
    for _ in range(count):
        await engine.evaluate()
        clock.advance(step)


# --- catch-up, restart, notices once ----------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
async def test_catch_up_after_a_week_down_gives_one_occurrence_order_and_notice_each(
    rig: Rig,
) -> None:
    rig.clock.set(datetime(2026, 11, 17, 12, 0, tzinfo=UTC))
    await rig.engine().evaluate()
    assert await rig.records.maintenance_due() == []
    # down for a week: the validation fell due on 11-23 meanwhile
    rig.clock.set(datetime(2026, 11, 25, 9, 0, tzinfo=UTC))
    await passes(rig.engine(), 3, rig.clock, timedelta(hours=1))
    [due] = await rig.records.maintenance_due()
    assert (due.plan_id, due.device_id, due.cycle, due.basis) == (VALIDATION, "ac-1", 0, "calendar")
    assert due.due_at == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    [order] = await rig.work_orders()
    assert (order.kind, order.plan_id, order.cycle, order.state, order.priority) == (
        "pm", VALIDATION, 0, "open", "high",
    )  # fmt: skip
    assert (order.due_from, order.due_to) == (due.due_at, datetime(2026, 11, 30, tzinfo=UTC))
    expected = [("mia", f"due:{VALIDATION}:0"), ("tom", f"work_order:{order.id}:opened")]
    assert sorted(rig.mails()) == expected
    assert rig.message(f"due:{VALIDATION}:0").startswith(
        "Validation on ac-1 (Sterilisation room): due."
    )
    # restarted twice more, the same day and a day later: nothing new is recorded or sent
    await passes(rig.engine(), 2, rig.clock, timedelta(hours=1))
    rig.clock.advance(timedelta(days=1))
    await passes(rig.engine(), 2, rig.clock, timedelta(hours=1))
    assert len(await rig.records.maintenance_due()) == 1
    assert len(await rig.work_orders()) == 1
    assert sorted(rig.mails()) == expected
    log = (await rig.records.notifications()).items
    assert sorted((n.recipient, n.event_key, n.status) for n in log) == [
        (recipient, key, "sent") for recipient, key in expected
    ]


async def test_lead_due_and_grace_give_one_upcoming_one_due_and_one_overdue_notice(
    rig: Rig,
) -> None:
    engine = rig.engine()
    for moment, expected in [
        (datetime(2026, 11, 19, 23, 59, tzinfo=UTC), Status.OK),
        (datetime(2026, 11, 20, 0, 0, tzinfo=UTC), Status.UPCOMING),
        (datetime(2026, 11, 23, 0, 0, tzinfo=UTC), Status.DUE),
        (datetime(2026, 11, 30, 0, 0, tzinfo=UTC), Status.OVERDUE),
    ]:
        rig.clock.set(moment)
        for _ in range(2):
            statuses = {s.plan_id: s for s in await engine.evaluate()}
            assert statuses[VALIDATION].status is expected
    [order] = await rig.work_orders()
    assert sorted(rig.mails()) == [
        ("mia", f"due:{VALIDATION}:0"),
        ("mia", f"overdue:{VALIDATION}:0"),
        ("mia", f"upcoming:{VALIDATION}:0"),
        ("tom", f"work_order:{order.id}:opened"),
    ]


async def test_a_notification_failure_never_breaks_a_pass(
    series: SqliteStore, records: RecordStore, clock: ManualClock
) -> None:
    nobody = Inbox()
    with smtp_server(nobody) as port:
        pass  # the port is free again: nothing answers there
    site = parse_config(SITE.replace("PORT", str(port)), "site.yaml")
    rig = Rig(site, series, records, clock, nobody)
    clock.set(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    statuses = {s.plan_id: s for s in await rig.engine().evaluate()}
    assert statuses[VALIDATION].status is Status.DUE
    assert [d.plan_id for d in await records.maintenance_due()] == [VALIDATION]
    assert len(await rig.work_orders()) == 1
    log = (await records.notifications()).items
    assert {(n.recipient, n.status) for n in log} == {("mia", "failed"), ("tom", "failed")}
    assert all("SMTP 127.0.0.1" in (n.last_error or "") for n in log)


async def test_a_notice_that_cannot_be_made_is_logged_and_the_pass_goes_on(
    series: SqliteStore,
    records: RecordStore,
    clock: ManualClock,
    inbox: tuple[Inbox, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    received, port = inbox
    # a tab in the location would end a mail subject early: that notice cannot be sent
    text = SITE.replace("PORT", str(port)).replace(
        "location: Sterilisation room", 'location: "Sterilisation\\troom"'
    )
    rig = Rig(parse_config(text, "site.yaml"), series, records, clock, received)
    clock.set(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    with caplog.at_level(logging.ERROR, logger="rules.engine"):
        await rig.engine().evaluate()
    assert "rules: a notice could not be made" in caplog.text
    assert [d.plan_id for d in await records.maintenance_due()] == [VALIDATION]
    [order] = await rig.work_orders()
    assert rig.mails() == [("tom", f"work_order:{order.id}:opened")]


# --- completion -----------------------------------------------------------------------------


def counter(raw: int, when: datetime) -> Reading:
    return Reading("ac-1", "cycles", float(raw), when, raw=raw, width=16)


async def test_completion_in_the_records_resets_the_plan_and_the_next_cycle_falls_due_on_time(
    rig: Rig,
) -> None:
    engine = rig.engine()
    await rig.series.write([counter(65500, at(0)), counter(65530, at(10))])
    statuses = {s.plan_id: s for s in await engine.evaluate()}
    assert (statuses["service"].status, statuses["service"].usage) == (Status.OK, 30)
    # 65530 -> 70 wraps the 16-bit register: +76, usage 106 (due at 100)
    await rig.series.write([counter(70, at(20))])
    statuses = {s.plan_id: s for s in await engine.evaluate()}
    assert (statuses["service"].status, statuses["service"].due_value) == (Status.DUE, 64)
    [order] = await rig.work_orders()
    assert (order.kind, order.plan_id, order.cycle) == ("pm", "service", 0)

    # the API (another process) completes it, the counter reading 80 at the service
    rig.clock.set(at(60))
    await rig.records.update_work_order(order.id, actor="tom", state="in_progress")
    await rig.records.complete_work_order(
        order.id, actor="tom", completed_at=at(50), counters={"cycles": 80}
    )
    statuses = {s.plan_id: s for s in await engine.evaluate()}
    service = statuses["service"]
    # the next service falls due 100 cycles after 80, at 180
    assert (service.status, service.cycle, service.usage, service.due_value) == (
        Status.OK, 1, -10, 180,
    )  # fmt: skip
    stored = (await rig.records.plan_states())["service"]
    assert (stored.cycle, stored.state["baseline"], stored.state["last_completed"]) == (
        1, 80, at(50).isoformat(),
    )  # fmt: skip
    assert await rig.records.maintenance_due() == []
    await rig.series.write([counter(179, at(70))])
    statuses = {s.plan_id: s for s in await engine.evaluate()}
    assert statuses["service"].status is Status.OK
    await rig.series.write([counter(180, at(80))])
    statuses = {s.plan_id: s for s in await engine.evaluate()}
    assert (statuses["service"].status, statuses["service"].cycle) == (Status.DUE, 1)
    [due] = await rig.records.maintenance_due()
    assert (due.plan_id, due.cycle, due.due_value) == ("service", 1, 180)
    first, second = await rig.work_orders()
    assert (first.state, second.state, second.cycle) == ("done", "open", 1)
    assert rig.mails("due:") == [("mia", "due:service:0"), ("mia", "due:service:1")]
    cycles = [
        e.action
        for e in (await rig.records.audit_log(entity="plan", entity_id="service")).items
        if e.action in ("created", "cycle")
    ]
    assert cycles == ["created", "cycle"]


async def test_an_order_completed_while_the_engine_was_down_is_applied_at_start(
    rig: Rig,
) -> None:
    await rig.series.write([counter(100, at(0)), counter(210, at(10))])
    await rig.engine().evaluate()
    [order] = await rig.work_orders()
    await rig.records.update_work_order(order.id, actor="tom", state="in_progress")
    await rig.records.complete_work_order(
        order.id, actor="tom", completed_at=at(30), counters={"cycles": 215}
    )
    await rig.series.write([counter(220, at(40))])
    statuses = {s.plan_id: s for s in await rig.engine().evaluate()}
    assert (statuses["service"].cycle, statuses["service"].due_value) == (1, 315)
    assert len(await rig.work_orders()) == 1
    assert rig.mails("due:") == [("mia", "due:service:0")]


async def test_a_cancelled_order_leaves_its_occurrence_open_without_a_second_order(
    rig: Rig,
) -> None:
    engine = rig.engine()
    await rig.series.write([counter(100, at(0)), counter(210, at(10))])
    await engine.evaluate()
    [order] = await rig.work_orders()
    await rig.records.update_work_order(order.id, actor="mia", state="cancelled")
    await passes(engine, 2, rig.clock, timedelta(minutes=5))
    await rig.engine().evaluate()
    statuses = {s.plan_id: s for s in await rig.engine().evaluate()}
    assert (statuses["service"].status, statuses["service"].cycle) == (Status.DUE, 0)
    assert [(d.plan_id, d.closed_at) for d in await rig.records.maintenance_due()] == [
        ("service", None)
    ]
    assert [o.state for o in await rig.work_orders()] == ["cancelled"]


# --- conditions, faults, escalation ---------------------------------------------------------


def temp(value: float, minutes: float) -> Reading:
    return Reading("ac-1", "temp_c", value, at(minutes))


async def test_a_condition_alarm_is_raised_once_and_cleared_past_the_hysteresis(
    rig: Rig,
) -> None:
    engine = rig.engine()
    await engine.evaluate()
    # above 140 from 0:00; at 0:10 it has held for 10 minutes and fires
    await rig.series.write([temp(150, 0), temp(151, 5), temp(149, 10)])
    await engine.evaluate()
    [alarm] = (await rig.records.alarms(active=True)).items
    assert (alarm.type, alarm.severity, alarm.first_seen, alarm.count) == (
        "condition:too-hot", "critical", at(10), 1,
    )  # fmt: skip
    [due] = await rig.records.maintenance_due()
    assert (due.plan_id, due.basis, due.due_at) == ("too-hot", "condition", at(10))
    [order] = await rig.work_orders()
    assert (order.kind, order.fault_key, order.priority) == ("corrective", "too-hot:0", "urgent")
    # flapping around the threshold, never back to 135: the same alarm, not another
    for minutes, value in [(20, 139.0), (25, 141.0), (40, 138.0), (45, 150.0), (60, 150.0)]:
        await rig.series.write([temp(value, minutes)])
        await engine.evaluate()
    assert [(a.id, a.active, a.count) for a in (await rig.records.alarms()).items] == [
        (alarm.id, True, 1)
    ]
    await rig.series.write([temp(135.0, 70)])  # 140 - 5: re-armed
    await engine.evaluate()
    [cleared] = (await rig.records.alarms()).items
    assert (cleared.active, cleared.cleared_at) == (False, at(70))
    # the occurrence stays open until its order is done; a new firing raises a new alarm
    await rig.series.write([temp(150.0, 80), temp(150.0, 90)])
    await passes(engine, 2, rig.clock, timedelta(minutes=1))
    alarms = (await rig.records.alarms()).items
    assert [(a.active, a.first_seen) for a in alarms] == [(False, at(10)), (True, at(90))]
    assert len(await rig.records.maintenance_due()) == 1
    assert len(await rig.work_orders()) == 1
    assert rig.mails("alarm:") == [
        ("tom", f"alarm:{alarms[0].id}:raised"),
        ("tom", f"alarm:{alarms[1].id}:raised"),
    ]


async def test_a_fault_opens_a_corrective_order_and_every_fault_raises_an_alarm(
    rig: Rig,
) -> None:
    engine = rig.engine()
    await rig.series.write(
        [
            FaultEvent("ac-1", "DOOR", at(0), True),
            FaultEvent("ac-1", "DOOR", at(1), False),
            FaultEvent("ac-1", "DOOR", at(30), True),  # the second within the hour fires
            FaultEvent("ac-1", "LOW_TEMP", at(31), True),  # no plan: an alarm all the same
        ]
    )
    await passes(engine, 2, rig.clock, timedelta(minutes=1))
    [order] = await rig.work_orders()
    assert (order.kind, order.fault_key, order.problem_code, order.priority, order.due_from) == (
        "corrective", "door:0", "DOOR", "high", at(30),
    )  # fmt: skip
    [due] = await rig.records.maintenance_due()
    assert (due.plan_id, due.basis, due.cycle) == ("door", "fault", 0)
    alarms = (await rig.records.alarms()).items
    assert [(a.type, a.active, a.severity) for a in alarms] == [
        ("fault:DOOR", False, "major"),
        ("fault:DOOR", True, "major"),
        ("fault:LOW_TEMP", True, "major"),
    ]
    # the first DOOR was raised and cleared within one read: not news any more
    assert sorted(rig.mails()) == [
        ("tom", f"alarm:{alarms[1].id}:raised"),
        ("tom", f"alarm:{alarms[2].id}:raised"),
        ("tom", f"work_order:{order.id}:opened"),
    ]
    await rig.series.write([FaultEvent("ac-1", "LOW_TEMP", at(40), False)])
    await rig.records.update_work_order(order.id, actor="tom", state="in_progress")
    await rig.records.complete_work_order(
        order.id, actor="tom", completed_at=at(45), counters={}, remedy_code="R-LATCH"
    )
    statuses = {s.plan_id: s for s in await engine.evaluate()}
    assert (statuses["door"].status, statuses["door"].cycle) == (Status.OK, 1)
    assert await rig.records.maintenance_due() == []
    assert [a.active for a in (await rig.records.alarms()).items] == [False, True, False]
    # two more DOORs within the hour: the next occurrence and its own order
    await rig.series.write(
        [FaultEvent("ac-1", "DOOR", at(50), False), FaultEvent("ac-1", "DOOR", at(55), True)]
    )
    await engine.evaluate()
    assert [o.fault_key for o in await rig.work_orders()] == ["door:0"]
    await rig.series.write(
        [FaultEvent("ac-1", "DOOR", at(56), False), FaultEvent("ac-1", "DOOR", at(57), True)]
    )
    await engine.evaluate()
    assert [o.fault_key for o in await rig.work_orders()] == ["door:0", "door:1"]


async def test_an_unacknowledged_critical_alarm_escalates_once(rig: Rig) -> None:
    engine = rig.engine()
    await engine.evaluate()
    await rig.series.write([temp(150, 0), temp(150, 10)])
    rig.clock.set(at(12))
    await engine.evaluate()
    [first] = (await rig.records.alarms(active=True)).items
    await rig.records.acknowledge_alarm(first.id, "tom", at(15))
    rig.clock.set(at(45))
    await engine.evaluate()  # acknowledged: never escalated
    await rig.series.write([temp(130, 46), temp(150, 50), temp(150, 60)])
    rig.clock.set(at(61))
    await engine.evaluate()
    second = (await rig.records.alarms(active=True)).items[0]
    assert second.first_seen == at(60)
    rig.clock.set(at(89))
    await engine.evaluate()
    assert rig.mails("escalation:") == []
    rig.clock.set(at(90))
    await passes(engine, 2, rig.clock, timedelta(minutes=1))
    await passes(rig.engine(), 2, rig.clock, timedelta(minutes=1))
    escalated = await rig.records.alarm(second.id)
    assert escalated is not None
    assert escalated.escalated_at == at(90)
    never = await rig.records.alarm(first.id)
    assert never is not None
    assert never.escalated_at is None
    assert sorted(rig.mails("escalation:")) == [
        ("mia", f"escalation:{second.id}"),
        ("tom", f"escalation:{second.id}"),
    ]


# --- supplies -------------------------------------------------------------------------------


def water(value: float, minutes: float) -> Reading:
    return Reading("ac-1", "water_pct", value, at(minutes))


async def test_supplies_give_one_reorder_notice_per_occurrence(rig: Rig) -> None:
    engine = rig.engine()
    await rig.series.write([water(25, 0), water(15, 1), water(12, 2)])
    await passes(engine, 3, rig.clock, timedelta(minutes=1))
    await rig.series.write([water(8, 10)])
    await passes(rig.engine(), 2, rig.clock, timedelta(minutes=1))
    [due] = await rig.records.maintenance_due()
    assert (due.plan_id, due.basis, due.cycle) == ("water", "supplies", 0)
    assert rig.mails() == [("mia", "supplies:water:0")]
    assert await rig.work_orders() == []
    await rig.series.write([water(45, 20)])  # not yet 20 + 30
    await engine.evaluate()
    assert len(await rig.records.maintenance_due()) == 1
    await rig.series.write([water(50, 30)])  # refilled: the reorder is served
    await engine.evaluate()
    assert await rig.records.maintenance_due() == []
    [closed] = await rig.records.maintenance_due(open_only=False)
    assert closed.closed_at == at(30)
    await rig.series.write([water(10, 40)])
    await passes(engine, 2, rig.clock, timedelta(minutes=1))
    assert rig.mails() == [("mia", "supplies:water:0"), ("mia", "supplies:water:1")]


# --- the digest -----------------------------------------------------------------------------


def london(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)  # GMT in November


async def test_the_digest_goes_once_a_day_and_a_missed_one_only_the_same_day(rig: Rig) -> None:
    await rig.series.write([water(12, 0), water(10, 1)])
    rig.clock.set(london(16, 6))
    engine = rig.engine()
    await engine.evaluate()
    assert rig.mails("digest:") == []
    rig.clock.set(london(16, 7))
    await passes(engine, 3, rig.clock, timedelta(minutes=1))
    await passes(rig.engine(), 2, rig.clock, timedelta(minutes=1))  # a restart the same day
    assert rig.mails("digest:") == [("mia", "digest:Test practice:2026-11-16")]
    body = rig.message("digest:Test practice:2026-11-16")
    assert "Due this week (0)" in body
    assert (
        "Supplies to reorder (1)\n  - ac-1 (Sterilisation room): Distilled water, water_pct "
        "below 20 since 2026-11-16 09:01 GMT"
    ) in body
    rig.clock.set(london(17, 6, 59))
    await engine.evaluate()
    rig.clock.set(london(17, 7))
    await passes(engine, 2, rig.clock, timedelta(hours=1))
    # stopped across the 18th's digest time, started again at 09:00 the same day
    rig.clock.set(london(18, 9))
    await passes(rig.engine(), 2, rig.clock, timedelta(minutes=1))
    # stopped across the whole 19th: its digest is not sent late
    rig.clock.set(london(20, 6))
    engine = rig.engine()
    await engine.evaluate()
    rig.clock.set(london(20, 7))
    await passes(engine, 2, rig.clock, timedelta(minutes=1))
    assert rig.mails("digest:") == [
        ("mia", f"digest:Test practice:2026-11-{day}") for day in (16, 17, 18, 20)
    ]
    body = rig.message("digest:Test practice:2026-11-17")
    assert "Due this week (1)\n  - ac-1 (Sterilisation room): Validation, due Mon 23 Nov" in body


# --- stored state and the run loop ----------------------------------------------------------


async def test_a_stored_state_of_another_plan_type_starts_afresh_with_its_cycle(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    calendar_state = new_state(rig.site.kind_plans["autoclave"][0], T0).to_json()
    await rig.records.save_plan_states([StoredPlanState("service", "ac-1", 3, calendar_state, T0)])
    with caplog.at_level(logging.WARNING, logger="rules.engine"):
        statuses = {s.plan_id: s for s in await rig.engine().evaluate()}
    assert "plan 'service': stored state cannot be read" in caplog.text
    assert statuses["service"].cycle == 3
    stored = (await rig.records.plan_states())["service"]
    assert (stored.cycle, stored.state["type"], stored.state["cycle"]) == (3, "meter", 3)


async def run_for_a_pass(engine: RulesEngine) -> None:
    """Run the engine until it has made one more pass, then stop it (as losing the lead does)."""
    before = engine.passes
    task = asyncio.create_task(engine.run(tick=3600))
    try:

        async def passed() -> bool:
            return engine.passes > before

        await wait_for(passed, timeout=10, what="a pass")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_engine_elected_again_starts_from_the_records_not_its_memory(rig: Rig) -> None:
    first, other = rig.engine(), rig.engine()
    await rig.series.write([FaultEvent("ac-1", "LOW_TEMP", at(0), True)])
    await run_for_a_pass(first)
    # another engine leads meanwhile: the fault clears and comes back
    await rig.series.write(
        [FaultEvent("ac-1", "LOW_TEMP", at(1), False), FaultEvent("ac-1", "LOW_TEMP", at(2), True)]
    )
    await other.evaluate()
    await run_for_a_pass(first)  # elected again
    alarms = (await rig.records.alarms()).items
    assert [(a.active, a.first_seen, a.cleared_at) for a in alarms] == [
        (False, at(0), at(1)),
        (True, at(2), None),
    ]
    assert sorted(rig.mails()) == [("tom", f"alarm:{a.id}:raised") for a in alarms]


async def test_run_retries_a_failed_pass_and_a_wake_brings_the_next_pass_forward(
    rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = rig.engine()
    failing = sqlite3.connect(tmp_path / "series.sqlite")
    failing.execute("ALTER TABLE faults RENAME TO faults_elsewhere")  # the store breaks
    failing.commit()
    with caplog.at_level(logging.ERROR, logger="rules.engine"):
        task = asyncio.create_task(engine.run(tick=0.05))
        try:

            async def logged() -> bool:
                return "rules: evaluation failed" in caplog.text

            await wait_for(logged, timeout=10, what="a failed pass to be logged")
            assert engine.passes == 0
            failing.execute("ALTER TABLE faults_elsewhere RENAME TO faults")
            failing.commit()

            async def passed() -> bool:
                return engine.passes >= 2

            await wait_for(passed, timeout=10, what="passes after the store is back")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            failing.close()
    slow = rig.engine()
    task = asyncio.create_task(slow.run(tick=3600))
    try:

        async def first() -> bool:
            return slow.passes == 1

        await wait_for(first, timeout=10, what="the first pass")
        await rig.series.write([water(10, 0)])
        slow.wake()

        async def second() -> bool:
            return slow.passes == 2

        await wait_for(second, timeout=10, what="a pass after the wake")
        assert rig.mails("supplies:") == [("mia", "supplies:water:0")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
