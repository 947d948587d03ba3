"""The simulated devices: pure functions of a seed and the simulated time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from core.registers import decode, register_count
from simulators.devices.autoclave import FAULT_CODES, AutoclaveModel
from simulators.devices.ups import OUTAGE_CHANCE_PER_HOUR, REGISTER_MAP, UpsModel
from simulators.devices.usage import ClinicHours

LONDON = ZoneInfo("Europe/London")
HOURS = ClinicHours(LONDON)
MONDAY = datetime(2026, 11, 23, tzinfo=LONDON)  # midnight; GMT, so local time equals UTC
SATURDAY = MONDAY + timedelta(days=5)

# 45-minute cycles start at 08:00, 08:45, ... while the clinic is open; the last start before
# 18:00 is 08:00 + 13 * 45 min = 17:45, and that cycle ends at 18:30: 14 cycles a weekday,
# 13 of them complete by 18:00.
CYCLES_PER_WEEKDAY = 14


def _at(day: datetime, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return day.replace(hour=hour, minute=minute, second=second)


# --- clinic hours ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "is_open"),
    [
        pytest.param(_at(MONDAY, 7, 59, 59), False, id="monday-before-opening"),
        pytest.param(_at(MONDAY, 8), True, id="monday-opening"),
        pytest.param(_at(MONDAY, 17, 59, 59), True, id="monday-last-second"),
        pytest.param(_at(MONDAY, 18), False, id="monday-closing"),
        pytest.param(_at(SATURDAY, 10), False, id="saturday"),
        # 07:30 UTC on a summer Monday is 08:30 BST
        pytest.param(datetime(2026, 6, 1, 7, 30, tzinfo=UTC), True, id="summer-time-in-zone"),
        pytest.param(datetime(2026, 6, 1, 17, 30, tzinfo=UTC), False, id="summer-evening-in-zone"),
    ],
)
def test_clinic_hours_is_open(moment: datetime, is_open: bool) -> None:
    assert HOURS.is_open(moment) is is_open


@pytest.mark.parametrize(
    ("moment", "opens"),
    [
        pytest.param(_at(MONDAY, 10), _at(MONDAY, 10), id="open-now"),
        pytest.param(_at(MONDAY, 6), _at(MONDAY, 8), id="later-today"),
        pytest.param(_at(MONDAY, 18), _at(MONDAY + timedelta(days=1), 8), id="tomorrow"),
        pytest.param(
            _at(MONDAY + timedelta(days=4), 19),
            _at(MONDAY + timedelta(days=7), 8),
            id="friday-evening-to-monday",
        ),
        pytest.param(_at(SATURDAY, 9), _at(MONDAY + timedelta(days=7), 8), id="weekend"),
    ],
)
def test_clinic_hours_next_open(moment: datetime, opens: datetime) -> None:
    assert HOURS.next_open(moment) == opens


# --- autoclave ---------------------------------------------------------------------------


def _autoclave(start: datetime, *, seed: int = 7, failure_rate: float = 0.03) -> AutoclaveModel:
    return AutoclaveModel(
        seed=seed, start=start, hours=HOURS, cycles_total=4490, failure_rate=failure_rate
    )


def test_autoclave_cycles_on_a_weekday() -> None:
    model = _autoclave(MONDAY)
    model.advance(_at(MONDAY, 8, 44, 59))
    assert model.cycles_total == 4490
    model.advance(_at(MONDAY, 8, 45))
    assert model.cycles_total == 4491
    model.advance(_at(MONDAY, 18))
    assert model.cycles_total == 4490 + CYCLES_PER_WEEKDAY - 1
    model.advance(_at(MONDAY, 18, 30))
    assert model.cycles_total == 4490 + CYCLES_PER_WEEKDAY
    model.advance(_at(MONDAY, 23, 59, 59))
    assert model.cycles_total == 4490 + CYCLES_PER_WEEKDAY


def test_autoclave_counts_five_weekdays_a_week() -> None:
    model = _autoclave(MONDAY)
    model.advance(MONDAY + timedelta(days=7))
    assert model.cycles_total == 4490 + 5 * CYCLES_PER_WEEKDAY


def test_autoclave_idle_at_weekend() -> None:
    model = _autoclave(SATURDAY)
    model.advance(_at(SATURDAY + timedelta(days=1), 23, 59, 59))
    assert model.cycles_total == 4490
    assert not model.running


def test_autoclave_idle_at_night() -> None:
    model = _autoclave(_at(MONDAY, 18, 30))
    model.advance(_at(MONDAY + timedelta(days=1), 8, 44, 59))
    assert model.cycles_total == 4490
    model.advance(_at(MONDAY + timedelta(days=1), 8, 45))
    assert model.cycles_total == 4491


def test_autoclave_running_follows_clinic_hours() -> None:
    model = _autoclave(MONDAY)
    model.advance(_at(MONDAY, 7, 59))
    assert not model.running
    assert model.payload(MONDAY)["chamber_temp_c"] < 40
    model.advance(_at(MONDAY, 9))
    assert model.running
    assert model.payload(MONDAY)["chamber_temp_c"] > 130


def test_autoclave_failures_follow_failure_rate() -> None:
    always = _autoclave(MONDAY, failure_rate=1.0)
    always.advance(_at(MONDAY, 23))
    assert always.failed_cycles == CYCLES_PER_WEEKDAY
    assert len(always.faults) == 1
    assert always.faults[0] in FAULT_CODES
    never = _autoclave(MONDAY, failure_rate=0.0)
    never.advance(_at(MONDAY, 23))
    assert (never.failed_cycles, never.faults) == (0, [])


def _trace(model: AutoclaveModel, checkpoints: list[datetime], step: timedelta) -> list[Any]:
    """The model's state at every checkpoint, advancing by ``step`` in between."""
    trace: list[Any] = []
    now = MONDAY
    for checkpoint in checkpoints:
        while now + step < checkpoint:
            now += step
            model.advance(now)
        now = checkpoint
        model.advance(now)
        trace.append((model.cycles_total, model.failed_cycles, list(model.faults)))
    return trace


CHECKPOINTS = [_at(MONDAY + timedelta(days=d), h) for d in range(7) for h in (9, 12, 15, 19)]


def test_autoclave_same_seed_same_sequence_however_often_advanced() -> None:
    coarse = _trace(_autoclave(MONDAY, failure_rate=0.3), CHECKPOINTS, timedelta(days=7))
    fine = _trace(_autoclave(MONDAY, failure_rate=0.3), CHECKPOINTS, timedelta(minutes=7))
    single = _autoclave(MONDAY, failure_rate=0.3)
    single.advance(CHECKPOINTS[-1])
    assert coarse == fine
    assert coarse[-1] == (single.cycles_total, single.failed_cycles, single.faults)
    assert coarse[-1][0] == 4490 + 5 * CYCLES_PER_WEEKDAY
    assert 0 < coarse[-1][1] < 5 * CYCLES_PER_WEEKDAY  # some, not all, cycles failed
    other_seed = _trace(
        _autoclave(MONDAY, seed=8, failure_rate=0.3), CHECKPOINTS, timedelta(days=7)
    )
    assert other_seed != coarse


# --- UPS ---------------------------------------------------------------------------------

UPS_SEED = 3  # outages in hours 3 and 42 of the first two days


def _outage_hours(seed: int, hours: int) -> list[int]:
    """The hours with a line failure, by the model's documented rule (4 % per hour)."""
    return [
        h for h in range(hours) if random.Random(seed * 7_919 + h).random() < OUTAGE_CHANCE_PER_HOUR
    ]


def _decoded(model: UpsModel) -> dict[str, float]:
    image = model.registers()
    decoded: dict[str, float] = {}
    for name, address, data_type, word_order, scale in REGISTER_MAP:
        count = register_count(data_type)
        assert count is not None
        raw = decode(image[address : address + count], data_type, word_order=word_order)
        assert isinstance(raw, int)
        decoded[name] = raw * scale
    return decoded


def test_ups_register_map_covers_values() -> None:
    model = UpsModel(seed=UPS_SEED, start=MONDAY)
    assert [name for name, *_ in REGISTER_MAP] == list(model.values())


def test_ups_registers_decode_to_values() -> None:
    start = MONDAY
    model = UpsModel(seed=UPS_SEED, start=start, run_hours=18250.5, line_fail_count=65530)
    seen_on_battery = seen_on_line = False
    for minute in range(0, 48 * 60, 3):
        model.advance(start + timedelta(minutes=minute))
        values = model.values()
        assert _decoded(model) == pytest.approx(values, abs=1e-9), f"minute {minute}"
        on_battery = values["on_battery"] == 1
        assert values["battery_status"] == (3 if on_battery else 2)
        seen_on_battery |= on_battery
        seen_on_line |= not on_battery
    assert seen_on_battery
    assert seen_on_line
    model.advance(start + timedelta(hours=48))
    # 48 hours of service on top of 18250.5, and both outages counted
    assert model.values()["run_hours"] == 18298.5
    assert model.values()["line_fail_count"] == 65530 + 2
    assert _decoded(model)["run_hours"] == pytest.approx(18298.5)


def test_ups_line_fail_count_wraps_at_16_bits() -> None:
    outages = len(_outage_hours(UPS_SEED, 200))
    assert outages > 6  # enough to carry 65530 past 65535
    model = UpsModel(seed=UPS_SEED, start=MONDAY, line_fail_count=65530)
    model.advance(MONDAY + timedelta(hours=200))
    expected = (65530 + outages) - 65536
    assert model.values()["line_fail_count"] == expected
    assert model.registers()[1] == expected


def test_ups_first_outage_wraps_65535_to_zero() -> None:
    first = _outage_hours(UPS_SEED, 48)[0]
    model = UpsModel(seed=UPS_SEED, start=MONDAY, line_fail_count=65535)
    model.advance(MONDAY + timedelta(hours=first))
    assert model.values()["line_fail_count"] == 65535
    model.advance(MONDAY + timedelta(hours=first + 1))
    assert model.values()["line_fail_count"] == 0


def test_ups_same_seed_same_values_however_often_advanced() -> None:
    end = MONDAY + timedelta(hours=200, minutes=17)
    coarse = UpsModel(seed=UPS_SEED, start=MONDAY, line_fail_count=65530)
    coarse.advance(end)
    fine = UpsModel(seed=UPS_SEED, start=MONDAY, line_fail_count=65530)
    now = MONDAY
    while now < end:
        now = min(now + timedelta(minutes=13), end)
        fine.advance(now)
    assert fine.values() == coarse.values()
    assert fine.registers() == coarse.registers()
