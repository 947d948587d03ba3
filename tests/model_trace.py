"""Tracing a simulated device model through time, to show that how it is advanced never
changes what it reports."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from simulators.devices.base import DeviceModel, Value

Snapshot = tuple[dict[str, Value], list[str]]


def steps(start: datetime, end: datetime, step: timedelta) -> Iterator[datetime]:
    now = start
    while now < end:
        now = min(now + step, end)
        yield now


def trace(
    model: DeviceModel, checkpoints: list[datetime], step: timedelta | None
) -> list[Snapshot]:
    """The model at every checkpoint; with ``step``, also advanced by ``step`` in between."""
    snapshots: list[Snapshot] = []
    for checkpoint in checkpoints:
        if step is not None:
            for now in steps(model.now, checkpoint, step):
                model.advance(now)
        model.advance(checkpoint)
        snapshots.append((model.values(), model.faults()))
    return snapshots
