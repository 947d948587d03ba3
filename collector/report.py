"""Report strategy per metric: keep every sample, or only changes beyond a deadband plus a
heartbeat, as configured on the metric's channel (``report:`` in the site config).

A steady gauge sampled every second would otherwise fill the store with identical values; a
deadband keeps what matters and the heartbeat proves the device is still there. Counters,
states and faults are exact by nature: only a reading whose channel asks for it is filtered.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from collector.base import OnDurable, RecordSink
from core.config import Device, ReportPolicy
from core.records import DeadLetter, Reading, Record

__all__ = ["ReportFilter"]


class ReportFilter:
    """A RecordSink in front of another that drops readings the metric's policy does not keep."""

    def __init__(self, devices: Sequence[Device], sink: RecordSink) -> None:
        self._sink = sink
        self._policies: dict[tuple[str, str], ReportPolicy] = {
            (device.id, name): spec.report
            for device in devices
            for name, spec in device.channels.items()
            if spec.report.mode == "change"
        }
        self._kept: dict[tuple[str, str], tuple[float, datetime]] = {}
        self.suppressed = 0

    def keep(self, reading: Reading) -> bool:
        key = (reading.device_id, reading.metric)
        policy = self._policies.get(key)
        if policy is None:
            return True
        last = self._kept.get(key)
        if (
            last is not None
            and abs(reading.value - last[0]) <= policy.deadband
            and (reading.ts - last[1]).total_seconds() < policy.heartbeat
        ):
            self.suppressed += 1
            return False
        self._kept[key] = (reading.value, reading.ts)
        return True

    async def put(self, records: Sequence[Record], on_durable: OnDurable | None = None) -> None:
        if self._policies:  # most sites keep every sample: then this is a pass-through
            records = [r for r in records if not isinstance(r, Reading) or self.keep(r)]
        await self._sink.put(records, on_durable)

    async def dead_letter(self, letter: DeadLetter, on_durable: OnDurable | None = None) -> None:
        await self._sink.dead_letter(letter, on_durable)
