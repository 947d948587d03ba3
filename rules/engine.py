"""The rules engine: evaluates every plan and turns device faults into alarms, on a tick.

Every decision is computed from stored state, so an evaluation can be repeated, or run after
the engine was down for a week, and records each due occurrence exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from zoneinfo import ZoneInfo

from core.clock import Clock
from core.config import CalendarPlan, Device, SiteConfig, UsagePlan
from core.store import PlanState, SqliteStore
from rules.plans import Due, accumulate_usage, calendar_due, usage_due

__all__ = ["RulesEngine"]

log = logging.getLogger(__name__)

FAULT_CURSOR = "rules.faults"
FAULT_SEVERITY = "major"


class RulesEngine:
    def __init__(self, site: SiteConfig, store: SqliteStore, clock: Clock) -> None:
        self._site = site
        self._store = store
        self._clock = clock
        self._zone = ZoneInfo(site.site.timezone)
        self.passes = 0

    async def run(self, tick: float) -> None:
        while True:
            try:
                await self.evaluate()
            except Exception:
                # one failed pass must not stop maintenance tracking; the next tick retries
                log.exception("rules: evaluation failed")
            await asyncio.sleep(tick)

    async def evaluate(self) -> None:
        now = self._clock.now()
        states = await self._store.plan_states()
        for device in self._site.devices:
            for plan in device.plans:
                state = states.get(plan.id)
                is_new = state is None
                if state is None:
                    state = PlanState(plan_id=plan.id, device_id=device.id, started=now)
                changed = is_new
                due: Due | None
                if isinstance(plan, UsagePlan):
                    readings = await self._store.readings_after(
                        device.id, plan.metric, state.last_ts
                    )
                    changed |= accumulate_usage(state, readings, device.channels[plan.metric].scale)
                    due = usage_due(plan, state)
                else:
                    assert isinstance(plan, CalendarPlan)
                    due = calendar_due(plan, state, now, self._zone)
                if changed:
                    await self._store.save_plan_state(state)
                if due is not None:
                    await self._record_due(device, plan, state, due)
        await self._faults_to_alarms()
        self.passes += 1

    async def _record_due(
        self, device: Device, plan: UsagePlan | CalendarPlan, state: PlanState, due: Due
    ) -> None:
        recorded = await self._store.open_due(
            plan_id=plan.id,
            device_id=device.id,
            cycle=state.cycle,
            basis=due.basis,
            detail=due.detail,
            due_at=due.due_at,
            due_value=due.due_value,
            detected=self._clock.now(),
            notice_subject=f"Maintenance due: {plan.name} on {device.id} ({device.location})",
        )
        if recorded:
            log.info("rules: %s on %s is due (%s)", plan.id, device.id, due.detail)

    async def _faults_to_alarms(self) -> None:
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
            position = event_id
        if events:
            await self._store.set_cursor(FAULT_CURSOR, position)
