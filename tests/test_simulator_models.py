"""The simulated autoclave and UPS: pure functions of a seed and the simulated time, built on
the shared ``DeviceModel``; for the UPS a register map that pymodbus's own decoder reads back."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.records import MetricKind
from core.registers import DataType, Order
from simulators.devices.autoclave import CYCLE, WATER_LOW, WATER_PER_CYCLE, AutoclaveModel
from simulators.devices.base import DeviceModel, ModelError, Value, slot_random
from simulators.devices.registermap import TABLES, encode_tables, markdown_table, table_sizes
from simulators.devices.ups import (
    OUTAGE_CHANCE_PER_HOUR,
    OUTAGE_MINUTES,
    REGISTER_MAP,
    UpsModel,
)
from simulators.devices.usage import ClinicHours
from tests.model_trace import steps, trace
from tests.pymodbus_decode import decoded_by_pymodbus

LONDON = ZoneInfo("Europe/London")
HOURS = ClinicHours(LONDON)
MONDAY = datetime(2026, 11, 23, tzinfo=LONDON)  # midnight; GMT, so local time equals UTC
SATURDAY = MONDAY + timedelta(days=5)
WEEK = timedelta(days=7)

# 45-minute cycles start at 08:00, 08:45, ... while the clinic is open; the last start before
# 18:00 is 08:00 + 13 * 45 min = 17:45, and that cycle ends at 18:30: 14 cycles a weekday,
# 13 of them complete by 18:00.
CYCLES_PER_WEEKDAY = 14
CYCLES_TOTAL, FAILED_CYCLES = 4490, 20


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


# --- both kinds --------------------------------------------------------------------------


def _autoclave(
    start: datetime = MONDAY, *, seed: int = 7, failure_rate: float = 0.03
) -> AutoclaveModel:
    model = AutoclaveModel(
        seed=seed,
        start=start,
        hours=HOURS,
        initial={"cycles_total": CYCLES_TOTAL, "failed_cycles": FAILED_CYCLES},
    )
    model.failure_rate = failure_rate
    return model


# outages (by the rule re-derived in _outages below) begin in hours 30, 40 and 47 after
# MONDAY's midnight; the one in hour 40 (Tuesday 16:02-16:13) lasts long enough for battery_low
UPS_SEED = 8


def _ups(seed: int = UPS_SEED, start: datetime = MONDAY, **initial: float) -> UpsModel:
    return UpsModel(seed=seed, start=start, hours=HOURS, initial=initial or None)


KINDS = [pytest.param(AutoclaveModel, id="autoclave"), pytest.param(UpsModel, id="ups")]


def _make(kind: type[DeviceModel], **initial: float) -> DeviceModel:
    # UPS_SEED: no line failure on the Monday, so only the autoclave's cycles act by day
    return kind(seed=UPS_SEED, start=MONDAY, hours=HOURS, initial=initial or None)


@pytest.mark.parametrize("kind", KINDS)
def test_channels_declared_are_exactly_the_values_reported(kind: type[DeviceModel]) -> None:
    model = _make(kind)
    assert sorted(c.name for c in model.channels) == sorted(model.values())
    model.advance(_at(MONDAY, 10, 3))
    assert sorted(c.name for c in model.channels) == sorted(model.values())


@pytest.mark.parametrize("kind", KINDS)
def test_counters_report_their_initial_values(kind: type[DeviceModel]) -> None:
    counters = [c for c in kind.channels if c.kind is MetricKind.COUNTER]
    assert counters
    initial = {c.name: 1234.5 if c.scale == 0.1 else 1234.0 for c in counters}
    model = _make(kind, **initial)
    values = model.values()
    for channel in counters:
        assert values[channel.name] == initial[channel.name]
        assert model.counter(channel.name) == round(initial[channel.name] / channel.scale)


@pytest.mark.parametrize("kind", KINDS)
def test_injected_fault_lasts_until_its_end(kind: type[DeviceModel]) -> None:
    model = _make(kind)
    code = model.fault_codes[-2]  # autoclave DOOR, UPS BATTERY_LOW: nothing raises them at night
    start = _at(MONDAY, 2)
    model.advance(start)
    assert model.faults() == []
    model.inject_fault(code, until=start + timedelta(hours=1))
    assert model.faults() == [code]
    model.advance(start + timedelta(minutes=59, seconds=59))
    assert model.faults() == [code]
    model.advance(start + timedelta(hours=1))
    assert model.faults() == []

    model.inject_fault(code, until=None)
    model.advance(start + timedelta(hours=3))
    assert model.faults() == [code]
    model.clear_fault(code)
    assert model.faults() == []


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_fault_or_counter_is_a_model_error(kind: type[DeviceModel]) -> None:
    model = _make(kind)
    with pytest.raises(ModelError, match="PAPER_ON_FIRE"):
        model.inject_fault("PAPER_ON_FIRE", until=None)
    # a channel that is not a counter is no more settable than a name that does not exist
    gauge = next(c.name for c in model.channels if c.kind is not MetricKind.COUNTER)
    for name in (gauge, "no_such_counter"):
        with pytest.raises(ModelError, match=rf"no counter '{name}'"):
            model.set_counter(name, 1)
    assert model.faults() == []


@pytest.mark.parametrize("kind", KINDS)
def test_default_plans_meter_a_counter_of_the_kind(kind: type[DeviceModel]) -> None:
    counters = {c.name for c in kind.channels if c.kind is MetricKind.COUNTER}
    assert kind.default_plans
    for plan in kind.default_plans:
        assert plan["type"] in ("meter", "calendar", "condition", "fault", "supplies")
        if plan["type"] == "meter":
            assert plan["metric"] in counters


# --- autoclave: cycles -------------------------------------------------------------------


def _cycles(model: AutoclaveModel) -> int:
    return model.counter("cycles_total") - CYCLES_TOTAL


def _failed(model: AutoclaveModel) -> int:
    return model.counter("failed_cycles") - FAILED_CYCLES


def _cycle_ends(first_day: datetime, days: int) -> Iterator[datetime]:
    """Where every cycle of ``days`` days from ``first_day`` ends, by the documented grid."""
    for day in range(days):
        opening = _at(first_day + timedelta(days=day), 8)
        if HOURS.is_open(opening):
            for cycle in range(1, CYCLES_PER_WEEKDAY + 1):
                yield opening + cycle * CYCLE


def test_autoclave_cycles_on_a_weekday() -> None:
    model = _autoclave()
    assert _cycles(model) == 0
    model.advance(_at(MONDAY, 8, 44, 59))
    assert _cycles(model) == 0
    model.advance(_at(MONDAY, 8, 45))
    assert _cycles(model) == 1
    model.advance(_at(MONDAY, 18))
    assert _cycles(model) == CYCLES_PER_WEEKDAY - 1
    model.advance(_at(MONDAY, 18, 29, 59))
    assert _cycles(model) == CYCLES_PER_WEEKDAY - 1
    model.advance(_at(MONDAY, 18, 30))
    assert _cycles(model) == CYCLES_PER_WEEKDAY
    model.advance(_at(MONDAY, 23, 59, 59))
    assert _cycles(model) == CYCLES_PER_WEEKDAY
    assert model.values()["cycles_total"] == CYCLES_TOTAL + CYCLES_PER_WEEKDAY


def test_autoclave_counts_each_cycle_when_it_ends() -> None:
    model = _autoclave()
    for n, end in enumerate(_cycle_ends(MONDAY, 1), start=1):
        model.advance(end - timedelta(seconds=1))
        assert _cycles(model) == n - 1, end
        model.advance(end)
        assert _cycles(model) == n, end


def test_autoclave_counts_five_weekdays_a_week() -> None:
    model = _autoclave()
    model.advance(MONDAY + WEEK)
    assert _cycles(model) == 5 * CYCLES_PER_WEEKDAY
    model.advance(MONDAY + 2 * WEEK)
    assert _cycles(model) == 10 * CYCLES_PER_WEEKDAY


def test_autoclave_idle_at_weekend() -> None:
    model = _autoclave(_at(SATURDAY, 0))
    for now in steps(model.now, _at(SATURDAY + timedelta(days=1), 23, 59, 59), timedelta(hours=1)):
        model.advance(now)
        assert _cycles(model) == 0
        assert not model.running
    model.advance(_at(SATURDAY + timedelta(days=2), 8, 45))  # Monday
    assert _cycles(model) == 1


def test_autoclave_idle_at_night() -> None:
    model = _autoclave(_at(MONDAY, 18, 30))
    assert not model.running
    model.advance(_at(MONDAY + timedelta(days=1), 7, 59, 59))
    assert not model.running
    model.advance(_at(MONDAY + timedelta(days=1), 8, 44, 59))
    assert _cycles(model) == 0
    model.advance(_at(MONDAY + timedelta(days=1), 8, 45))
    assert _cycles(model) == 1


def test_autoclave_started_mid_cycle_counts_that_cycle() -> None:
    model = _autoclave(_at(MONDAY, 9, 10))  # inside the 08:45-09:30 cycle
    assert model.running
    model.advance(_at(MONDAY, 9, 29, 59))
    assert _cycles(model) == 0
    model.advance(_at(MONDAY, 9, 30))
    assert _cycles(model) == 1


def test_autoclave_started_in_the_last_cycle_after_closing_counts_it() -> None:
    advanced = _autoclave()
    advanced.advance(_at(MONDAY, 18, 10))
    assert advanced.running  # the grid's 17:45 cycle
    started = _autoclave(_at(MONDAY, 18, 10))
    assert started.running
    started.advance(_at(MONDAY, 18, 30))
    assert _cycles(started) == 1


# --- autoclave: running and gauges -------------------------------------------------------


def _on_the_grid(moment: datetime) -> bool:
    """Whether a cycle runs at ``moment``: cycles follow each other from 08:00 to 18:30."""
    local = moment.astimezone(LONDON)
    return local.weekday() < 5 and _at(local, 8) <= local < _at(local, 18, 30)


@pytest.mark.parametrize(
    ("moment", "running"),
    [
        pytest.param(_at(MONDAY, 7, 59), False, id="before-opening"),
        pytest.param(_at(MONDAY, 8), True, id="opening"),
        pytest.param(_at(MONDAY, 9), True, id="morning"),
        pytest.param(_at(MONDAY, 18, 10), True, id="last-cycle-after-closing"),
        pytest.param(_at(MONDAY, 18, 29, 59), True, id="last-second-of-last-cycle"),
        pytest.param(_at(MONDAY, 18, 30), False, id="last-cycle-ended"),
        pytest.param(_at(MONDAY, 18, 31), False, id="evening"),
        pytest.param(_at(SATURDAY, 10), False, id="saturday"),
    ],
)
def test_autoclave_running_follows_the_cycle_grid(moment: datetime, running: bool) -> None:
    model = _autoclave()
    model.advance(moment)
    assert model.running is running
    values = model.values()
    # running: 134 °C at 304 kPa; idle: 32 °C at ambient pressure; each within its jitter
    temp, pressure = (134.0, 304.0) if running else (32.0, 101.3)
    assert float(values["chamber_temp_c"]) == pytest.approx(temp, abs=0.5)
    assert float(values["pressure_kpa"]) == pytest.approx(pressure, abs=0.5)


def test_autoclave_running_stops_after_the_last_cycle() -> None:
    model = _autoclave()
    model.advance(_at(MONDAY, 18, 10))
    assert model.running
    assert float(model.values()["chamber_temp_c"]) > 130
    model.advance(_at(MONDAY, 18, 31))
    assert not model.running
    assert float(model.values()["chamber_temp_c"]) < 40


def test_autoclave_chamber_is_hot_exactly_while_running() -> None:
    model = _autoclave()
    hot = cold = 0
    for now in steps(MONDAY, MONDAY + WEEK, timedelta(minutes=4)):
        model.advance(now)
        values = model.values()
        assert model.running is _on_the_grid(now), now
        hot_chamber = float(values["chamber_temp_c"]) > 130
        assert hot_chamber is model.running, now
        assert (float(values["pressure_kpa"]) > 300) is model.running, now
        hot += hot_chamber
        cold += not hot_chamber
    # samples at 08:00, 08:04, ..., 18:28 fall in the cycles: 158 a weekday
    assert hot == 5 * 158
    assert cold == 7 * 24 * 15 - hot


# --- autoclave: failures -----------------------------------------------------------------


def test_autoclave_failure_rate_one_fails_every_cycle() -> None:
    model = _autoclave(failure_rate=1.0)
    for n, end in enumerate(_cycle_ends(MONDAY, 1), start=1):
        model.advance(end)
        assert _failed(model) == n
        faults = model.faults()
        assert len(faults) == 1, end
        assert faults[0] in AutoclaveModel.fault_codes
        assert faults[0] != "WATER_LOW"  # a Monday uses 63 % of a full reservoir
    model.advance(_at(MONDAY, 23))
    assert (_cycles(model), _failed(model)) == (CYCLES_PER_WEEKDAY, CYCLES_PER_WEEKDAY)
    assert len(model.faults()) == 1


def test_autoclave_failure_rate_zero_fails_nothing() -> None:
    model = _autoclave(failure_rate=0.0)
    for end in _cycle_ends(MONDAY, 1):
        model.advance(end)
        assert model.faults() == []
    model.advance(_at(MONDAY, 23))
    assert (_cycles(model), _failed(model)) == (CYCLES_PER_WEEKDAY, 0)


def test_autoclave_fault_stays_until_the_next_good_cycle() -> None:
    model = _autoclave(seed=3, failure_rate=0.3)
    failures = recoveries = 0
    cycles, failed, faults = 0, 0, model.faults()
    for now in steps(MONDAY, MONDAY + WEEK, timedelta(minutes=15)):
        model.advance(now)
        new_cycles, new_failed, new_faults = _cycles(model), _failed(model), model.faults()
        assert new_cycles - cycles in (0, 1)  # 15-minute steps: at most one cycle ends
        if new_cycles == cycles:
            assert (new_failed, new_faults) == (failed, faults), now  # nothing changes between
        elif new_failed == failed + 1:
            assert len(new_faults) == 1, now
            failures += 1
        else:
            assert (new_failed, new_faults) == (failed, []), now
            recoveries += bool(faults)
        cycles, failed, faults = new_cycles, new_failed, new_faults
    assert failures > 5
    assert recoveries > 3
    assert cycles == 5 * CYCLES_PER_WEEKDAY


CHECKPOINTS = [
    MONDAY + timedelta(hours=h, minutes=(h * 37) % 60, seconds=(h * 13) % 60)
    for h in range(3, 7 * 24 + 1, 3)
]


def test_autoclave_same_values_however_often_advanced() -> None:
    coarse = trace(_autoclave(failure_rate=0.3), CHECKPOINTS, None)
    fine = trace(_autoclave(failure_rate=0.3), CHECKPOINTS, timedelta(minutes=7))
    single = _autoclave(failure_rate=0.3)
    single.advance(CHECKPOINTS[-1])
    assert fine == coarse
    assert coarse[-1] == (single.values(), single.faults())
    assert coarse[-1][0]["cycles_total"] == CYCLES_TOTAL + 5 * CYCLES_PER_WEEKDAY
    failed = int(coarse[-1][0]["failed_cycles"]) - FAILED_CYCLES
    assert 0 < failed < 5 * CYCLES_PER_WEEKDAY  # some, not all, cycles failed
    assert any(faults for _, faults in coarse)
    assert len({values["chamber_temp_c"] for values, _ in coarse}) > 2  # running and idle
    other_seed = trace(_autoclave(seed=8, failure_rate=0.3), CHECKPOINTS, None)
    assert other_seed != coarse


# --- autoclave: water --------------------------------------------------------------------


def _water(model: AutoclaveModel) -> float:
    return float(model.values()["water_level_pct"])


def test_autoclave_water_falls_every_cycle_and_is_refilled() -> None:
    # seed 26 lets the reservoir run low in the second week: cycles are refused, not run dry
    model = _autoclave(seed=26)
    assert _water(model) == 100.0
    refills = refusals = 0
    for end in _cycle_ends(MONDAY, 14):
        before, cycles = _water(model), _cycles(model)
        model.advance(end - timedelta(seconds=1))
        assert _water(model) == before  # the level changes only when a cycle ends
        model.advance(end)
        level = _water(model)
        if before < WATER_LOW:
            refusals += 1
            assert _cycles(model) == cycles, end  # refused: no cycle, no water used
            expected = before
        else:
            assert _cycles(model) == cycles + 1, end
            expected = round(before - WATER_PER_CYCLE, 1)
        if level == 100.0 and expected != 100.0:
            assert expected < 30, end  # staff refill a reservoir that is getting low
            refills += 1
        else:
            assert level == expected, end
        assert level >= 0
        assert ("WATER_LOW" in model.faults()) == (level < WATER_LOW), end
    assert refills >= 3
    assert refusals >= 1


def test_autoclave_water_low_only_while_the_reservoir_is_low() -> None:
    # seed 19 with no random failures runs its reservoir down to 10.0 % on the Tuesday
    model = _autoclave(seed=19, failure_rate=0.0)
    for end in _cycle_ends(MONDAY, 14):
        model.advance(end)
        if "WATER_LOW" in model.faults():
            assert _water(model) < WATER_LOW, end


# --- UPS: channels and the register map --------------------------------------------------


def test_ups_register_map_names_are_the_channels_and_the_values() -> None:
    names = [r.name for r in REGISTER_MAP]
    assert len(set(names)) == len(names)
    assert set(names) == {c.name for c in UpsModel.channels}
    assert set(names) == set(_ups().values())
    assert UpsModel.register_map == REGISTER_MAP


def test_ups_channels_match_the_register_map() -> None:
    channels = {c.name: c for c in UpsModel.channels}
    for register in REGISTER_MAP:
        channel = channels[register.name]
        assert (channel.kind, channel.unit) == (register.kind, register.unit), register.name
        if register.kind is MetricKind.COUNTER:
            assert (channel.width, channel.scale) == (register.width, register.scale)
    assert channels["line_fail_count"].width == 16
    faults = {r.name.upper() for r in REGISTER_MAP if r.kind is MetricKind.FAULT}
    assert faults == set(UpsModel.fault_codes)


def test_ups_register_map_layout() -> None:
    sizes = table_sizes(REGISTER_MAP)
    assert sizes == {"coil": 0, "discrete": 3, "holding": 18, "input": 4}
    for table in TABLES:
        used: list[int] = []
        for register in (r for r in REGISTER_MAP if r.table == table):
            span = range(register.address, register.address + register.registers)
            assert not set(span) & set(used), f"{register.name} overlaps in {table}"
            used.extend(span)
    by_name = {r.name: r for r in REGISTER_MAP}
    # both word orders of a float32 pair, so that decoding one the wrong way round would show
    assert by_name["input_voltage_v"].word_order is Order.LITTLE
    assert by_name["output_voltage_v"].word_order is Order.BIG


def test_ups_markdown_table_lists_every_register() -> None:
    lines = markdown_table(REGISTER_MAP).splitlines()
    assert lines[0].startswith("| table | address | conventional | name |")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == len(REGISTER_MAP)
    assert sorted(row[3] for row in rows) == sorted(r.name for r in REGISTER_MAP)
    by_name = {row[3]: row for row in rows}
    assert by_name["on_battery"][:3] == ["discrete", "0", "10001"]
    assert by_name["run_hours"] == [
        *("holding", "2-3", "40003", "run_hours", "uint32", "2", "big/big", "0.1", "h"),
        "counter",
    ]
    assert by_name["input_voltage_v"][:3] == ["input", "0-1", "30001"]
    assert by_name["input_voltage_v"][6] == "big/little"
    # tables in order (coil, discrete, holding, input), addresses ascending within each
    order = [(TABLES.index(row[0]), int(row[1].split("-")[0])) for row in rows]
    assert order == sorted(order)


# --- UPS: the register map through pymodbus ----------------------------------------------


def _float32(value: float) -> float:
    result: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return result


def _round_trip(model: UpsModel, values: dict[str, Value]) -> None:
    decoded = decoded_by_pymodbus(REGISTER_MAP, encode_tables(REGISTER_MAP, values))
    assert set(decoded) == set(values)
    for register in REGISTER_MAP:
        value, raw = values[register.name], decoded[register.name]
        if register.type is DataType.STRING:
            assert raw == value
        elif register.type is DataType.FLOAT32:
            assert isinstance(raw, float), register.name
            assert raw == _float32(float(value)), register.name
            assert raw == pytest.approx(value, rel=1e-7), register.name
        else:
            assert isinstance(raw, int), register.name
            if register.kind is MetricKind.COUNTER:
                assert raw == model.counter(register.name)
            assert raw == round(float(value) / register.scale), register.name
            assert raw * register.scale == pytest.approx(value, abs=1e-9), register.name


def _outages(seed: int, start: datetime, hours: int) -> list[tuple[datetime, datetime]]:
    """Line failures in the ``hours`` hours from ``start`` (on the hour), by the documented
    rule: hour h since the epoch fails when ``slot_random(seed, h)`` first draws below
    OUTAGE_CHANCE_PER_HOUR; it then draws the minute the line fails, early enough for the
    longest outage to end within the hour, and how many minutes it stays down."""
    first = int(start.timestamp()) // 3600
    windows: list[tuple[datetime, datetime]] = []
    for hour in range(first, first + hours):
        rng = slot_random(seed, hour)
        if rng.random() >= OUTAGE_CHANCE_PER_HOUR:
            continue
        begin = rng.uniform(0, 60 - OUTAGE_MINUTES[1])
        length = rng.uniform(*OUTAGE_MINUTES)
        on_the_hour = datetime.fromtimestamp(hour * 3600, UTC)
        windows.append(
            (
                on_the_hour + timedelta(minutes=begin),
                on_the_hour + timedelta(minutes=begin + length),
            )
        )
    return windows


@pytest.mark.parametrize("seed", [1, 4, UPS_SEED])
def test_ups_line_fails_in_the_hours_the_documented_rule_picks(seed: int) -> None:
    outages = _outages(seed, MONDAY, 7 * 24)
    hours = [int((begin - MONDAY) / timedelta(hours=1)) for begin, _ in outages]
    if seed == UPS_SEED:
        assert hours[:3] == [30, 40, 47]  # as the comment at UPS_SEED says
    assert hours
    for begin, end in outages:
        assert timedelta(minutes=2) <= end - begin <= timedelta(minutes=12)
    model = _ups(seed=seed, line_fail_count=0)
    for hour in range(1, 7 * 24 + 1):
        model.advance(MONDAY + timedelta(hours=hour))
        assert model.counter("line_fail_count") == sum(h < hour for h in hours), hour


def test_ups_registers_decode_to_values_through_pymodbus() -> None:
    model = _ups(run_hours=18250.5, line_fail_count=65534)
    run_tenths = model.counter("run_hours")
    outages = _outages(UPS_SEED, MONDAY, 48)
    assert len(outages) >= 2  # enough to carry 65534 past the wrap
    seen: dict[str, set[Value]] = {"on_battery": set(), "battery_low": set()}
    previous_on_battery_s = 0
    for minutes in range(3, 48 * 60 + 1, 3):
        now = MONDAY + timedelta(minutes=minutes)
        model.advance(now)
        values = model.values()
        _round_trip(model, values)
        for bit, states in seen.items():
            states.add(values[bit])

        # run hours: exactly a tenth for every 6 minutes since midnight
        assert model.counter("run_hours") - run_tenths == minutes // 6, now
        # the line-fail counter counts the outages that have begun, and wraps at 16 bits
        begun = sum(begin < now for begin, _ in outages)
        assert values["line_fail_count"] == (65534 + begun) % 65536, now

        on_battery = any(begin < now < end for begin, end in outages)
        on_battery_s = int(values["seconds_on_battery"])
        if on_battery:
            assert values["on_battery"] == 1, now
            assert on_battery_s > 0, now
            assert values["input_voltage_v"] == 0.0, now
            assert "ON_BATTERY" in model.faults(), now
            if previous_on_battery_s:
                assert on_battery_s - previous_on_battery_s == pytest.approx(180, abs=1)
            # the battery is low once the remaining runtime falls below 25 minutes
            low = values["battery_low"] == 1
            runtime = int(values["runtime_min"])
            assert runtime <= 25 if low else runtime >= 25, now
            assert runtime < 42, now
            assert values["battery_status"] == (3 if low else 2), now
        else:
            assert values["on_battery"] == 0, now
            assert on_battery_s == 0, now
            assert float(values["input_voltage_v"]) == pytest.approx(230, abs=4), now
            assert values["runtime_min"] == 42, now
            assert (values["battery_low"], values["battery_status"]) == (0, 2), now
            assert model.faults() == [], now
        previous_on_battery_s = on_battery_s

    assert seen == {"on_battery": {0, 1}, "battery_low": {0, 1}}  # every bit both ways
    # 48 hours of service on top of 18250.5 h, and every outage counted, past the wrap
    assert model.values()["run_hours"] == 18250.5 + 48.0
    assert model.values()["line_fail_count"] == 65534 + len(outages) - 65536
    model.inject_fault("REPLACE_BATTERY", until=None)
    _round_trip(model, model.values())


def test_ups_run_hours_count_whole_tenths_crossed() -> None:
    model = _ups(start=MONDAY + timedelta(minutes=4), run_hours=100.0)
    for minute, hours in [(5, 100.0), (6, 100.1), (11, 100.1), (12, 100.2), (17, 100.2)]:
        model.advance(MONDAY + timedelta(minutes=minute))
        assert model.values()["run_hours"] == hours, minute
    model.advance(MONDAY + timedelta(hours=24, minutes=4))
    assert model.values()["run_hours"] == 100.0 + 24.0


def test_ups_line_fail_count_counts_outages_and_wraps_at_16_bits() -> None:
    outages = _outages(UPS_SEED, MONDAY, 200)
    assert len(outages) > 5  # enough to carry 65530 past 65535
    model = _ups(line_fail_count=65530)
    model.advance(MONDAY + timedelta(hours=200))
    expected = (65530 + len(outages)) - 65536
    assert model.values()["line_fail_count"] == expected
    holding = next(r for r in REGISTER_MAP if r.name == "line_fail_count")
    assert encode_tables(REGISTER_MAP, model.values())["holding"][holding.address] == expected


def test_ups_line_fail_count_wraps_65535_to_zero_at_an_outage() -> None:
    begin, end = _outages(UPS_SEED, MONDAY, 48)[0]
    model = _ups()
    model.set_counter("line_fail_count", 65535)
    assert model.values()["line_fail_count"] == 65535
    model.advance(begin - timedelta(seconds=1))
    assert model.values()["line_fail_count"] == 65535
    assert model.values()["on_battery"] == 0
    model.advance(begin + timedelta(seconds=1))
    assert model.values()["line_fail_count"] == 0
    assert model.counter("line_fail_count") == 0
    assert model.values()["on_battery"] == 1
    model.advance(end + timedelta(seconds=1))
    assert (model.values()["line_fail_count"], model.values()["on_battery"]) == (0, 0)


def test_ups_counts_an_outage_once_however_the_advance_splits_it() -> None:
    begin, end = _outages(UPS_SEED, MONDAY, 48)[1]
    model = _ups(line_fail_count=10)
    for now in (begin - timedelta(seconds=1), begin, begin + timedelta(microseconds=1), end):
        model.advance(now)
    model.advance(end + timedelta(hours=1))
    assert model.values()["line_fail_count"] == 10 + 2  # this outage and the one before it


def test_ups_same_values_however_often_advanced() -> None:
    # odd checkpoints over 200 hours, plus a minute into every outage of the first two days
    inside = [begin + timedelta(minutes=1) for begin, _ in _outages(UPS_SEED, MONDAY, 48)]
    checkpoints = sorted(
        [MONDAY + timedelta(hours=h, minutes=(h * 37) % 60) for h in range(1, 201, 5)] + inside
    )
    coarse = trace(_ups(line_fail_count=65530), checkpoints, None)
    fine = trace(_ups(line_fail_count=65530), checkpoints, timedelta(minutes=7))
    single = _ups(line_fail_count=65530)
    single.advance(checkpoints[-1])
    assert fine == coarse
    assert coarse[-1] == (single.values(), single.faults())
    assert any("ON_BATTERY" in faults for _, faults in coarse)
    assert int(coarse[-1][0]["line_fail_count"]) < 65530  # wrapped on the way
    other_seed = trace(_ups(seed=UPS_SEED + 1, line_fail_count=65530), checkpoints, None)
    assert other_seed != coarse


def test_ups_injected_replace_battery_sets_its_bit_until_the_end() -> None:
    start = _at(MONDAY, 5)  # no outage on the Monday for this seed
    until = start + timedelta(hours=2)
    model = _ups()
    model.advance(start)
    bit = next(r for r in REGISTER_MAP if r.name == "replace_battery")
    assert model.values()["replace_battery"] == 0
    model.inject_fault("REPLACE_BATTERY", until)
    for now in (start, until - timedelta(seconds=1)):
        model.advance(now)
        values = model.values()
        assert values["replace_battery"] == 1
        assert model.faults() == ["REPLACE_BATTERY"]
        assert (values["on_battery"], values["battery_low"]) == (0, 0)
        assert encode_tables(REGISTER_MAP, values)["discrete"][bit.address] == 1
    model.advance(until)
    assert model.values()["replace_battery"] == 0
    assert model.faults() == []
    assert encode_tables(REGISTER_MAP, model.values())["discrete"][bit.address] == 0


@pytest.mark.parametrize(
    ("code", "bits"),
    [
        pytest.param("ON_BATTERY", {"on_battery": 1, "battery_low": 0}, id="on-battery"),
        pytest.param("BATTERY_LOW", {"on_battery": 0, "battery_low": 1}, id="battery-low"),
    ],
)
def test_ups_injected_fault_sets_its_bit(code: str, bits: dict[str, int]) -> None:
    model = _ups()
    model.advance(_at(MONDAY, 5))
    model.inject_fault(code, until=None)
    values = model.values()
    assert {bit: values[bit] for bit in bits} == bits
    assert model.faults() == [code]
    assert values["battery_status"] == (3 if code == "BATTERY_LOW" else 2)
