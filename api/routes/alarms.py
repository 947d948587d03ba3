"""Alarms raised from device faults, and the messages that could not be read."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import StoreDep
from api.schemas import AlarmOut, DeadLetterOut

router = APIRouter(tags=["alarms"])


@router.get("/alarms", response_model=list[AlarmOut], summary="Alarms, newest first")
async def list_alarms(
    store: StoreDep, active: Annotated[bool, Query(description="only active alarms")] = False
) -> list[AlarmOut]:
    return [AlarmOut(**asdict(alarm)) for alarm in await store.alarms(active_only=active)]


@router.get(
    "/dead-letters", response_model=list[DeadLetterOut], summary="Messages that could not be read"
)
async def list_dead_letters(
    store: StoreDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[DeadLetterOut]:
    return [DeadLetterOut(**asdict(letter)) for letter in await store.dead_letters(limit)]
