"""The rules engine: evaluates every plan and turns device faults into alarms, on a tick.

Each pass loads every plan's stored state, folds in the records that arrived since (counter
and gauge readings per plan, fault events from a cursor), saves the states that changed, then
assesses every plan at the clock's time and records each occurrence that needs action once,
keyed by (plan, cycle). Every decision comes from stored state, so a pass can be repeated, or
run after the engine was down for a week, and still records each occurrence exactly once.

A plan's state is kept as JSON (``rules.plans``) in the store's ``plan_state_json`` table. A
stored state that cannot be read for its plan (the plan's type was changed under the same id)
is logged and the plan starts afresh: a plan is never skipped.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from zoneinfo import ZoneInfo

from core.clock import Clock
from core.config import (
    ConditionPlan,
    Device,
    FaultPlan,
    MeterPlan,
    Plan,
    SiteConfig,
    SuppliesPlan,
    WhicheverFirstPlan,
)
from core.errors import InvalidRecord
from core.records import Reading
from core.store import SqliteStore
from rules.plans import (
    FaultState,
    MeterState,
    PlanStatus,
    State,
    ThresholdState,
    WhicheverFirstState,
    assess,
    new_state,
    observe,
    observe_many,
    state_from_json,
)

__all__ = ["RulesEngine"]

log = logging.getLogger(__name__)

FAULT_CURSOR = "rules.faults"
FAULT_SEVERITY = "major"
READ_BATCH = 10_000


def _metric(plan: Plan) -> str | None:
    """The metric whose readings the plan folds in, if any."""
    if isinstance(plan, MeterPlan | ConditionPlan | SuppliesPlan):
        return plan.metric
    if isinstance(plan, WhicheverFirstPlan):
        return plan.meter.metric
    return None


def _last_ts(state: State) -> datetime | None:
    """The time of the last record folded into ``state``."""
    if isinstance(state, WhicheverFirstState):
        return state.meter.last_ts
    if isinstance(state, MeterState | ThresholdState | FaultState):
        return state.last_ts
    return None


def _subject(device: Device, plan: Plan) -> str:
    where = f"on {device.id} ({device.location})"
    if isinstance(plan, ConditionPlan):
        return f"Condition: {plan.name} {where}"
    if isinstance(plan, FaultPlan):
        return f"Corrective maintenance: {plan.name} {where}"
    if isinstance(plan, SuppliesPlan):
        return f"Reorder {plan.item}: {plan.name} {where}"
    return f"Maintenance due: {plan.name} {where}"


class RulesEngine:
    def __init__(self, site: SiteConfig, store: SqliteStore, clock: Clock) -> None:
        self._site = site
        self._store = store
        self._clock = clock
        self._zone = ZoneInfo(site.site.timezone)
        self._plans = [
            (device, plan) for device in site.devices for plan in site.device_plans(device)
        ]
        self._fault_plans: dict[str, list[FaultPlan]] = {}
        for device, plan in self._plans:
            if isinstance(plan, FaultPlan):
                self._fault_plans.setdefault(device.id, []).append(plan)
        self._recorded: set[tuple[str, int]] = set()  # keys the store already holds
        self.passes = 0

    async def run(self, tick: float) -> None:
        while True:
            try:
                await self.evaluate()
            except Exception:
                # one failed pass must not stop maintenance tracking; the next tick retries
                log.exception("rules: evaluation failed")
            await asyncio.sleep(tick)

    async def evaluate(self) -> list[PlanStatus]:
        """One pass; returns every plan's status at the clock's time."""
        now = self._clock.now()
        documents = await self._store.plan_documents()
        states: dict[str, State] = {}
        changed: set[str] = set()
        for _, plan in self._plans:
            document = documents.get(plan.id)
            state = None if document is None else self._read(plan, document)
            if state is None:
                state = new_state(plan, now)
                changed.add(plan.id)
            states[plan.id] = state
        fault_position = await self._fold_faults(states, changed)
        for device, plan in self._plans:
            fresh = plan.id in changed and documents.get(plan.id) is None
            folded = await self._fold_readings(device, plan, states[plan.id], fresh=fresh)
            if folded is not states[plan.id]:
                await self._condition_alarm(device, plan, states[plan.id], folded)
                states[plan.id] = folded
                changed.add(plan.id)
        for device, plan in self._plans:
            if plan.id in changed:
                state = states[plan.id]
                await self._store.save_plan_document(
                    plan.id, device.id, state.cycle, state.to_json()
                )
        if fault_position is not None:
            # after the states that folded these events are saved; a crash in between feeds
            # them again, and the fault states ignore events they have already seen
            await self._store.set_cursor(FAULT_CURSOR, fault_position)
        statuses = []
        for device, plan in self._plans:
            status = assess(plan, states[plan.id], now, self._zone)
            if status.needs_action and status.key not in self._recorded:
                await self._record(device, plan, status, now)
            statuses.append(status)
        self.passes += 1
        return statuses

    def _read(self, plan: Plan, document: dict[str, object]) -> State | None:
        try:
            return state_from_json(plan, document)
        except InvalidRecord as exc:
            log.warning("rules: %s; the plan starts afresh", exc)
            return None

    async def _fold_readings(
        self, device: Device, plan: Plan, state: State, *, fresh: bool
    ) -> State:
        """Fold the plan's new readings in. A meter counts from the first reading ever stored;
        a new condition or supplies plan judges what happens from its latest value on, not the
        device's whole history (an excursion last month was someone else's business)."""
        metric = _metric(plan)
        if metric is None:
            return state
        if fresh and isinstance(state, ThresholdState):
            for latest in await self._store.latest([device.id]):
                if latest.metric == metric:
                    reading = Reading(device.id, metric, latest.value, latest.ts)
                    state = observe(plan, state, reading)
        scale = device.channels[metric].scale
        while True:
            readings = await self._store.readings_after(
                device.id, metric, _last_ts(state), READ_BATCH
            )
            state = observe_many(plan, state, readings, scale)
            if len(readings) < READ_BATCH:
                return state

    async def _fold_faults(self, states: dict[str, State], changed: set[str]) -> int | None:
        """Fault events since the cursor: alarms, and the fault plans' states. Returns the
        cursor's new position, to be saved once the states are."""
        position = await self._store.cursor(FAULT_CURSOR)
        events = await self._store.faults_after(position)
        for event_id, event in events:
            if event.active:
                await self._store.raise_alarm(
                    device_id=event.device_id,
                    type=f"fault:{event.code}",
                    severity=FAULT_SEVERITY,
                    message=f"{event.device_id} reports fault {event.code}",
                    ts=event.ts,
                )
            else:
                await self._store.clear_alarm(
                    device_id=event.device_id, type=f"fault:{event.code}", ts=event.ts
                )
            for plan in self._fault_plans.get(event.device_id, ()):
                folded = observe(plan, states[plan.id], event)
                if folded is not states[plan.id]:
                    states[plan.id] = folded
                    changed.add(plan.id)
            position = event_id
        return position if events else None

    async def _condition_alarm(
        self, device: Device, plan: Plan, before: State, after: State
    ) -> None:
        """A condition raises an alarm of its severity when it fires and clears it when it
        re-arms; the work it calls for is the occurrence recorded by ``_record``."""
        if not (
            isinstance(plan, ConditionPlan)
            and isinstance(before, ThresholdState)
            and isinstance(after, ThresholdState)
        ):
            return
        kind = f"condition:{plan.id}"
        if before.armed and not after.armed and after.fired_at is not None:
            await self._store.raise_alarm(
                device_id=device.id,
                type=kind,
                severity=plan.severity,
                message=f"{device.id}: {plan.name}",
                ts=after.fired_at,
            )
        elif not before.armed and after.armed and after.rearmed_at is not None:
            await self._store.clear_alarm(device_id=device.id, type=kind, ts=after.rearmed_at)

    async def _record(self, device: Device, plan: Plan, status: PlanStatus, now: datetime) -> None:
        recorded = await self._store.open_due(
            plan_id=plan.id,
            device_id=device.id,
            cycle=status.cycle,
            basis=str(status.basis),
            detail=status.detail,
            due_at=status.due_at,
            due_value=status.due_value,
            detected=now,
            notice_subject=_subject(device, plan),
        )
        self._recorded.add(status.key)
        if recorded:
            log.info("rules: %s on %s is %s (%s)", plan.id, device.id, status.status, status.detail)
