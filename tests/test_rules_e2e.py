"""The rules issue's end-to-end case, on real parts: a scripted simulated autoclave publishing
over MQTT (Mosquitto) -> the MQTT collector -> the batch writer -> the SQLite time-series store
-> the rules engine on a records database -> the dispatcher -> a real SMTP server (aiosmtpd).

The autoclave reaches its cycle limit: one PM work order and one manager email arrive, however
many passes follow; completing the order in the records resets the plan, and the next service
falls due at the completion's counter value plus the plan's interval."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.mqtt import MqttCollector
from collector.writer import BatchWriter, StoreTarget
from core.clock import AcceleratedClock, ManualClock, SystemClock
from core.config import parse_config
from core.db import RecordStore, WorkOrder, records_url, upgrade
from core.store import SqliteStore
from rules.engine import RulesEngine
from rules.notify.channels import build_channels
from rules.notify.dispatcher import Dispatcher
from rules.notify.routing import Router
from rules.plans import PlanStatus, Status
from simulators.fleet import SimulatedFleet
from simulators.scenario import Scenario, ScenarioRunner, Target
from tests.support import FROZEN, wait_for
from tests.test_notify_channels import Inbox, smtp_server

PLAN = "autoclave-1-service"
SITE = """\
site: {name: Riverside, timezone: Europe/London}
mqtt: {client_id: CLIENT, session_expiry: 0}
simulation:
  initial: {autoclave-1: {cycles_total: 4490, failed_cycles: 37}}
notifications:
  smtp: {host: 127.0.0.1, port: PORT, security: none, from_address: equipwatch@clinic.example,
         timeout: 5s}
  recipients:
    - {name: tom, role: technician, channels: {email: tom@clinic.example}}
    - {name: mia, role: manager, channels: {email: mia@clinic.example}}
devices:
  - id: autoclave-1
    kind: autoclave
    location: Sterilisation room
    source:
      protocol: mqtt
      topic: PREFIX/devices/autoclave-1/telemetry
      status_topic: PREFIX/devices/autoclave-1/status
      timestamp_field: ts
      expected_interval: 100ms
      fields:
        - {field: cycles_total, kind: counter, unit: cycles, width: 32}
        - {field: failed_cycles, kind: counter, unit: cycles, width: 32}
        - {field: chamber_temp_c, kind: gauge, unit: "°C"}
        - {field: pressure_kpa, kind: gauge, unit: kPa}
        - {field: water_level_pct, kind: gauge, unit: "%"}
        - {field: faults, kind: fault}
    plans:
      - {id: autoclave-1-service, name: Autoclave service, type: meter, metric: cycles_total,
         every: 500, first_due: 4500}
"""
# simulated time stands still on a Sunday, the clinic closed: the counters move by script only
SIMULATED_START = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SCRIPT = Scenario.model_validate(
    {
        "name": "the autoclave reaches its cycle limit, is serviced, and reaches the next",
        "events": [
            {"at": 0, "device": "autoclave-1", "action": "set_counter",
             "counter": "cycles_total", "value": value}
            for value in (4499, 4500, 4999, 5000)
        ],
    }
)  # fmt: skip
TIMEOUT = 30.0


@dataclass
class Parts:
    engine: RulesEngine
    records: RecordStore
    clock: ManualClock
    inbox: Inbox
    runner: ScenarioRunner
    autoclave: Target
    simulated: AcceleratedClock

    def script(self, step: int) -> int:
        """Apply the script's ``step``-th counter change to the simulated autoclave; returns
        the counter value it set."""
        event = SCRIPT.events[step]
        self.runner.apply(event, self.autoclave, self.simulated.now())
        assert event.value is not None
        return event.value

    async def until(self, what: str, check: Callable[[PlanStatus], bool]) -> PlanStatus:
        """Evaluate until the service plan's status passes ``check``."""

        async def probe() -> PlanStatus | None:
            status = next(s for s in await self.engine.evaluate() if s.plan_id == PLAN)
            return status if check(status) else None

        return await wait_for(probe, timeout=TIMEOUT, what=what)

    async def passes(self, count: int) -> None:
        for _ in range(count):
            await self.engine.evaluate()

    def mails(self) -> list[tuple[str, str]]:
        """(recipient, event key) of each mail received, in order."""
        return [
            (address.partition("@")[0], str(message["X-Equipwatch-Event"]))
            for _, addresses, message in self.inbox.received
            for address in addresses
        ]

    async def work_orders(self) -> list[WorkOrder]:
        return (await self.records.work_orders(limit=100)).items


@pytest.fixture
async def parts(mqtt_url: str, topic_prefix: str, tmp_path: Path) -> AsyncIterator[Parts]:
    inbox = Inbox()
    client = re.sub(r"[^A-Za-z0-9_.-]+", "-", topic_prefix).strip("-")[:40] + "-collector"
    with smtp_server(inbox) as port:
        text = SITE.replace("PORT", str(port)).replace("PREFIX", topic_prefix)
        site = parse_config(text.replace("CLIENT", client), "site.yaml")
        simulated = AcceleratedClock(SIMULATED_START, FROZEN)
        fleet = SimulatedFleet(site, mqtt_url=mqtt_url, clock=simulated)
        url = records_url(tmp_path / "records.sqlite")
        await upgrade(url)
        clock = ManualClock(datetime.now(UTC))
        tasks: list[asyncio.Task[None]] = []
        async with (
            SqliteStore(tmp_path / "series.sqlite") as series,
            RecordStore.open(url, clock=clock) as records,
        ):
            writer = BatchWriter(StoreTarget(series), batch_size=50, flush_interval=0.05)
            collector = MqttCollector(
                site.devices,
                settings=site.mqtt,
                url=mqtt_url,
                sink=writer,
                clock=SystemClock(),
            )
            settings = site.notifications
            dispatcher = Dispatcher.from_settings(
                settings,
                Router(settings, site_name=site.site.name),
                build_channels(settings, site_name=site.site.name, environ={}),
                records,
                clock,
            )
            engine = RulesEngine(site, series, records, clock=clock, dispatcher=dispatcher)
            runner = ScenarioRunner(SCRIPT, fleet.targets, clock=simulated, origin=SIMULATED_START)
            try:
                tasks.append(asyncio.create_task(writer.run(), name="test.writer"))
                tasks.append(asyncio.create_task(collector.run(), name="test.collector"))
                await asyncio.wait_for(collector.connected.wait(), timeout=TIMEOUT)
                for name, coroutine in fleet.tasks():
                    tasks.append(asyncio.create_task(coroutine, name=name))
                yield Parts(
                    engine, records, clock, inbox, runner, fleet.targets["autoclave-1"], simulated
                )
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await dispatcher.aclose()


async def test_an_autoclave_at_its_cycle_limit_gets_one_order_and_one_email_until_serviced(
    parts: Parts,
) -> None:
    first = await parts.until("the first reading", lambda s: s.usage is not None)
    assert (first.status, first.cycle, first.usage, first.due_value) == (Status.OK, 0, 0, 4500)

    parts.script(0)  # 4499 cycles: one short of the first due point
    await parts.until("4499 cycles", lambda s: s.usage == 9)
    assert await parts.work_orders() == []

    parts.script(1)  # 4500: due
    due = await parts.until("the service to fall due", lambda s: s.status is Status.DUE)
    assert (due.cycle, due.due_value) == (0, 4500)
    await parts.passes(5)
    [order] = await parts.work_orders()
    assert (order.kind, order.plan_id, order.cycle, order.state) == ("pm", PLAN, 0, "open")
    assert sorted(parts.mails()) == [
        ("mia", f"due:{PLAN}:0"),
        ("tom", f"work_order:{order.id}:opened"),
    ]
    manager = next(m for _, to, m in parts.inbox.received if to == ["mia@clinic.example"])
    # a long subject is folded onto a continuation line: compare it unfolded
    subject = " ".join(str(manager["Subject"]).split())
    assert subject == "Maintenance due: Autoclave service on autoclave-1 (Sterilisation room)"

    # serviced at 4500 cycles; the API records it in the records database
    parts.clock.set(datetime.now(UTC))
    await parts.records.update_work_order(order.id, actor="tom", state="in_progress")
    await parts.records.complete_work_order(
        order.id, actor="tom", completed_at=parts.clock.now(), counters={"cycles_total": 4500}
    )
    reset = await parts.until("the plan to reset", lambda s: s.cycle == 1)
    assert (reset.status, reset.usage, reset.due_value) == (Status.OK, 0, 4500 + 500)
    assert await parts.records.maintenance_due() == []

    parts.script(2)  # 4999: one short of the next due point
    await parts.until("4999 cycles", lambda s: s.usage == 499)
    await parts.passes(3)
    assert [o.state for o in await parts.work_orders()] == ["done"]
    assert len(parts.mails()) == 2

    parts.script(3)  # 5000: the next service falls due
    again = await parts.until("the next service to fall due", lambda s: s.status is Status.DUE)
    assert (again.cycle, again.due_value) == (1, 5000)
    await parts.passes(3)
    done, second = await parts.work_orders()
    assert (done.state, second.cycle, second.state) == ("done", 1, "open")
    assert sorted(k for to, k in parts.mails() if to == "mia") == [f"due:{PLAN}:0", f"due:{PLAN}:1"]
