"""Alarms raised from device faults and conditions (list, acknowledge, clear), the audit log,
and the messages that could not be read."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from api.auth import ADMIN, MANAGER, TECHNICIAN, Principal, require
from api.deps import ClockDep, Reader, RecordsDep, SeriesDep
from api.pagination import (
    MAX_LIMIT,
    CursorQuery,
    LimitQuery,
    decode_id_cursor,
    encode_cursor,
)
from api.params import IdPath
from api.schemas import (
    AlarmOut,
    AlarmPage,
    AuditEntryOut,
    AuditPage,
    DeadLetterOut,
    DeadLetterPage,
)
from core.db import Alarm
from core.errors import NotFound

router = APIRouter(tags=["alarms"])

DEAD_LETTERS_KEPT = 10_000
"""How far back the dead-letter listing reaches: the store lists only its newest ones."""


def _out(alarm: Alarm) -> AlarmOut:
    return AlarmOut.model_validate(dataclasses.asdict(alarm))


@router.get("/alarms", response_model=AlarmPage, summary="Alarms, oldest first")
async def list_alarms(
    _: Reader,
    records: RecordsDep,
    active: Annotated[bool | None, Query(description="true: active only; false: cleared")] = None,
    device_id: Annotated[str | None, Query(max_length=200)] = None,
    severity: Literal["critical", "major", "minor", "warning"] | None = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 100,
) -> AlarmPage:
    after = decode_id_cursor("alarms", cursor)
    page = await records.alarms(
        active=active, device_id=device_id, severity=severity, after=after, limit=limit
    )
    next_cursor = encode_cursor("alarms", [page.next_after]) if page.next_after else None
    return AlarmPage(items=[_out(alarm) for alarm in page.items], next_cursor=next_cursor)


@router.get("/alarms/{alarm_id}", response_model=AlarmOut, summary="One alarm")
async def get_alarm(alarm_id: IdPath, _: Reader, records: RecordsDep) -> AlarmOut:
    alarm = await records.alarm(alarm_id)
    if alarm is None:
        raise NotFound(f"no alarm {alarm_id}")
    return _out(alarm)


@router.post(
    "/alarms/{alarm_id}/acknowledge",
    response_model=AlarmOut,
    summary="Acknowledge an alarm (acknowledging twice keeps the first)",
)
async def acknowledge_alarm(
    alarm_id: IdPath,
    principal: Annotated[Principal, Depends(require(TECHNICIAN, MANAGER, ADMIN))],
    records: RecordsDep,
    clock: ClockDep,
) -> AlarmOut:
    return _out(await records.acknowledge_alarm(alarm_id, principal.name, clock.now()))


@router.post(
    "/alarms/{alarm_id}/clear",
    response_model=AlarmOut,
    summary="Clear an alarm by hand (it clears by itself when the device reports the fault gone)",
)
async def clear_alarm(
    alarm_id: IdPath,
    principal: Annotated[Principal, Depends(require(ADMIN))],
    records: RecordsDep,
    clock: ClockDep,
) -> AlarmOut:
    return _out(await records.clear_alarm_by_id(alarm_id, principal.name, clock.now()))


@router.get(
    "/audit",
    response_model=AuditPage,
    tags=["audit"],
    summary="The audit log: every change to a plan, work order, alarm, device or token",
)
async def audit_log(
    _: Reader,
    records: RecordsDep,
    entity: Annotated[
        str | None, Query(max_length=64, description="plan, work_order, alarm, device, ...")
    ] = None,
    entity_id: Annotated[str | None, Query(max_length=200)] = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = 100,
) -> AuditPage:
    after = decode_id_cursor("audit", cursor)
    page = await records.audit_log(entity=entity, entity_id=entity_id, after=after, limit=limit)
    next_cursor = encode_cursor("audit", [page.next_after]) if page.next_after else None
    return AuditPage(
        items=[AuditEntryOut.model_validate(dataclasses.asdict(e)) for e in page.items],
        next_cursor=next_cursor,
    )


@router.get(
    "/dead-letters",
    response_model=DeadLetterPage,
    summary="Messages that could not be read, newest first",
    description=f"The newest {DEAD_LETTERS_KEPT:,} are listed.",
)
async def list_dead_letters(
    _: Reader,
    series: SeriesDep,
    cursor: CursorQuery = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> DeadLetterPage:
    before = decode_id_cursor("dead-letters", cursor)
    # the store lists the newest only, with no cursor of its own: page within them by id
    letters = await series.dead_letters(DEAD_LETTERS_KEPT)
    if before is not None:
        letters = [letter for letter in letters if letter.id < before]
    page = letters[:limit]
    more = len(letters) > limit
    next_cursor = encode_cursor("dead-letters", [page[-1].id]) if more else None
    return DeadLetterPage(
        items=[DeadLetterOut.model_validate(dataclasses.asdict(letter)) for letter in page],
        next_cursor=next_cursor,
    )
