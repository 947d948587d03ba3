"""The rules engine: plans falling due become work orders and notices, device faults and
conditions become alarms, and a daily digest goes to the manager.

``RulesEngine(site, series, records, clock=..., dispatcher=...)`` reads the time series
(``series``: readings and fault events) and keeps everything it decides in the records
database (``records``: plan states, due occurrences, work orders, alarms, the notification log,
cursors). ``evaluate()`` is one pass; ``run(tick)`` makes a pass every ``tick`` seconds, or as
soon as ``wake()`` says new records were stored.

One pass:

1. On the first pass only: load every plan's stored state (a state that cannot be read for its
   plan is logged and the plan starts afresh, keeping its cycle), the active alarms, the open
   due occurrences, the unfinished work orders and the cursors. States stay in memory from
   then on; a pass saves only the ones that changed, in one transaction.
2. Fold in what arrived: fault events after the fault cursor (every activation raises, every
   clearing clears, the alarm ``fault:<code>`` of its device; fault plans count them), then
   the readings of each plan whose series has a newer value than the plan has seen (``latest``
   says which).
3. Apply completions: a work order of an open occurrence that was completed elsewhere (the
   API, another process; also while the engine was stopped) completes its plan's occurrence
   (``rules.plans.complete`` with the order's completion time and counters), so the plan's
   next due point is computed from the new state. A cancelled order withdraws the order, not
   the maintenance: its occurrence stays open and goes on showing as due, then overdue; no
   second order is opened for it (one order per occurrence).
4. Assess every plan and act on each status once per occurrence, keyed by (plan, cycle):
   - calendar, meter, whichever first: ``upcoming`` gives a notice; ``due``/``overdue``
     records the due occurrence, opens its PM work order (due window from the due date to the
     overdue date, priority from the device's risk class) and gives a notice; a due occurrence
     that turns overdue gives the overdue notice;
   - condition: an alarm of the plan's severity (``condition:<plan id>``) while the condition
     has fired and not re-armed, cleared when a reading comes back past the hysteresis band;
     the occurrence opens a corrective work order, whose completion closes it;
   - fault: a corrective work order (``fault_key`` ``<plan id>:<cycle>``, problem code the
     fault code), besides the alarm every fault raises;
   - supplies: one reorder notice per occurrence; the refill that re-arms the plan closes it.
5. Escalate each critical alarm left unacknowledged for ``notifications.escalate_after``, once.
6. Once per site-local day at ``notifications.digest_at``, the digest. A digest missed while
   the engine was stopped is sent when it starts again the same local day, not for past days.

Everything is worked out from stored state, so a pass can be repeated, or run after a week of
downtime, and still records each occurrence once and notifies about it once: the notification
log refuses a second notice of one event to one recipient. On its first pass the engine
notifies again about every open occurrence, open order and active alarm, so that a notice lost
to a crash between recording and notifying goes out; the log drops the others as repeats.
Notices are sent at the end of the pass, even a failed one, and a failing notice never fails
the pass. A pass that fails (the database is unreachable) is logged and retried by the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import ParamSpec, Protocol
from zoneinfo import ZoneInfo

from core.clock import Clock
from core.config import (
    CalendarPlan,
    ConditionPlan,
    Device,
    FaultPlan,
    MeterPlan,
    Plan,
    SiteConfig,
    SuppliesPlan,
    WhicheverFirstPlan,
)
from core.db import RULES, Alarm, RecordStore, StoredPlanState, WorkOrder, WorkOrderDraft
from core.errors import InvalidRecord, RecordError
from core.notify_config import SEVERITIES, Severity
from core.records import FaultEvent, Reading
from core.store.models import LatestValue
from rules.calendar import local_start
from rules.conditions import FaultState, ThresholdState
from rules.meter import MeterState
from rules.notify.digest import (
    AlarmRow,
    DigestData,
    MaintenanceRow,
    SupplyRow,
    digest_event,
    next_digest_time,
)
from rules.notify.dispatcher import Dispatcher
from rules.notify.errors import InvalidEvent
from rules.notify.events import (
    Event,
    EventKind,
    JsonValue,
    alarm_raised_key,
    due_key,
    escalation_key,
    overdue_key,
    supplies_key,
    upcoming_key,
    work_order_key,
)
from rules.plans import (
    PlanStatus,
    State,
    Status,
    WhicheverFirstState,
    assess,
    complete,
    new_state,
    observe,
    observe_many,
    state_from_json,
)

__all__ = ["FAULT_SEVERITY", "RulesEngine", "TimeSeries"]

log = logging.getLogger(__name__)

_P = ParamSpec("_P")

FAULT_CURSOR = "rules.faults"
DIGEST_CURSOR = "rules.digest"  # the local date (ordinal) of the last digest sent
FAULT_SEVERITY = "major"
READ_BATCH = 10_000
FAULT_BATCH = 1000
PAGE = 1000  # rows read at once when loading alarms and work orders
NOTIFY_CONCURRENCY = 8
DIGEST_DAYS = 7  # "due this week": today and the six days after

_RANK = {Status.OK: 0, Status.UPCOMING: 1, Status.DUE: 2, Status.OVERDUE: 3}
_PRIORITY_OF_RISK = {"high": "high", "medium": "normal", "low": "low"}
_PRIORITY_OF_SEVERITY = {"critical": "urgent", "major": "high", "minor": "normal", "warning": "low"}
_SEVERITY: dict[str, Severity] = {severity: severity for severity in SEVERITIES}
_FINISHED = ("done", "cancelled")


class TimeSeries(Protocol):
    """What the engine reads of the time-series store (SQLite or PostgreSQL)."""

    async def latest(self, device_ids: Sequence[str] | None = None) -> list[LatestValue]:
        """The newest value of every (device, metric) of ``device_ids`` (all when None)."""
        ...

    async def readings_after(
        self, device_id: str, metric: str, after: datetime | None, limit: int = ...
    ) -> list[Reading]:
        """Readings of one metric strictly after ``after``, oldest first."""
        ...

    async def faults_after(self, position: int, limit: int = ...) -> list[tuple[int, FaultEvent]]:
        """Fault events with an id above ``position``, in the order they were stored."""
        ...


@dataclass(slots=True)
class _Entry:
    """One plan on one device, and what the engine remembers of it between passes."""

    device: Device
    plan: Plan
    metric: str | None
    scale: float
    state: State
    fresh: bool = False  # first seen this pass: a gauge plan starts from the latest value
    fired_code: str | None = None  # the fault code that opened a fault plan's occurrence
    # a condition's firings (True) and re-arms (False) since its alarm was last brought in
    # line, oldest first: each raises or clears the alarm at its own time
    transitions: list[tuple[bool, datetime]] = field(default_factory=list)


def _metric(plan: Plan) -> str | None:
    """The metric whose readings the plan folds in, if any."""
    if isinstance(plan, MeterPlan | ConditionPlan | SuppliesPlan):
        return plan.metric
    if isinstance(plan, WhicheverFirstPlan):
        return plan.meter.metric
    return None


def _last_ts(state: State) -> datetime | None:
    """The time of the last reading folded into ``state``."""
    if isinstance(state, WhicheverFirstState):
        return state.meter.last_ts
    if isinstance(state, MeterState | ThresholdState):
        return state.last_ts
    return None


def _is_schedule(plan: Plan) -> bool:
    return isinstance(plan, CalendarPlan | MeterPlan | WhicheverFirstPlan)


def _last_completed(state: State) -> datetime | None:
    if isinstance(state, WhicheverFirstState):
        return state.calendar.last_completed
    return state.last_completed


def _with_cycle(state: State, cycle: int) -> State:
    """A fresh state that goes on counting occurrences from ``cycle``, so that its keys never
    meet occurrences recorded before."""
    if isinstance(state, WhicheverFirstState):
        return WhicheverFirstState(
            replace(state.calendar, cycle=cycle), replace(state.meter, cycle=cycle)
        )
    return replace(state, cycle=cycle)


def _place(device: Device) -> str:
    return f"{device.id} ({device.location})" if device.location else device.id


def _when(moment: datetime | None, zone: ZoneInfo) -> str:
    return "-" if moment is None else f"{moment.astimezone(zone):%Y-%m-%d %H:%M %Z}"


def _condition_type(plan: ConditionPlan) -> str:
    return f"condition:{plan.id}"


def _fault_key(plan: Plan, cycle: int) -> str:
    return f"{plan.id}:{cycle}"


class RulesEngine:
    def __init__(
        self,
        site: SiteConfig,
        series: TimeSeries,
        records: RecordStore,
        *,
        clock: Clock,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self._site = site
        self._series = series
        self._records = records
        self._clock = clock
        self._dispatcher = dispatcher
        self._zone = ZoneInfo(site.site.timezone)
        self._settings = site.notifications
        self._devices = {device.id: device for device in site.devices}
        self._plans: list[tuple[Device, Plan]] = [
            (device, plan) for device in site.devices for plan in site.device_plans(device)
        ]
        self._outbox: list[Event] = []
        self._wake = asyncio.Event()
        self._standings: Mapping[str, PlanStatus] = {}
        self.passes = 0
        self._forget()

    def _forget(self) -> None:
        """Drop what the engine remembers of the records; the next pass loads them afresh."""
        self._entries: dict[str, _Entry] = {}
        self._fault_entries: dict[str, list[_Entry]] = {}
        self._loaded = False
        self._first = True
        self._dirty: set[str] = set()
        self._fault_position = 0
        # what the records hold, as far as this engine changed or read them
        self._alarms: dict[tuple[str, str], Alarm] = {}
        self._open_dues: dict[str, set[int]] = {}
        # the furthest status acted on per occurrence: each is recorded and notified once
        self._handled: dict[tuple[str, int], int] = {}
        self._orders: dict[int, tuple[str, int]] = {}  # open orders -> their occurrence
        self._refused: set[int] = set()  # completions that could not be applied
        self._completed: set[str] = set()  # plans completed while acting on this pass
        # orders not finished when the engine started: the first pass need not open them again
        self._unfinished: dict[str, WorkOrder] = {}
        self._next_digest: datetime | None = None

    # --- running -------------------------------------------------------------------------

    def wake(self) -> None:
        """New records are stored: make the next pass now rather than at the next tick."""
        self._wake.set()

    async def run(self, tick: float) -> None:
        """A pass every ``tick`` seconds, or sooner when woken, until cancelled. Each run
        starts from the records: an engine elected again after another one led meanwhile
        must not act on what it remembered from before."""
        self._forget()
        while True:
            self._wake.clear()
            try:
                await self.evaluate()
            except Exception:
                # one failed pass must not stop maintenance tracking; the next one retries
                log.exception("rules: evaluation failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=tick)

    async def evaluate(self) -> list[PlanStatus]:
        """One pass at the clock's time; returns every plan's status. ``passes`` counts the
        passes done, their notices handed to the dispatcher."""
        try:
            statuses = await self._pass(self._clock.now())
        finally:
            # also after a failure: what was recorded before it is notified now
            events, self._outbox = self._outbox, []
            await self._send(events)
        self.passes += 1
        self._standings = {status.plan_id: status for status in statuses}
        return statuses

    async def standings(self) -> Mapping[str, PlanStatus]:
        """Every plan's status at the last pass, by plan id (a new mapping per pass), for the
        API in the same process."""
        return self._standings

    async def _pass(self, now: datetime) -> list[PlanStatus]:
        if not self._loaded:
            await self._load(now)
        fault_position = await self._fold_faults()
        await self._fold_readings()
        await self._apply_completions(now)
        await self._save(now)
        if fault_position != self._fault_position:
            # after the states that folded these events are saved: a crash in between feeds
            # them again, and the fault states and alarms skip what they have seen
            await self._records.set_cursor(FAULT_CURSOR, fault_position)
            self._fault_position = fault_position
        statuses = [self._assess(plan_id, now) for plan_id in self._entries]
        self._completed.clear()
        await self._act(statuses, now)
        if self._completed:
            # orders found done while acting (completed while the engine was stopped)
            statuses = [
                self._assess(s.plan_id, now) if s.plan_id in self._completed else s
                for s in statuses
            ]
            await self._save(now)
        await self._escalate(now)
        await self._digest(statuses, now)
        self._first = False
        self._unfinished.clear()
        return statuses

    def _assess(self, plan_id: str, now: datetime) -> PlanStatus:
        entry = self._entries[plan_id]
        return assess(entry.plan, entry.state, now, self._zone)

    # --- loading -------------------------------------------------------------------------

    async def _load(self, now: datetime) -> None:
        stored = await self._records.plan_states()
        entries: dict[str, _Entry] = {}
        for device, plan in self._plans:
            metric = _metric(plan)
            scale = device.channels[metric].scale if metric is not None else 1.0
            document = stored.get(plan.id)
            state = None if document is None else self._read(plan, document)
            entry = _Entry(device, plan, metric, scale, state or new_state(plan, now))
            if state is None:
                entry.fresh = True
                if document is not None:
                    entry.state = _with_cycle(entry.state, document.cycle)
                self._dirty.add(plan.id)
            entries[plan.id] = entry
            if isinstance(plan, FaultPlan):
                self._fault_entries.setdefault(device.id, []).append(entry)
        self._entries = entries
        self._alarms = {(a.device_id, a.type): a for a in await self._all_alarms(active=True)}
        for due in await self._records.maintenance_due(open_only=True):
            self._open_dues.setdefault(due.plan_id, set()).add(due.cycle)
        for entry in entries.values():
            if isinstance(entry.plan, ConditionPlan):
                await self._unraised_firing(entry.plan, entry)
        for unfinished in ("open", "in_progress", "on_hold"):
            for order in await self._all_orders(unfinished):
                self._unfinished[_order_key(order.plan_id, order.cycle, order.fault_key)] = order
        self._fault_position = await self._records.cursor(FAULT_CURSOR)
        self._next_digest = await self._first_digest_time(now)
        self._loaded = True

    def _read(self, plan: Plan, document: StoredPlanState) -> State | None:
        try:
            return state_from_json(plan, document.state)
        except InvalidRecord as exc:
            log.warning("rules: %s; the plan starts afresh", exc)
            return None

    async def _all_alarms(
        self, *, active: bool | None, device_id: str | None = None
    ) -> list[Alarm]:
        found: list[Alarm] = []
        after: int | None = None
        while True:
            page = await self._records.alarms(
                active=active, device_id=device_id, after=after, limit=PAGE
            )
            found += page.items
            if page.next_after is None:
                return found
            after = page.next_after

    async def _all_orders(self, state: str) -> list[WorkOrder]:
        found: list[WorkOrder] = []
        after: int | None = None
        while True:
            page = await self._records.work_orders(state=state, after=after, limit=PAGE)
            found += page.items
            if page.next_after is None:
                return found
            after = page.next_after

    async def _unraised_firing(self, plan: ConditionPlan, entry: _Entry) -> None:
        """A condition that has fired and not re-armed, without an active alarm: its alarm
        was cleared by hand, or a crash came between saving the state and raising it. The
        newest alarm of its type tells: raised after the last re-arm, it was this firing's."""
        state = entry.state
        assert isinstance(state, ThresholdState)
        kind = _condition_type(plan)
        if state.armed or state.fired_at is None or (entry.device.id, kind) in self._alarms:
            return
        alarms = await self._all_alarms(active=False, device_id=entry.device.id)
        newest = max((a.first_seen for a in alarms if a.type == kind), default=None)
        rearmed = state.rearmed_at
        if newest is not None and (rearmed is None or newest > rearmed):
            return
        # a repeat's own firing time is not kept; its last reading is the nearest known
        fired = state.fired_at if rearmed is None or state.fired_at > rearmed else state.last_ts
        entry.transitions.append((True, fired or state.fired_at))

    async def _first_digest_time(self, now: datetime) -> datetime:
        """Today's digest time when today's digest was missed while the engine was stopped
        (it ran on an earlier day and the time has passed); else the next digest time."""
        today = now.astimezone(self._zone).date()
        at_today = self._digest_moment(today)
        last = await self._records.cursor(DIGEST_CURSOR)
        if 0 < last < today.toordinal() and at_today <= now:
            return at_today
        return next_digest_time(now, self._zone, self._settings.digest_at)

    def _digest_moment(self, day: date) -> datetime:
        """When the digest of the local ``day`` is due."""
        midnight = local_start(day, self._zone)
        return next_digest_time(
            midnight - timedelta(microseconds=1), self._zone, self._settings.digest_at
        )

    # --- folding records in --------------------------------------------------------------

    async def _fold_faults(self) -> int:
        """Fault events after the cursor: the alarms they raise and clear, and the fault
        plans' states. Returns the cursor's new position, saved once the states are."""
        position = self._fault_position
        raised: list[Alarm] = []
        while True:
            events = await self._series.faults_after(position, FAULT_BATCH)
            for event_id, event in events:
                alarm = await self._fault_alarm(event)
                if alarm is not None:
                    raised.append(alarm)
                for entry in self._fault_entries.get(event.device_id, ()):
                    folded = observe(entry.plan, entry.state, event)
                    if folded is not entry.state:
                        if _is_open(folded) and not _is_open(entry.state):
                            entry.fired_code = event.code
                        entry.state = folded
                        self._dirty.add(entry.plan.id)
                position = event_id
            if len(events) < FAULT_BATCH:
                break
        for alarm in raised:
            # a fault raised and cleared within the batch (history read at a first start)
            # is not news any more
            current = self._alarms.get((alarm.device_id, alarm.type))
            if current is not None and current.id == alarm.id:
                self._queue(self._alarm_event, current)
        return position

    async def _fault_alarm(self, event: FaultEvent) -> Alarm | None:
        """Raise or clear ``fault:<code>``; returns an alarm this call raised anew."""
        kind = f"fault:{event.code}"
        key = (event.device_id, kind)
        active = self._alarms.get(key)
        if event.active:
            if active is not None and active.last_seen >= event.ts:
                return None  # seen before: the events are being read again after a failure
            alarm, created = await self._records.raise_alarm(
                event.device_id,
                kind,
                FAULT_SEVERITY,
                f"{event.device_id} reports fault {event.code}",
                event.ts,
            )
            self._alarms[key] = alarm
            return alarm if created else None
        if active is not None:
            await self._records.clear_alarm(event.device_id, kind, event.ts)
            del self._alarms[key]
        return None

    async def _fold_readings(self) -> None:
        """Fold each plan's new readings in; only series whose latest value is newer than the
        plan's last reading are read. A meter counts from the first reading ever stored; a
        new condition or supplies plan judges what happens from the latest value on, not the
        device's whole history (an excursion last month was someone else's business)."""
        latest: dict[tuple[str, str], LatestValue] = {
            (value.device_id, value.metric): value for value in await self._series.latest(None)
        }
        for entry in self._entries.values():
            metric = entry.metric
            fresh, entry.fresh = entry.fresh, False
            if metric is None:
                continue
            newest = latest.get((entry.device.id, metric))
            if newest is None:
                continue
            state = entry.state
            if fresh and isinstance(state, ThresholdState):
                reading = Reading(entry.device.id, metric, newest.value, newest.ts)
                state = self._observe(entry, state, [reading])
            last = _last_ts(state)
            while last is None or newest.ts > last:
                readings = await self._series.readings_after(
                    entry.device.id, metric, last, READ_BATCH
                )
                state = self._observe(entry, state, readings)
                if len(readings) < READ_BATCH:
                    break
                last = _last_ts(state)
            if state is not entry.state:
                entry.state = state
                self._dirty.add(entry.plan.id)

    def _observe(self, entry: _Entry, state: State, readings: Sequence[Reading]) -> State:
        """Fold readings in; a condition's firings and re-arms are noted on the way, since a
        batch may hold several."""
        plan = entry.plan
        if not isinstance(plan, ConditionPlan):
            return observe_many(plan, state, readings, entry.scale)
        duration = timedelta(seconds=plan.duration)
        for reading in readings:
            before = state
            state = observe(plan, state, reading)
            if not isinstance(before, ThresholdState) or not isinstance(state, ThresholdState):
                continue
            if before.armed and not state.armed:
                # the moment the breach had lasted ``for``: also for a repeat, whose firing
                # does not move ``fired_at``
                entry.transitions.append((True, (before.breach_since or reading.ts) + duration))
            elif state.armed and not before.armed:
                entry.transitions.append((False, state.rearmed_at or reading.ts))
        return state

    # --- completions ---------------------------------------------------------------------

    async def _apply_completions(self, now: datetime) -> None:
        """Orders this engine opened that were finished elsewhere since the last pass."""
        if not self._orders:
            return
        for order in await self._records.finished_work_orders(self._orders):
            occurrence = self._orders.pop(order.id)
            if order.state == "cancelled":
                log.warning(
                    "rules: work order %d for %s occurrence %d was cancelled; the occurrence "
                    "stays open",
                    order.id,
                    *occurrence,
                )
                continue
            entry = self._entries.get(occurrence[0])
            if entry is not None:
                self._complete(entry, order, now)

    def _complete(self, entry: _Entry, order: WorkOrder, now: datetime) -> None:
        """Complete the plan's current occurrence from a done work order of it (once)."""
        cycle = entry.state.cycle
        if order.kind == "pm":
            serves = (order.plan_id, order.cycle) == (entry.plan.id, cycle)
        else:
            serves = order.fault_key == _fault_key(entry.plan, cycle)
        if not serves or order.id in self._refused:
            return
        at = order.completed_at or now
        try:
            entry.state = complete(entry.plan, entry.state, at, order.counters or {}, self._zone)
        except InvalidRecord as exc:
            self._refused.add(order.id)
            log.warning("rules: work order %d cannot complete its plan: %s", order.id, exc)
            return
        entry.fired_code = None
        self._dirty.add(entry.plan.id)
        self._completed.add(entry.plan.id)
        log.info(
            "rules: %s on %s completed by work order %d at %s",
            entry.plan.id,
            entry.device.id,
            order.id,
            at.isoformat(),
        )

    async def _save(self, now: datetime) -> None:
        if not self._dirty:
            return
        batch = [
            StoredPlanState(
                plan_id=plan_id,
                device_id=entry.device.id,
                cycle=entry.state.cycle,
                state=entry.state.to_json(),
                updated_at=now,
            )
            for plan_id in sorted(self._dirty)
            if (entry := self._entries.get(plan_id)) is not None
        ]
        await self._records.save_plan_states(batch)
        self._dirty.clear()

    # --- acting on statuses --------------------------------------------------------------

    async def _act(self, statuses: Sequence[PlanStatus], now: datetime) -> None:
        for status in statuses:
            entry = self._entries[status.plan_id]
            if entry.transitions:
                await self._guarded(entry, self._condition_alarm(entry))
            rank = _RANK[status.status]
            before = 0 if self._first else self._handled.get(status.key, 0)
            if rank <= before:
                continue
            if await self._guarded(entry, self._occurrence(entry, status, before, now)):
                self._handled[status.key] = rank
        await self._close_served(now)
        if self._first:
            for alarm in self._alarms.values():
                self._queue(self._alarm_event, alarm)

    async def _guarded(self, entry: _Entry, work: Awaitable[None]) -> bool:
        """Run one plan's work; a record refused for that plan (a bug or bad data) is logged
        and the other plans go on. A database that fails fails the pass."""
        try:
            await work
        except RecordError:
            log.exception("rules: acting on %s of %s failed", entry.plan.id, entry.device.id)
            return False
        return True

    async def _occurrence(
        self, entry: _Entry, status: PlanStatus, before: int, now: datetime
    ) -> None:
        """Act on a status this occurrence reaches for the first time (``before``: the rank
        acted on so far; 0 on the first pass, which acts on every open occurrence again)."""
        plan = entry.plan
        if status.status is Status.UPCOMING:
            self._queue(self._maintenance_event, entry, status, "maintenance_upcoming")
            return
        overdue = status.status is Status.OVERDUE
        if before >= _RANK[Status.DUE]:
            # recorded while due; now overdue
            self._queue(self._maintenance_event, entry, status, "maintenance_overdue")
            return
        if await self._record_due(entry, status, now):
            log.info(
                "rules: %s on %s is %s (%s)", plan.id, entry.device.id, status.status, status.detail
            )
        if isinstance(plan, SuppliesPlan):
            self._queue(self._supplies_event, entry, status)
            return
        order = await self._open_order(entry, status, now)
        if order is not None and _is_schedule(plan):
            kind: EventKind = "maintenance_overdue" if overdue else "maintenance_due"
            self._queue(self._maintenance_event, entry, status, kind)

    async def _record_due(self, entry: _Entry, status: PlanStatus, now: datetime) -> bool:
        """Record the due occurrence; True when this call recorded it."""
        plan_id, cycle = status.key
        if cycle in self._open_dues.get(plan_id, ()):
            return False
        due = await self._records.open_due(
            plan_id,
            entry.device.id,
            cycle,
            str(status.basis),
            status.detail,
            status.due_at,
            status.due_value,
            now,
        )
        self._open_dues.setdefault(plan_id, set()).add(cycle)
        return due is not None

    async def _open_order(
        self, entry: _Entry, status: PlanStatus, now: datetime
    ) -> WorkOrder | None:
        """Open the occurrence's work order (or find it); None when it was done already, in
        which case its completion is applied now."""
        draft = self._draft(entry, status, now)
        known = self._unfinished.pop(_order_key(draft.plan_id, draft.cycle, draft.fault_key), None)
        if known is not None:
            order, created = known, False
        else:
            order, created = await self._records.open_work_order(draft, RULES)
        if order.state == "done":
            self._complete(entry, order, now)
            return None
        if order.state in _FINISHED:
            return order  # cancelled: the occurrence stays open without an order
        self._orders[order.id] = status.key
        code = entry.fired_code or _fault_code(entry)
        if isinstance(entry.plan, FaultPlan) and order.problem_code is None and code is not None:
            order = await self._records.update_work_order(order.id, actor=RULES, problem_code=code)
        if created or (self._first and order.state == "open"):
            self._queue(self._order_event, entry, order)
        return order

    def _draft(self, entry: _Entry, status: PlanStatus, now: datetime) -> WorkOrderDraft:
        plan, device = entry.plan, entry.device
        cycle = status.cycle
        if _is_schedule(plan):
            due_from = status.due_at if status.due_at is not None and status.due_at <= now else now
            due_to = status.overdue_at
            if due_to is not None and due_to < due_from:
                due_to = None
            return WorkOrderDraft(
                kind="pm",
                device_id=device.id,
                title=f"{plan.name} on {device.id}",
                plan_id=plan.id,
                cycle=cycle,
                priority=_PRIORITY_OF_RISK[device.risk_class],
                due_from=due_from,
                due_to=due_to,
                notes=status.detail,
            )
        priority: str
        if isinstance(plan, FaultPlan):
            priority = "normal" if plan.priority == "medium" else plan.priority
        else:
            assert isinstance(plan, ConditionPlan)
            priority = _PRIORITY_OF_SEVERITY[plan.severity]
        return WorkOrderDraft(
            kind="corrective",
            device_id=device.id,
            title=f"{plan.name} on {device.id}",
            fault_key=_fault_key(plan, cycle),
            priority=priority,
            due_from=status.due_at,
            notes=status.detail,
        )

    async def _condition_alarm(self, entry: _Entry) -> None:
        """Bring the condition's alarm in line with its firings and re-arms, in order: active
        from a firing until the next re-arm. Notified when it is still active at the end."""
        plan = entry.plan
        assert isinstance(plan, ConditionPlan)
        kind = _condition_type(plan)
        key = (entry.device.id, kind)
        raised: Alarm | None = None
        while entry.transitions:
            fired, moment = entry.transitions[0]
            if fired:
                side = "above" if plan.above is not None else "below"
                message = f"{plan.name}: {plan.metric} {side} {plan.threshold:g}"
                alarm, created = await self._records.raise_alarm(
                    entry.device.id, kind, plan.severity, message, moment
                )
                self._alarms[key] = alarm
                raised = alarm if created else raised
            elif key in self._alarms:
                await self._records.clear_alarm(entry.device.id, kind, moment)
                del self._alarms[key]
            entry.transitions.pop(0)
        if raised is not None and key in self._alarms and self._alarms[key].id == raised.id:
            self._queue(self._alarm_event, self._alarms[key])

    async def _close_served(self, now: datetime) -> None:
        """Close the due occurrences a plan has moved past (a completion, a refill)."""
        for plan_id, cycles in list(self._open_dues.items()):
            entry = self._entries.get(plan_id)
            if entry is None:
                continue
            state = entry.state
            for cycle in sorted(c for c in cycles if c < state.cycle):
                at = _last_completed(state) or now
                if isinstance(state, ThresholdState) and state.type == "supplies":
                    at = state.rearmed_at or at
                await self._records.close_due(plan_id, cycle, at)
                cycles.discard(cycle)
                self._handled.pop((plan_id, cycle), None)
            if not cycles:
                del self._open_dues[plan_id]

    # --- escalation and digest -----------------------------------------------------------

    async def _escalate(self, now: datetime) -> None:
        older_than = now - timedelta(seconds=self._settings.escalate_after)
        if self._first:
            # escalated before a crash took the notice: notify again, the log drops repeats
            for alarm in self._alarms.values():
                if alarm.escalated_at is not None and not alarm.acknowledged:
                    self._queue(self._escalation_event, alarm)
        for alarm in await self._records.unacknowledged_critical(older_than=older_than):
            self._queue(self._escalation_event, alarm)
            escalated = await self._records.mark_escalated(alarm.id, now)
            if (alarm.device_id, alarm.type) in self._alarms:
                self._alarms[(alarm.device_id, alarm.type)] = escalated

    async def _digest(self, statuses: Sequence[PlanStatus], now: datetime) -> None:
        if self._next_digest is None or now < self._next_digest:
            return
        today = now.astimezone(self._zone).date()
        if now >= self._digest_moment(today) and self._dispatcher is not None:
            data = await self._digest_data(statuses, today)
            # sent before the cursor moves: a crash in between sends it again on restart,
            # and the notification log drops the repeat
            await self._send(self._made(digest_event, data))
            await self._records.set_cursor(DIGEST_CURSOR, today.toordinal())
        # a digest of a past day (the clock jumped) is not sent: tomorrow's comes on time
        self._next_digest = next_digest_time(now, self._zone, self._settings.digest_at)

    async def _digest_data(self, statuses: Sequence[PlanStatus], today: date) -> DigestData:
        week_end = today + timedelta(days=DIGEST_DAYS)
        overdue: list[MaintenanceRow] = []
        due: list[MaintenanceRow] = []
        supplies: list[SupplyRow] = []
        for status in statuses:
            entry = self._entries[status.plan_id]
            device, plan = entry.device, entry.plan
            if isinstance(plan, SuppliesPlan):
                if status.status is Status.DUE:
                    since = _when(status.fired_at, self._zone)
                    detail = f"{plan.metric} below {plan.below:g} since {since}"
                    supplies.append(SupplyRow(device.id, device.location, plan.item, detail))
                continue
            if not _is_schedule(plan):
                continue
            due_on = self._due_on(status, today)
            row = MaintenanceRow(device.id, device.location, plan.name, due_on or today)
            if status.status is Status.OVERDUE:
                overdue.append(row)
            elif status.status is Status.DUE or (due_on is not None and due_on < week_end):
                due.append(row)
        alarms = [
            AlarmRow(
                alarm.device_id,
                self._location(alarm.device_id),
                self._alarm_label(alarm),
                _SEVERITY[alarm.severity],
                alarm.first_seen,
                alarm.acknowledged,
            )
            for alarm in await self._all_alarms(active=True)
        ]
        return DigestData(
            site=self._site.site.name,
            local_date=today,
            timezone=self._site.site.timezone,
            due_this_week=due,
            overdue=overdue,
            open_alarms=alarms,
            supplies=supplies,
        )

    def _due_on(self, status: PlanStatus, today: date) -> date | None:
        """The local date a schedule falls (or fell) due: its calendar date or, for a meter,
        the forecast; the earlier of both for whichever first."""
        dates = [
            moment.astimezone(self._zone).date()
            for moment in (status.due_at, status.forecast_at)
            if moment is not None
        ]
        if status.status in (Status.DUE, Status.OVERDUE) and status.due_at is None:
            return today if not dates else min(dates)
        return min(dates) if dates else None

    # --- notices -------------------------------------------------------------------------

    def _made(self, make: Callable[_P, Event], *args: _P.args, **kwargs: _P.kwargs) -> list[Event]:
        """The event ``make`` builds, or none: an event that cannot be sent (a configured name
        with a line break in a subject) is logged, and the pass goes on."""
        try:
            return [make(*args, **kwargs)]
        except InvalidEvent as exc:
            log.error("rules: a notice could not be made: %s", exc)
            return []

    def _queue(self, make: Callable[_P, Event], *args: _P.args, **kwargs: _P.kwargs) -> None:
        """Queue an event to send at the end of the pass."""
        self._outbox += self._made(make, *args, **kwargs)

    async def _send(self, events: Sequence[Event]) -> None:
        """Hand the events to the dispatcher; a failing notice is logged, never raised."""
        if self._dispatcher is None or not events:
            return
        slots = asyncio.Semaphore(NOTIFY_CONCURRENCY)

        async def send(event: Event) -> None:
            assert self._dispatcher is not None
            async with slots:
                try:
                    await self._dispatcher.notify(event)
                except Exception:
                    log.exception("rules: notifying %s failed", event.key)

        await asyncio.gather(*(send(event) for event in events))

    def _location(self, device_id: str) -> str:
        device = self._devices.get(device_id)
        return device.location if device is not None else ""

    def _alarm_label(self, alarm: Alarm) -> str:
        kind, _, name = alarm.type.partition(":")
        if kind == "fault":
            return f"fault {name}"
        entry = self._entries.get(name)
        return entry.plan.name if kind == "condition" and entry is not None else alarm.type

    def _maintenance_event(self, entry: _Entry, status: PlanStatus, kind: EventKind) -> Event:
        plan, device = entry.plan, entry.device
        plan_id, cycle = status.key
        high_risk = device.risk_class == "high"
        if kind == "maintenance_upcoming":
            key, severity, title = upcoming_key(plan_id, cycle), "info", "Maintenance coming up"
        elif kind == "maintenance_overdue":
            severity = "critical" if high_risk else "major"
            key, title = overdue_key(plan_id, cycle), "Maintenance overdue"
        else:
            severity = "major" if high_risk else "minor"
            key, title = due_key(plan_id, cycle), "Maintenance due"
        lines = [
            f"{plan.name} on {_place(device)}: {status.status}.",
            f"Device: {device.kind} {device.manufacturer} {device.model} serial {device.serial}, "
            f"risk class {device.risk_class}.",
            f"Plan: {status.detail}.",
        ]
        if status.due_at is not None:
            lines.append(f"Due: {_when(status.due_at, self._zone)}.")
        if status.due_value is not None and entry.metric is not None:
            lines.append(f"Due at {entry.metric} = {status.due_value:g}.")
        if status.overdue_at is not None:
            lines.append(f"Overdue from: {_when(status.overdue_at, self._zone)}.")
        if status.forecast_at is not None:
            lines.append(f"Forecast at the recent rate: {_when(status.forecast_at, self._zone)}.")
        data: dict[str, JsonValue] = {
            "plan_id": plan_id,
            "cycle": cycle,
            "status": str(status.status),
            "basis": str(status.basis),
            "due_at": None if status.due_at is None else status.due_at.isoformat(),
            "due_value": status.due_value,
            "usage": status.usage,
            "risk_class": device.risk_class,
        }
        return Event(
            key=key,
            kind=kind,
            severity=_SEVERITY[severity],
            device_id=device.id,
            subject=f"{title}: {plan.name} on {_place(device)}",
            body="\n".join(lines) + "\n",
            data=data,
        )

    def _supplies_event(self, entry: _Entry, status: PlanStatus) -> Event:
        plan, device = entry.plan, entry.device
        assert isinstance(plan, SuppliesPlan)
        return Event(
            key=supplies_key(plan.id, status.cycle),
            kind="supplies_reorder",
            severity="warning",
            device_id=device.id,
            subject=f"Reorder {plan.item}: {plan.name} on {_place(device)}",
            body=f"Reorder {plan.item} for {_place(device)}.\n{status.detail}.\n",
            data={"plan_id": plan.id, "cycle": status.cycle, "item": plan.item},
        )

    def _order_event(self, entry: _Entry, order: WorkOrder) -> Event:
        device = entry.device
        lines = [
            f"Work order {order.id} ({order.kind}, priority {order.priority}) on "
            f"{_place(device)}: {order.title}.",
            f"Due from {_when(order.due_from, self._zone)} to {_when(order.due_to, self._zone)}.",
        ]
        if order.problem_code is not None:
            lines.append(f"Problem code: {order.problem_code}.")
        if order.notes:
            lines.append(order.notes)
        severity = {"urgent": "critical", "high": "major", "normal": "minor"}.get(
            order.priority, "warning"
        )
        return Event(
            key=work_order_key(order.id, "opened"),
            kind="work_order_opened",
            severity=_SEVERITY[severity],
            device_id=device.id,
            subject=f"Work order {order.id} opened: {order.title}",
            body="\n".join(lines) + "\n",
            data={
                "work_order_id": order.id,
                "kind": order.kind,
                "plan_id": order.plan_id,
                "cycle": order.cycle,
                "fault_key": order.fault_key,
                "priority": order.priority,
                "problem_code": order.problem_code,
            },
        )

    def _alarm_data(self, alarm: Alarm) -> dict[str, JsonValue]:
        return {
            "alarm_id": alarm.id,
            "type": alarm.type,
            "severity": alarm.severity,
            "first_seen": alarm.first_seen.isoformat(),
            "count": alarm.count,
        }

    def _alarm_event(self, alarm: Alarm) -> Event:
        place = self._place_of(alarm.device_id)
        return Event(
            key=alarm_raised_key(alarm.id),
            kind="fault_alarm",
            severity=_SEVERITY[alarm.severity],
            device_id=alarm.device_id,
            subject=f"Alarm ({alarm.severity}) on {place}: {self._alarm_label(alarm)}",
            body=(
                f"{alarm.message}.\nSeverity {alarm.severity}, since "
                f"{_when(alarm.first_seen, self._zone)}.\n"
            ),
            data=self._alarm_data(alarm),
        )

    def _escalation_event(self, alarm: Alarm) -> Event:
        place = self._place_of(alarm.device_id)
        minutes = self._settings.escalate_after / 60
        return Event(
            key=escalation_key(alarm.id),
            kind="alarm_escalated",
            severity="critical",
            device_id=alarm.device_id,
            subject=f"Escalated: {self._alarm_label(alarm)} on {place} is not acknowledged",
            body=(
                f"{alarm.message}.\nThis {alarm.severity} alarm was raised "
                f"{_when(alarm.first_seen, self._zone)} and nobody has acknowledged it "
                f"within {minutes:g} minutes.\n"
            ),
            data=self._alarm_data(alarm),
        )

    def _place_of(self, device_id: str) -> str:
        device = self._devices.get(device_id)
        return _place(device) if device is not None else device_id


def _order_key(plan_id: str | None, cycle: int | None, fault_key: str | None) -> str:
    """What identifies a work order's occurrence: its plan and cycle, or its fault key."""
    return f"fault:{fault_key}" if fault_key is not None else f"pm:{plan_id}:{cycle}"


def _is_open(state: State) -> bool:
    return isinstance(state, ThresholdState | FaultState) and state.open


def _fault_code(entry: _Entry) -> str | None:
    """The code to record as a fault occurrence's problem: the plan's only code, or the last
    matching code the plan saw."""
    plan, state = entry.plan, entry.state
    if not isinstance(plan, FaultPlan) or not isinstance(state, FaultState):
        return None
    codes = plan.fault_codes
    if codes is not None and len(codes) == 1:
        return next(iter(codes))
    return state.last_codes[-1] if state.last_codes else None
