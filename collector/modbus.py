"""The polled source: devices read over Modbus TCP on a schedule.

Each device has its own task and its own schedule: a fixed grid of ``interval`` seconds that
starts at a random phase, each poll moved by a random ``±jitter * interval``, so that a
thousand devices configured alike do not all ask at the same instant. A poll is a few reads
planned once (``plan_requests``); the reads of every unit behind one host:port go through one
shared connection (``ModbusEndpoint``), one at a time.

A device that stops answering is handled by a per-device circuit breaker::

    closed --(offline_after_failures failed polls in a row)--> open    (StatusChange offline)
    open   --(first poll that gets any data)----------------> closed  (StatusChange online)

While open the device is tried after a capped, jittered, exponential backoff instead of every
interval, so a dead device on a shared gateway costs one timeout now and then, not one per
interval.

A poll is *late* when it starts more than 10% of its interval after its due time: that
measures the schedule (an overloaded event loop, a sink that holds up its caller). The wait a
started poll then spends queued behind other units of its endpoint is the endpoint's, shown by
``ModbusEndpoint.wait_max``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from collector.base import CollectorStats, FaultTracker, OnlineTracker, RecordSink
from collector.modbus_client import ModbusEndpoint, Table
from core.aio import raise_if_cancelling
from core.clock import Clock
from core.config import Device, ModbusSource, RegisterSpec
from core.errors import DeviceError, DeviceRefused, DeviceTimeout, DeviceUnreachable
from core.records import MetricKind, Quality, Reading, Record
from core.registers import DataType, decode

__all__ = [
    "LATE_FRACTION",
    "BreakerState",
    "DevicePolling",
    "ModbusCollector",
    "PollStats",
    "ReadRequest",
    "backoff_delay",
    "plan_requests",
]

log = logging.getLogger(__name__)

MAX_REGISTERS = 125  # the protocol's limit for one read of registers
MAX_BITS = 2000  # ... and of coils or discrete inputs
LATE_FRACTION = 0.1  # a poll that starts later than this part of its interval is late

BreakerState = Literal["closed", "open"]


@dataclass(frozen=True, slots=True)
class ReadRequest:
    table: Table
    address: int
    count: int
    registers: tuple[RegisterSpec, ...]


def plan_requests(
    registers: Sequence[RegisterSpec], max_gap: int = 0, max_request: int = MAX_REGISTERS
) -> list[ReadRequest]:
    """Merge a device's registers into as few reads as possible.

    Registers of one table are merged while the read stays within ``max_request`` registers
    (bit tables: the protocol's 2,000 bits) and bridges at most ``max_gap`` unused addresses;
    some devices answer a read that touches an unmapped address with exception 2, which is why
    the gap is configured, not guessed. A value is never split across reads (its words must
    come from one answer), so a value wider than ``max_request`` gets a read of its own.
    """
    requests: list[ReadRequest] = []
    by_table: dict[Table, list[RegisterSpec]] = {}
    for spec in registers:
        by_table.setdefault(spec.table, []).append(spec)
    for table, specs in by_table.items():
        limit = MAX_BITS if table in ("coil", "discrete") else min(max_request, MAX_REGISTERS)
        specs.sort(key=lambda s: s.address)
        group: list[RegisterSpec] = []
        start = end = 0
        for spec in specs:
            spec_end = spec.address + spec.registers
            if group and spec.address - end <= max_gap and max(end, spec_end) - start <= limit:
                group.append(spec)
                end = max(end, spec_end)
                continue
            if group:
                requests.append(ReadRequest(table, start, end - start, tuple(group)))
            group, start, end = [spec], spec.address, spec_end
        if group:
            requests.append(ReadRequest(table, start, end - start, tuple(group)))
    return requests


def decode_register(spec: RegisterSpec, words: list[int]) -> tuple[float, int | None]:
    """The scaled value of one register spec and, for counters, the raw integer."""
    value = decode(words, spec.type, byte_order=spec.byte_order, word_order=spec.word_order)
    if isinstance(value, str):
        raise ValueError(f"{spec.name} is a string; strings are not readings")
    raw = int(value) if spec.kind is MetricKind.COUNTER else None
    return value * spec.scale + spec.offset, raw


def backoff_delay(attempt: int, interval: float, cap: float, rng: random.Random) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...) of a device whose breaker is open.

    The base doubles from two intervals up to ``cap`` (never below one interval); the delay is
    drawn from the upper half of it ("equal jitter"), so that devices that failed together
    (a gateway lost power) spread out, yet each gap is at least as long as the one before until
    the cap is reached.
    """
    base = max(interval, min(cap, interval * 2.0 ** min(attempt, 30)))
    return rng.uniform(base / 2, base)


@dataclass
class PollStats:
    """The Modbus collector's own counters, next to the shared ``CollectorStats``
    (``polls_ok`` and ``polls_failed`` by reason live there); exported as metrics."""

    polls_started: int = 0
    polls_late: int = 0  # started more than LATE_FRACTION of the interval after schedule
    polls_skipped: int = 0  # schedule slots dropped because the previous poll overran them
    polls_partial: int = 0  # got data, but some of their reads failed
    lag_max: float = 0.0  # worst lateness of a poll's start, seconds
    requests_failed: Counter[str] = field(default_factory=Counter)  # reads in partial polls
    breaker_opens: int = 0  # times any device's breaker opened
    breakers_open: int = 0  # devices whose breaker is open now

    @property
    def on_time_ratio(self) -> float:
        """Share of started polls that started on time (1.0 before any poll)."""
        if not self.polls_started:
            return 1.0
        return 1.0 - self.polls_late / self.polls_started


@dataclass
class DevicePolling:
    """One device's schedule and breaker, as its task keeps them (read-only to others)."""

    breaker: BreakerState = "closed"
    failures: int = 0  # consecutive failed polls
    polls: int = 0  # polls started
    late: int = 0  # ... of which late
    retry_in: float | None = None  # while open: seconds to the next attempt when last set


@dataclass(frozen=True, slots=True)
class _Target:
    device: Device
    source: ModbusSource
    endpoint: ModbusEndpoint
    requests: tuple[ReadRequest, ...]


class ModbusCollector:
    """Polls every Modbus device on its own schedule, one task per device.

    Devices behind the same host:port share one ``ModbusEndpoint`` (one connection, one
    request at a time, the largest ``pause`` any of them asks for). A slow or dead device
    delays only the requests queued behind it on its own endpoint, by at most its timeout;
    devices on other endpoints never wait for it.

    Partial answers: a read is all-or-nothing, a poll is not. Readings from the reads that
    answered are emitted with ``Quality.GOOD`` (each value came whole from one answer; nothing
    about it is uncertain), the registers of a read that failed are skipped for this poll, and
    the poll counts as failed (for ``polls_failed`` and the breaker) only when no read
    answered. Fault bits are only compared with the previous poll when every read that carries
    fault bits answered, so a failed read never "clears" a fault. After a timeout or a lost
    connection the poll's remaining reads are not tried (they would cost one timeout each,
    holding up every unit on the endpoint); after an exception response they are.

    ``retries`` extra attempts are made of a read that timed out or found no connection, not of
    one answered with an exception (the device is there and has said no; asking again at once
    rarely changes that, and busy devices need time, which the schedule gives them).

    Nothing a poll raises ends a task, except cancellation: device errors are counted by reason,
    anything else (a decoding bug, a failing sink) under ``polls_failed["error"]`` and logged.
    """

    def __init__(
        self,
        devices: Sequence[Device],
        *,
        sink: RecordSink,
        clock: Clock,
        stats: CollectorStats | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._sink = sink
        self._clock = clock
        self._rng = rng or random.Random()
        self.stats = stats or CollectorStats()
        self.poll_stats = PollStats()
        self._online = OnlineTracker()
        self._faults = FaultTracker()
        self._polling: dict[str, DevicePolling] = {}
        self._errors_logged: set[str] = set()
        sources: dict[tuple[str, int], list[ModbusSource]] = {}
        for device in devices:
            source = device.source
            if not isinstance(source, ModbusSource):
                raise TypeError(f"device {device.id} is not read over Modbus")
            sources.setdefault((source.host, source.port), []).append(source)
        self._endpoints = {
            key: ModbusEndpoint(
                *key,
                timeout=max(s.timeout for s in shared),
                pause=max(s.pause for s in shared),
            )
            for key, shared in sources.items()
        }
        self._targets: list[_Target] = []
        for device in devices:
            source = device.source
            assert isinstance(source, ModbusSource)
            requests = plan_requests(source.registers, source.max_gap, source.max_request)
            endpoint = self._endpoints[(source.host, source.port)]
            self._targets.append(_Target(device, source, endpoint, tuple(requests)))
            self._polling[device.id] = DevicePolling()

    @property
    def endpoints(self) -> Mapping[tuple[str, int], ModbusEndpoint]:
        return self._endpoints

    @property
    def polling(self) -> Mapping[str, DevicePolling]:
        """Each device's schedule and breaker state, by device id."""
        return self._polling

    @property
    def breakers(self) -> dict[str, BreakerState]:
        """Each device's breaker, "closed" (polled every interval) or "open" (offline, tried
        with backoff), by device id."""
        return {device_id: state.breaker for device_id, state in self._polling.items()}

    def device_states(self) -> dict[str, bool]:
        """Online (True) or offline for each device this collector has heard from or polled."""
        return self._online.states()

    async def run(self) -> None:
        """Poll every device until cancelled."""
        try:
            async with asyncio.TaskGroup() as tasks:
                for target in self._targets:
                    tasks.create_task(
                        self._poll_forever(target), name=f"modbus[{target.device.id}].poll"
                    )
        finally:
            for endpoint in self._endpoints.values():
                endpoint.close()

    async def _poll_forever(self, target: _Target) -> None:
        """Keep one device's schedule: poll at each slot of its grid (moved by jitter), or after
        the backoff while its breaker is open."""
        source = target.source
        state = self._polling[target.device.id]
        interval = source.interval
        loop = asyncio.get_running_loop()
        origin = loop.time() + self._rng.uniform(0, interval)  # random phase
        slot = 0
        due = origin
        while True:
            await asyncio.sleep(max(due - loop.time(), 0.0))
            self._started(state, loop.time() - due, interval)
            backing_off = state.breaker == "open"
            try:
                await self._poll_once(target, state)
            except Exception as exc:  # a bug or a failing sink must not end the device's task
                self.stats.polls_failed["error"] += 1
                self._log_unexpected(target.device.id, exc)
            raise_if_cancelling()  # pymodbus's connect can swallow one (wait_for, 3.11)
            now = loop.time()
            if state.breaker == "open":
                attempt = state.failures - source.offline_after_failures + 1
                state.retry_in = backoff_delay(attempt, interval, source.backoff_max, self._rng)
                due = now + state.retry_in
                continue
            state.retry_in = None
            # back on the grid, at the first slot that can still start on time: slots a poll
            # overran (or a backoff spanned) are dropped, not fired back to back
            earliest = math.ceil((now - LATE_FRACTION * interval - origin) / interval)
            if earliest > slot + 1 and not backing_off:
                self.poll_stats.polls_skipped += earliest - slot - 1
            slot = max(slot + 1, earliest)
            jitter = self._rng.uniform(-source.jitter, source.jitter) * interval
            due = origin + slot * interval + jitter

    def _started(self, state: DevicePolling, lag: float, interval: float) -> None:
        state.polls += 1
        stats = self.poll_stats
        stats.polls_started += 1
        stats.lag_max = max(stats.lag_max, lag)
        if lag > LATE_FRACTION * interval:
            state.late += 1
            stats.polls_late += 1

    async def _poll_once(self, target: _Target, state: DevicePolling) -> None:
        """One poll, its outcome counted, the breaker moved and the records handed on."""
        device, source = target.device, target.source
        try:
            records = await self.poll(device, target.endpoint, target.requests)
        except DeviceError as exc:
            reason = _failure_reason(exc)
            self.stats.polls_failed[reason] += 1
            state.failures += 1
            log.debug("modbus %s: %s", device.id, exc)
            if state.breaker == "closed" and state.failures >= source.offline_after_failures:
                state.breaker = "open"
                self.poll_stats.breaker_opens += 1
                self.poll_stats.breakers_open += 1
                log.info("modbus %s: offline after %d failed polls", device.id, state.failures)
                offline = self._online.mark(device.id, False, self._clock.now(), f"{reason}: {exc}")
                await self._emit(offline)
            return
        self.stats.polls_ok += 1
        state.failures = 0
        if state.breaker == "open":
            state.breaker = "closed"
            self.poll_stats.breakers_open -= 1
            log.info("modbus %s: answering again", device.id)
        await self._emit(
            self._online.mark(device.id, True, self._clock.now(), "answered") + records
        )

    async def poll(
        self, device: Device, endpoint: ModbusEndpoint, requests: Sequence[ReadRequest]
    ) -> list[Record]:
        """Read and decode one device once; each value is stamped with the time the answer
        carrying it arrived. Raises the DeviceError that ended the poll when no read answered;
        reads that failed in a poll that got other data are counted in
        ``poll_stats.requests_failed``."""
        source = device.source
        assert isinstance(source, ModbusSource)
        records: list[Record] = []
        errors: list[DeviceError] = []
        answered = 0
        active_faults: set[str] = set()
        fault_ts = None
        unanswered: list[ReadRequest] = []
        for index, request in enumerate(requests):
            try:
                words = await self._read(endpoint, request, source)
            except DeviceError as exc:
                errors.append(exc)
                unanswered.append(request)
                if isinstance(exc, DeviceRefused):
                    continue  # the device is there: its other reads may well answer
                unanswered += requests[index + 1 :]
                break  # gone: the remaining reads would only cost their timeouts
            ts = self._clock.now()
            answered += 1
            for spec in request.registers:
                if spec.type is DataType.STRING:
                    continue  # identification text (model, firmware), not a reading
                offset = spec.address - request.address
                value, raw = decode_register(spec, words[offset : offset + spec.registers])
                if spec.kind is MetricKind.FAULT:
                    # a fault register names its code: bit on_battery set -> ON_BATTERY active
                    fault_ts = ts
                    if value:
                        active_faults.add(spec.name.upper())
                    continue
                records.append(
                    Reading(device.id, spec.name, value, ts, Quality.GOOD, raw, spec.width)
                )
        if errors:
            if not answered:
                raise errors[-1]
            self.poll_stats.polls_partial += 1
            for error in errors:
                self.poll_stats.requests_failed[_failure_reason(error)] += 1
            log.debug("modbus %s: partial poll: %s", device.id, "; ".join(map(str, errors)))
        # compare fault bits only when all of them were read: a missing read clears nothing
        if fault_ts is not None and not any(_carries_faults(r) for r in unanswered):
            records += self._faults.update(device.id, active_faults, fault_ts)
        return records

    async def _read(
        self, endpoint: ModbusEndpoint, request: ReadRequest, source: ModbusSource
    ) -> list[int]:
        """One read with up to ``source.retries`` more attempts after a timeout or a lost
        connection."""
        attempt = 0
        while True:
            try:
                words = await endpoint.read(
                    request.table,
                    request.address,
                    request.count,
                    source.unit,
                    response_timeout=source.timeout,
                )
            except (DeviceTimeout, DeviceUnreachable):
                raise_if_cancelling()
                if attempt >= source.retries:
                    raise
                attempt += 1
                continue
            raise_if_cancelling()
            return words

    async def _emit(self, records: Sequence[Record]) -> None:
        if records:
            self.stats.records += len(records)
            await self._sink.put(records)

    def _log_unexpected(self, device_id: str, exc: Exception) -> None:
        """The first unexpected error of a device with its traceback, later ones briefly: a
        bug hit by every poll of a thousand devices must not bury the log."""
        if device_id in self._errors_logged:
            log.debug("modbus %s: poll failed: %r", device_id, exc)
            return
        self._errors_logged.add(device_id)
        log.error("modbus %s: poll failed", device_id, exc_info=exc)


def _carries_faults(request: ReadRequest) -> bool:
    return any(spec.kind is MetricKind.FAULT for spec in request.registers)


def _failure_reason(exc: DeviceError) -> str:
    if isinstance(exc, DeviceTimeout):
        return "timeout"
    if isinstance(exc, DeviceRefused):
        return f"exception_{exc.code}"
    return "unreachable"
