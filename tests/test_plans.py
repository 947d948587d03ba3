"""Preventive-maintenance scenarios, step by step, with hand-computed expectations.

Each scenario is a plan and a list of steps: readings, fault events and completions folded into
the plan's state, and expectations of ``assess`` at given moments, written as literal dates and
values with the arithmetic beside them. After every step the state also goes through its JSON
form and must come back equal, since that is how the engine stores it.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter

from core.config import Period, Plan
from core.counters import counter_delta
from core.errors import InvalidRecord
from core.records import FaultEvent, Reading
from rules.calendar import first_anchor_after, local_start, shift
from rules.plans import (
    Basis,
    MeterState,
    State,
    Status,
    assess,
    complete,
    new_state,
    observe,
    observe_many,
    state_from_json,
)

LONDON = ZoneInfo("Europe/London")
SANTIAGO = ZoneInfo("America/Santiago")
PLANS: TypeAdapter[Plan] = TypeAdapter(Plan)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


T0 = utc(2026, 11, 23, 9)  # a Monday


def at(*, days: float = 0, hours: float = 0, minutes: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours, minutes=minutes)


def plan_of(**fields: Any) -> Plan:
    return PLANS.validate_python({"id": "p", "name": "Plan", **fields})


@dataclass(frozen=True)
class Read:
    """A reading of metric ``m``; a counter's raw register value is ``value`` unless given."""

    at: datetime
    value: float
    width: int | None = 32
    raw: int | None = None
    scale: float = 1.0

    def reading(self) -> Reading:
        raw = self.raw if self.raw is not None else int(self.value)
        return Reading("dev", "m", self.value, self.at, raw=raw, width=self.width)


@dataclass(frozen=True)
class Fault:
    at: datetime
    code: str
    active: bool = True


@dataclass(frozen=True)
class Done:
    at: datetime
    counters: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Expect:
    """``assess`` at ``now`` gives ``status`` for occurrence ``cycle``, and ``fields`` of the
    PlanStatus have these values (fields not named are not checked)."""

    now: datetime
    status: Status
    cycle: int
    fields: dict[str, object] = field(default_factory=dict)


def expect(now: datetime, status: Status, cycle: int, **fields: object) -> Expect:
    return Expect(now, status, cycle, fields)


Step = Read | Fault | Done | Expect


def run(plan: Plan, steps: Sequence[Step], *, started: datetime, zone: ZoneInfo) -> State:
    state = new_state(plan, started)
    for number, step in enumerate(steps):
        where = f"step {number} ({step})"
        if isinstance(step, Read):
            state = observe(plan, state, step.reading(), step.scale)
        elif isinstance(step, Fault):
            state = observe(plan, state, FaultEvent("dev", step.code, step.at, step.active))
        elif isinstance(step, Done):
            state = complete(plan, state, step.at, step.counters, zone)
        else:
            status = assess(plan, state, step.now, zone)
            assert (status.status, status.cycle) == (step.status, step.cycle), where
            for name, value in step.fields.items():
                assert getattr(status, name) == value, f"{where}: {name}"
        stored = json.loads(json.dumps(state.to_json()))
        assert state_from_json(plan, stored) == state, where
    return state


OK, UPCOMING, DUE, OVERDUE = Status.OK, Status.UPCOMING, Status.DUE, Status.OVERDUE

METER_100 = {"type": "meter", "metric": "m", "every": 100}
CONDITION = {"type": "condition", "metric": "m", "above": 8, "for": "30m", "hysteresis": 0.5}
MONTHLY_FROM_15_JAN = {"type": "calendar", "every": "1 month", "start": "2026-01-15"}

SCENARIOS = [
    pytest.param(
        plan_of(**METER_100),
        [
            Read(at(), 65500, width=16),  # the first reading is the baseline: usage 0
            expect(at(), OK, 0, usage=0, due_value=65600),  # 65500 + 100
            Read(at(hours=1), 65530, width=16),  # +30 = 30
            Read(at(hours=2), 20, width=16),  # wraps: 65536 - 65530 + 20 = 26, usage 56
            expect(at(hours=2), OK, 0, usage=56),
            Read(at(hours=3), 70, width=16),  # +50 = 106 >= 100
            # the due point as the counter reads it now: 70 - 106 + 100 = 64 (65600 - 65536)
            expect(at(hours=3), DUE, 0, usage=106, due_value=64, basis=Basis.METER),
        ],
        id="meter-wraps-at-2^16",
    ),
    pytest.param(
        plan_of(**{**METER_100, "every": 1000}),
        [
            Read(at(), 4_294_966_796),  # 2**32 - 500
            Read(at(hours=1), 4_294_967_200),  # +404
            Read(at(hours=2), 300),  # wraps: 4294967296 - 4294967200 + 300 = 396, usage 800
            expect(at(hours=2), OK, 0, usage=800),
            Read(at(hours=3), 500),  # +200 = 1000
            # 500 - 1000 + 1000 = 500, i.e. 4294966796 + 1000 - 2**32
            expect(at(hours=3), DUE, 0, usage=1000, due_value=500),
        ],
        id="meter-wraps-at-2^32",
    ),
    pytest.param(
        plan_of(**{**METER_100, "every": 500}),
        [
            Read(at(), 5000),
            Read(at(hours=1), 5100),  # +100
            # down to 30: 30 + 2**32 - 5100 is more than half the range, so not a wrap but a
            # reset (board swapped): the counter counted from zero, +30, usage 130
            Read(at(hours=2), 30),
            expect(at(hours=2), OK, 0, usage=130),
            Read(at(hours=3), 400),  # +370 = 500
            expect(at(hours=3), DUE, 0, usage=500, due_value=400),  # 400 - 500 + 500
        ],
        id="meter-counter-reset",
    ),
    pytest.param(
        plan_of(**{**METER_100, "every": 2000}),
        [
            # run hours in tenths (scale 0.1), as the UPS reports them
            Read(at(), 18250.5, raw=182505, scale=0.1),
            Read(at(days=7), 18290.5, raw=182905, scale=0.1),  # a week's gap: +400 x 0.1 = 40 h
            expect(at(days=7), OK, 0, usage=pytest.approx(40.0)),
        ],
        id="meter-gap-and-scale",
    ),
    pytest.param(
        plan_of(**{**METER_100, "every": 500, "first_due": 4500, "lead": 50}),
        [
            Read(at(), 4440),  # first due at 4500: 60 to go; upcoming 50 before, at 10 (4450)
            Read(at(hours=1), 4449),
            expect(at(hours=1), OK, 0, usage=9, due_value=4500),
            Read(at(hours=2), 4450),
            expect(at(hours=2), UPCOMING, 0, usage=10),
            Read(at(hours=3), 4500),
            expect(at(hours=3), DUE, 0, usage=60, due_value=4500),
            # without a grace, overdue once a further interval is used: 60 + 500 = 560 (5000)
            Read(at(hours=4), 4999),
            expect(at(hours=4), DUE, 0, usage=559),
            Read(at(hours=5), 5000),
            expect(at(hours=5), OVERDUE, 0, usage=560),
            Done(at(hours=6), {"m": 5000}),  # serviced at 5000: due again at 5500
            expect(at(hours=6), OK, 1, usage=0, due_value=5500),
        ],
        id="meter-first-due-lead-overdue-and-service",
    ),
    pytest.param(
        plan_of(**{**METER_100, "every": 500, "first_due": 4500}),
        [
            Read(at(), 4600),  # first seen past its first due point: due at once, at 4500
            expect(at(), DUE, 0, usage=0, due_value=4500),
        ],
        id="meter-first-seen-past-first-due",
    ),
    pytest.param(
        plan_of(**{**METER_100, "every": 500, "grace": 100}),
        [
            Read(at(), 1000),
            Read(at(hours=1), 1599),  # 599: due at 500, overdue at 500 + 100 = 600
            expect(at(hours=1), DUE, 0),
            Read(at(hours=2), 1600),
            expect(at(hours=2), OVERDUE, 0),
        ],
        id="meter-grace",
    ),
    pytest.param(
        plan_of(**{**METER_100, "every": 1000}),
        [
            # 25 units every 6 hours: 100 a day
            *(Read(at(hours=6 * k), 1000 + 25 * k) for k in range(4)),
            # 18 hours of readings: under a day, no rate yet
            expect(at(hours=18), OK, 0, usage=75, forecast_at=None),
            *(Read(at(hours=6 * k), 1000 + 25 * k) for k in range(4, 21)),
            # 500 used over 5 days; 500 to go at 100 a day: 5 more days after the last reading
            expect(at(days=5), OK, 0, usage=500, forecast_at=at(days=10)),
        ],
        id="meter-forecast-from-recent-rate",
    ),
    pytest.param(
        plan_of(type="calendar", every="1 week", start="2026-11-16"),
        [
            # due 2026-11-23, the start of the day in London (GMT): 00:00 UTC
            expect(utc(2026, 11, 22, 23, 59), OK, 0),
            expect(utc(2026, 11, 23), DUE, 0, due_at=utc(2026, 11, 23), basis=Basis.CALENDAR),
            # a week with nothing evaluated: one occurrence, now overdue (next date 11-30)
            expect(utc(2026, 11, 30, 9), OVERDUE, 0, overdue_at=utc(2026, 11, 30)),
            expect(utc(2026, 12, 7, 9), OVERDUE, 0, due_at=utc(2026, 11, 23)),
        ],
        id="calendar-week-of-downtime-is-one-occurrence",
    ),
    pytest.param(
        plan_of(type="calendar", every="1 day", mode="floating"),
        [
            # first seen 2026-03-28 (GMT): due 03-29 00:00 GMT; clocks go forward at 01:00 UTC
            expect(utc(2026, 3, 29), DUE, 0, due_at=utc(2026, 3, 29)),
            Done(utc(2026, 3, 29, 9, 30)),  # 10:30 BST
            # next day's start in BST: 2026-03-30 00:00+01:00 = 03-29 23:00 UTC
            expect(utc(2026, 3, 29, 22, 59), OK, 1),
            expect(utc(2026, 3, 29, 23), DUE, 1, due_at=utc(2026, 3, 29, 23)),
        ],
        id="calendar-across-spring-dst",
    ),
    pytest.param(
        plan_of(type="calendar", every="1 week", start="2026-10-18"),
        [
            # due 2026-10-25 00:00 BST = 10-24 23:00 UTC (clocks go back at 01:00 UTC that day)
            expect(utc(2026, 10, 24, 22, 59), OK, 0),
            # the next date, 11-01, is in GMT: 00:00 UTC, when it becomes overdue
            expect(
                utc(2026, 10, 24, 23),
                DUE,
                0,
                due_at=utc(2026, 10, 24, 23),
                overdue_at=utc(2026, 11, 1),
            ),
            expect(utc(2026, 11, 1), OVERDUE, 0),
        ],
        id="calendar-across-autumn-dst",
    ),
    pytest.param(
        plan_of(type="calendar", every="1 month", start="2026-01-31"),
        [
            expect(utc(2026, 2, 28), DUE, 0, due_at=utc(2026, 2, 28)),  # 31 Jan + 1 month
            Done(utc(2026, 2, 28, 10)),
            # fixed: counted from the start, not from 28 Feb: 31 Jan + 2 months = 31 Mar, and
            # BST since 29 Mar: 31 Mar 00:00+01:00 = 30 Mar 23:00 UTC
            expect(utc(2026, 3, 1), OK, 1, due_at=utc(2026, 3, 30, 23)),
            Done(utc(2026, 3, 31, 10)),
            # 31 Jan + 3 months = 30 Apr, 00:00 BST = 29 Apr 23:00 UTC
            expect(utc(2026, 4, 1), OK, 2, due_at=utc(2026, 4, 29, 23)),
            Done(utc(2026, 4, 30, 10)),
            expect(utc(2026, 5, 1), OK, 3, due_at=utc(2026, 5, 30, 23)),  # 31 May, BST
        ],
        id="calendar-month-ends-fixed",
    ),
    pytest.param(
        plan_of(type="calendar", every="1 month", start="2026-01-31", mode="floating"),
        [
            expect(utc(2026, 2, 28), DUE, 0, due_at=utc(2026, 2, 28)),  # 31 Jan + 1 month
            Done(utc(2026, 2, 28, 10)),
            # floating counts from the completion: 28 Feb + 1 month = 28 Mar (GMT)
            expect(utc(2026, 3, 1), OK, 1, due_at=utc(2026, 3, 28)),
        ],
        id="calendar-month-ends-floating",
    ),
    pytest.param(
        plan_of(**MONTHLY_FROM_15_JAN),
        [
            expect(utc(2026, 2, 15), DUE, 0, due_at=utc(2026, 2, 15)),
            # months later, still the one occurrence (15 Mar and 15 Apr passed unserved)
            expect(utc(2026, 4, 20), OVERDUE, 0, due_at=utc(2026, 2, 15)),
            Done(utc(2026, 4, 20, 10)),
            # fixed: the first of its dates after the completion, 15 May (BST: 14 May 23:00)
            expect(utc(2026, 4, 21), OK, 1, due_at=utc(2026, 5, 14, 23)),
        ],
        id="calendar-fixed-after-a-late-completion",
    ),
    pytest.param(
        plan_of(**{**MONTHLY_FROM_15_JAN, "mode": "floating"}),
        [
            expect(utc(2026, 4, 20), OVERDUE, 0, due_at=utc(2026, 2, 15)),
            Done(utc(2026, 4, 20, 10)),
            # floating: a month after the completion, 20 May (BST: 19 May 23:00)
            expect(utc(2026, 4, 21), OK, 1, due_at=utc(2026, 5, 19, 23)),
        ],
        id="calendar-floating-after-a-late-completion",
    ),
    pytest.param(
        plan_of(**MONTHLY_FROM_15_JAN),
        [
            Done(utc(2026, 2, 10, 10)),  # five days early: serves the 15 Feb occurrence
            expect(utc(2026, 2, 16), OK, 1, due_at=utc(2026, 3, 15)),
        ],
        id="calendar-fixed-after-an-early-completion",
    ),
    pytest.param(
        plan_of(type="calendar", every="6 months", start="2026-06-01", lead="2 weeks"),
        [
            # due 1 Dec (GMT); upcoming from 17 Nov; overdue at the next date, 1 Jun 2027 (BST)
            expect(utc(2026, 11, 16, 23, 59), OK, 0),
            expect(utc(2026, 11, 17), UPCOMING, 0, upcoming_at=utc(2026, 11, 17)),
            expect(utc(2026, 12, 1), DUE, 0, overdue_at=utc(2027, 5, 31, 23)),
        ],
        id="calendar-lead-time",
    ),
    pytest.param(
        plan_of(type="calendar", every="6 months", start="2026-06-01", grace="1 month"),
        [
            expect(utc(2026, 12, 31, 23, 59), DUE, 0),
            expect(utc(2027, 1, 1), OVERDUE, 0, overdue_at=utc(2027, 1, 1)),  # 1 Dec + 1 month
        ],
        id="calendar-grace",
    ),
    pytest.param(
        plan_of(
            type="whichever_first",
            calendar={"every": "1 month", "mode": "floating", "start": "2026-11-01"},
            meter={"metric": "m", "every": 1000},
        ),
        [
            Read(utc(2026, 11, 30, 9), 10_000),
            Read(utc(2026, 11, 30, 17), 10_990),  # 990 used: 10 short
            expect(utc(2026, 11, 30, 17), OK, 0, basis=Basis.BOTH, due_value=11_000),
            # the calendar comes first: 1 Dec 00:00 (GMT)
            expect(utc(2026, 12, 1), DUE, 0, basis=Basis.CALENDAR, due_at=utc(2026, 12, 1)),
            Read(utc(2026, 12, 1, 9), 11_005),  # and the meter a few hours later: 1005
            expect(utc(2026, 12, 1, 9), DUE, 0, basis=Basis.BOTH, usage=1005),
            Done(utc(2026, 12, 1, 10), {"m": 11_005}),  # one service resets both parts
            expect(utc(2026, 12, 1, 10), OK, 1, usage=0, due_value=12_005, due_at=utc(2027, 1, 1)),
            Read(utc(2026, 12, 20, 12), 12_010),  # 1005 used before the month is out
            expect(utc(2026, 12, 20, 12), DUE, 1, basis=Basis.METER),
        ],
        id="whichever-first-both-triggers-near",
    ),
    pytest.param(
        plan_of(**CONDITION),
        [
            Read(at(), 7.5),
            Read(at(minutes=5), 8.2),  # the breach starts
            Read(at(minutes=20), 8.4),
            expect(at(minutes=20), OK, 0, active=False),
            Read(at(minutes=35), 8.3),  # still above, 30 minutes after 0:05: fires at 0:35
            expect(at(minutes=35), DUE, 0, fired_at=at(minutes=35), active=True),
            # flapping around 8 but never down to 8 - 0.5 = 7.5: no re-arm, no second firing
            Read(at(minutes=45), 7.9),
            Read(at(minutes=55), 8.1),
            Read(at(minutes=65), 7.6),
            Read(at(minutes=75), 8.6),
            Read(at(minutes=115), 8.6),
            expect(at(minutes=115), DUE, 0, repeats=0, active=True),
            Read(at(minutes=125), 7.5),  # back past the band: re-armed; still open until done
            expect(at(minutes=125), DUE, 0, active=False, rearmed_at=at(minutes=125)),
            Read(at(minutes=135), 8.5),
            Read(at(minutes=165), 8.5),  # a second 30-minute breach: a repeat on the open one
            expect(at(minutes=165), DUE, 0, repeats=1, fired_at=at(minutes=35)),
            Done(at(minutes=170)),
            expect(at(minutes=170), OK, 1, active=True),  # still fired: cannot fire again yet
            Read(at(minutes=180), 7.0),
            Read(at(minutes=190), 9.0),
            Read(at(minutes=220), 9.0),
            expect(at(minutes=220), DUE, 1, fired_at=at(minutes=220), repeats=0),
        ],
        id="condition-flapping-held-by-hysteresis",
    ),
    pytest.param(
        plan_of(**CONDITION),
        [
            # never 30 minutes above 8 in a row: each dip restarts the breach
            Read(at(), 8.2),
            Read(at(minutes=20), 7.9),
            Read(at(minutes=25), 8.2),
            Read(at(minutes=50), 7.95),
            Read(at(minutes=55), 8.3),
            Read(at(minutes=80), 8.0),  # 8.0 is not above 8
            expect(at(minutes=80), OK, 0, active=False),
            Read(at(minutes=90), 8.1),
            Read(at(minutes=120), 8.1),  # 0:90 + 30 minutes
            expect(at(minutes=120), DUE, 0, fired_at=at(minutes=120)),
        ],
        id="condition-needs-an-unbroken-breach",
    ),
    pytest.param(
        plan_of(type="condition", metric="m", below=2, hysteresis=0.5, **{"for": "30m"}),
        [
            Read(at(), 1.8),
            Read(at(minutes=30), 1.9),
            expect(at(minutes=30), DUE, 0, fired_at=at(minutes=30)),
            Read(at(minutes=40), 2.4),  # below 2 + 0.5: not re-armed
            expect(at(minutes=40), DUE, 0, active=True),
            Read(at(minutes=50), 2.5),
            expect(at(minutes=50), DUE, 0, active=False),
        ],
        id="condition-below",
    ),
    pytest.param(
        plan_of(type="supplies", metric="m", below=10, hysteresis=20, item="Toner"),
        [
            Read(at(), 15),
            expect(at(), OK, 0),
            Read(at(hours=1), 9.5),  # low: one reorder notice, at once
            expect(at(hours=1), DUE, 0, fired_at=at(hours=1), basis=Basis.SUPPLIES),
            Read(at(hours=2), 8),
            Read(at(hours=3), 29.9),  # not yet a refill (10 + 20 = 30)
            Read(at(hours=3, minutes=30), 9),
            expect(at(hours=4), DUE, 0, repeats=0, active=True),
            Read(at(hours=5), 100),  # a new cartridge: re-armed, and the reorder is served
            expect(at(hours=5), OK, 1, active=False, rearmed_at=at(hours=5)),
            Read(at(hours=6), 9),
            expect(at(hours=6), DUE, 1, fired_at=at(hours=6)),
        ],
        id="supplies-one-notice-per-low-level",
    ),
    pytest.param(
        plan_of(type="fault", codes=["DOOR"], count=3, within="1h"),
        [
            Fault(at(), "DOOR"),
            Fault(at(minutes=10), "WATER_LOW"),  # another code: does not count
            Fault(at(minutes=20), "DOOR"),
            Fault(at(minutes=70), "DOOR"),  # 0:00 is now 70 minutes back: out; two in the hour
            expect(at(minutes=70), OK, 0),
            Fault(at(minutes=75), "DOOR", active=False),  # a clear does not count
            Fault(at(minutes=80), "DOOR"),  # 0:20 (60 min back, inclusive), 1:10, 1:20
            expect(at(minutes=80), DUE, 0, fired_at=at(minutes=80), basis=Basis.FAULT),
            Fault(at(minutes=80), "DOOR"),  # the same event again: ignored
            Fault(at(minutes=81), "DOOR"),  # the window restarted: one of three
            expect(at(minutes=81), DUE, 0, repeats=0),
            Done(at(minutes=90)),
            expect(at(minutes=90), OK, 1),
        ],
        id="fault-count-within-window",
    ),
    pytest.param(
        plan_of(type="fault", any=True),
        [
            Fault(at(), "JAM"),
            Fault(at(minutes=1), "TONER_EMPTY"),  # while the first is open: a repeat
            expect(at(minutes=1), DUE, 0, repeats=1, fired_at=at()),
            Done(at(minutes=5)),
            Fault(at(minutes=6), "JAM"),
            expect(at(minutes=6), DUE, 1, repeats=0, fired_at=at(minutes=6)),
        ],
        id="fault-any-code",
    ),
]


@pytest.mark.parametrize(("plan", "steps"), SCENARIOS)
def test_plan_scenario(plan: Plan, steps: list[Step]) -> None:
    # a calendar plan without a start counts from the day it is first seen: the day before
    # the first expectation (the DST scenario relies on 2026-03-28)
    first = next(s.now if isinstance(s, Expect) else s.at for s in steps)
    run(plan, steps, started=first - timedelta(days=1), zone=LONDON)


def test_skipped_midnight_due_at_the_days_first_instant() -> None:
    # Santiago moves from 00:00 straight to 01:00 on 2026-09-06: the day starts at 01:00 -03,
    # 04:00 UTC, the same instant as midnight read with the old offset (-04)
    plan = plan_of(type="calendar", every="1 day", start="2026-09-05")
    steps = [
        expect(utc(2026, 9, 6, 3, 59), OK, 0),
        expect(utc(2026, 9, 6, 4), DUE, 0, due_at=utc(2026, 9, 6, 4)),
    ]
    run(plan, steps, started=utc(2026, 9, 1), zone=SANTIAGO)
    start = local_start(date(2026, 9, 6), SANTIAGO)
    assert start.astimezone(SANTIAGO).isoformat() == "2026-09-06T01:00:00-03:00"
    assert (start - timedelta(microseconds=1)).astimezone(SANTIAGO).date() == date(2026, 9, 5)


def test_catch_up_after_a_week_gives_one_occurrence_however_often_assessed() -> None:
    """Assessing every hour, or once after a week of silence, names the same single
    occurrence: what falls due comes from the state, never from "now is the due day"."""
    plan = plan_of(type="calendar", every="1 week", start="2026-11-16")
    state = new_state(plan, utc(2026, 11, 16))
    hourly = {
        assess(plan, state, utc(2026, 11, 22) + timedelta(hours=h), LONDON).key
        for h in range(24 * 14)
        if assess(plan, state, utc(2026, 11, 22) + timedelta(hours=h), LONDON).needs_action
    }
    once = assess(plan, state, utc(2026, 11, 30, 9), LONDON)
    assert hourly == {once.key} == {("p", 0)}


@pytest.mark.parametrize(
    ("base", "period", "after", "expected"),
    [
        # 31 Jan + k months, clamped: 28 Feb, 31 Mar, 30 Apr
        pytest.param(date(2026, 1, 31), "1 month", date(2026, 2, 27), date(2026, 2, 28)),
        pytest.param(date(2026, 1, 31), "1 month", date(2026, 2, 28), date(2026, 3, 31)),
        pytest.param(date(2026, 1, 31), "1 month", date(2026, 4, 29), date(2026, 4, 30)),
        # leap years: 29 Feb 2024 + 1 year = 28 Feb 2025; + 4 years = 29 Feb 2028
        pytest.param(date(2024, 2, 29), "1 year", date(2024, 3, 1), date(2025, 2, 28)),
        pytest.param(date(2024, 2, 29), "1 year", date(2028, 2, 28), date(2028, 2, 29)),
        pytest.param(date(2028, 1, 31), "1 month", date(2028, 2, 1), date(2028, 2, 29)),
        # weeks and days count from the base: 2 weeks from a Monday stays on Mondays
        pytest.param(date(2026, 11, 23), "2 weeks", date(2026, 12, 7), date(2026, 12, 21)),
        pytest.param(date(2026, 11, 23), "10 days", date(2026, 11, 20), date(2026, 12, 3)),
    ],
)
def test_first_anchor_after(base: date, period: str, after: date, expected: date) -> None:
    every = Period.model_validate(period)
    assert first_anchor_after(base, every, after) == expected


def test_first_anchor_after_matches_counting_one_by_one() -> None:
    rng = random.Random(20261123)
    for _ in range(2000):
        every = Period(
            count=rng.randint(1, 14), unit=rng.choice(["days", "weeks", "months", "years"])
        )
        base = date(2020, 1, 1) + timedelta(days=rng.randrange(3000))
        after = base + timedelta(days=rng.randrange(-30, 4000))
        k = 1
        while shift(base, every, k) <= after:
            k += 1
        assert first_anchor_after(base, every, after) == shift(base, every, k), (base, every, after)


def _counter_stream(rng: random.Random, width: int, scale: float) -> list[Reading]:
    """Readings of one counter: increments, wraps through the register's top, resets, gaps,
    and the odd repeated or late reading."""
    modulus = 2**width
    raw = rng.randrange(modulus)
    ts = T0
    readings: list[Reading] = []
    for _ in range(rng.randint(1, 60)):
        roll = rng.random()
        if roll < 0.05:
            raw = rng.randrange(50)  # reset
        elif roll < 0.12:
            raw = modulus - rng.randint(1, 40)  # near the top, to wrap soon
        else:
            raw = (raw + rng.randint(0, 300)) % modulus
        ts += timedelta(minutes=rng.choice([1, 5, 60, 60 * 24 * 7]))
        readings.append(Reading("dev", "m", raw * scale, ts, raw=raw, width=width))
        if rng.random() < 0.1 and len(readings) > 1:
            readings.append(readings[rng.randrange(len(readings) - 1)])  # repeat, or late
    return readings


@pytest.mark.parametrize("seed", range(40))
def test_folding_one_by_one_through_storage_equals_folding_the_batch(seed: int) -> None:
    rng = random.Random(seed)
    width = rng.choice([16, 32])
    scale = rng.choice([1.0, 0.1])
    plan = plan_of(type="meter", metric="m", every=1000)
    readings = _counter_stream(rng, width, scale)

    batch = observe_many(plan, new_state(plan, T0), readings, scale)
    one_by_one = new_state(plan, T0)
    for reading in readings:
        one_by_one = state_from_json(
            plan, json.loads(json.dumps(observe(plan, one_by_one, reading, scale).to_json()))
        )
    assert one_by_one == batch
    # feeding everything again is harmless: nothing newer than what was folded
    assert observe_many(plan, batch, readings, scale) == batch

    # the usage is the plain sum of counter deltas over the readings in time order
    in_order: list[Reading] = []
    for reading in readings:
        if not in_order or reading.ts > in_order[-1].ts:
            in_order.append(reading)
    expected = sum(
        counter_delta(float(a.raw or 0), float(b.raw or 0), width) * scale
        for a, b in itertools.pairwise(in_order)
    )
    assert isinstance(batch, MeterState)
    assert batch.usage == pytest.approx(expected)
    assert batch.usage >= 0


def test_a_state_from_a_newer_version_or_another_plan_type_is_refused_by_name() -> None:
    meter = plan_of(type="meter", metric="m", every=10)
    document = new_state(meter, T0).to_json()
    with pytest.raises(InvalidRecord, match=r"plan 'p': stored state .*version 2 was written"):
        state_from_json(meter, {**document, "v": 2})
    calendar = plan_of(type="calendar", every="1 week")
    with pytest.raises(InvalidRecord, match="a state of a 'meter' plan, not of a 'calendar'"):
        state_from_json(calendar, document)
    with pytest.raises(InvalidRecord, match="stored state lacks 'usage'"):
        state_from_json(meter, {k: v for k, v in document.items() if k != "usage"})


def test_completing_an_event_plan_with_nothing_open_is_refused() -> None:
    plan = plan_of(type="fault", code="DOOR")
    with pytest.raises(InvalidRecord, match="has no open occurrence to complete"):
        complete(plan, new_state(plan, T0), T0, {}, LONDON)


def test_completion_before_the_previous_one_or_without_zone_is_refused() -> None:
    plan = plan_of(type="calendar", every="1 week")
    state = complete(plan, new_state(plan, T0), at(days=3), {}, LONDON)
    with pytest.raises(InvalidRecord, match="is before the previous one"):
        complete(plan, state, at(days=2), {}, LONDON)
    with pytest.raises(InvalidRecord, match="has no zone"):
        complete(plan, state, datetime(2026, 12, 1, 9), {}, LONDON)


def test_a_negative_counter_value_at_service_is_refused() -> None:
    plan = plan_of(type="meter", metric="m", every=10)
    with pytest.raises(InvalidRecord, match="a counter value is a finite number, 0 or more"):
        complete(plan, new_state(plan, T0), T0, {"m": -5}, LONDON)
