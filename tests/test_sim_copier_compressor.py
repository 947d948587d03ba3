"""The simulated copier and dental compressor: pure functions of a seed and the simulated time,
and for the compressor a register map that pymodbus's own decoder reads back exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.records import MetricKind
from core.registers import DataType, Order
from simulators.devices.base import DeviceModel, ModelError, Value
from simulators.devices.compressor import (
    CLEAN_FILTER_KPA,
    FILTER_CLOGGED_KPA,
    FILTER_KPA_PER_RUN_HOUR,
    HIGH_TEMP_C,
    REGISTER_MAP,
    CompressorModel,
)
from simulators.devices.copier import CARTRIDGE_PAGES, CopierModel
from simulators.devices.registermap import TABLES, encode_tables, table_sizes
from simulators.devices.usage import ClinicHours
from tests.model_trace import steps, trace
from tests.pymodbus_decode import decoded_by_pymodbus

LONDON = ZoneInfo("Europe/London")
HOURS = ClinicHours(LONDON)
MONDAY = datetime(2026, 11, 23, tzinfo=LONDON)  # midnight; GMT, so local time equals UTC
FRIDAY = MONDAY + timedelta(days=4)
WEEK = timedelta(days=7)
OPEN_SLOTS_PER_DAY = 10 * 12  # 08:00 to 18:00 in 5-minute copier slots
WRAP_32 = 1 << 32

ModelFactory = Callable[..., DeviceModel]


def _at(day: datetime, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return day.replace(hour=hour, minute=minute, second=second)


def _copier(seed: int = 1, **initial: float) -> CopierModel:
    return CopierModel(seed=seed, start=MONDAY, hours=HOURS, initial=initial or None)


def _compressor(seed: int = 1, **initial: float) -> CompressorModel:
    return CompressorModel(seed=seed, start=MONDAY, hours=HOURS, initial=initial or None)


# odd offsets, so checkpoints fall inside slots, runs and closed hours alike
CHECKPOINTS = [
    MONDAY + timedelta(hours=h, minutes=(h * 37) % 60, seconds=(h * 13) % 60)
    for h in range(3, 7 * 24 + 1, 3)
]


# --- both kinds --------------------------------------------------------------------------

KINDS = [
    pytest.param(_copier, id="copier"),
    pytest.param(_compressor, id="compressor"),
]


@pytest.mark.parametrize("make", KINDS)
def test_channels_declared_are_exactly_the_values_reported(make: ModelFactory) -> None:
    model = make()
    assert [c.name for c in model.channels] == list(model.values())
    model.advance(_at(MONDAY, 10, 3))
    assert [c.name for c in model.channels] == list(model.values())


@pytest.mark.parametrize("make", KINDS)
def test_default_plans_meter_a_counter_of_the_kind(make: ModelFactory) -> None:
    model = make()
    counters = {c.name for c in model.channels if c.kind is MetricKind.COUNTER}
    usage = [plan for plan in model.default_plans if plan["type"] == "meter"]
    assert usage
    assert all(plan["metric"] in counters for plan in usage)


@pytest.mark.parametrize("make", KINDS)
def test_injected_fault_lasts_until_its_end(make: ModelFactory) -> None:
    model = make()
    code = model.fault_codes[-1]
    start = _at(MONDAY, 2)  # at night neither kind raises anything of its own
    model.advance(start)
    assert code not in model.faults()
    model.inject_fault(code, until=start + timedelta(hours=1))
    assert code in model.faults()
    model.advance(start + timedelta(minutes=59, seconds=59))
    assert code in model.faults()
    model.advance(start + timedelta(hours=1))
    assert code not in model.faults()

    model.inject_fault(code, until=None)
    model.advance(start + timedelta(hours=3))
    assert code in model.faults()
    model.clear_fault(code)
    assert code not in model.faults()


@pytest.mark.parametrize("make", KINDS)
def test_unknown_fault_or_counter_is_a_model_error(make: ModelFactory) -> None:
    model = make()
    with pytest.raises(ModelError, match="PAPER_ON_FIRE"):
        model.inject_fault("PAPER_ON_FIRE", until=None)
    with pytest.raises(ModelError, match=r"no counter '(toner_pct|state)'"):
        model.set_counter("toner_pct" if model.kind == "copier" else "state", 1)


# --- copier ------------------------------------------------------------------------------


def test_copier_same_values_however_often_advanced() -> None:
    # a nearly empty cartridge, so that the week holds an empty spell and a replacement
    coarse = trace(_copier(seed=5, toner_pct=3.0), CHECKPOINTS, None)
    fine = trace(_copier(seed=5, toner_pct=3.0), CHECKPOINTS, timedelta(minutes=7))
    single = _copier(seed=5, toner_pct=3.0)
    single.advance(CHECKPOINTS[-1])
    assert fine == coarse
    assert coarse[-1] == (single.values(), single.faults())
    assert any("TONER_EMPTY" in faults for _, faults in coarse)
    assert coarse[-1][0]["pages_total"] != coarse[0][0]["pages_total"]
    other_seed = trace(_copier(seed=6, toner_pct=3.0), CHECKPOINTS, None)
    assert other_seed != coarse


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(_at(FRIDAY, 18), _at(FRIDAY + timedelta(days=3), 7, 59, 59), id="weekend"),
        pytest.param(_at(MONDAY, 18), _at(MONDAY + timedelta(days=1), 7, 59, 59), id="night"),
    ],
)
def test_copier_prints_nothing_while_closed(start: datetime, end: datetime) -> None:
    model = CopierModel(seed=2, start=start, hours=HOURS)
    before = model.values()
    for now in steps(start, end, timedelta(minutes=11)):
        model.advance(now)
        assert model.values() == before | {"state": 0}
    # and it does print once the clinic opens
    model.advance(end + timedelta(hours=3))
    assert model.values()["pages_total"] != before["pages_total"]


def test_copier_state_is_printing_exactly_in_slots_with_pages() -> None:
    model = _copier(seed=3, toner_pct=100.0)
    pages = model.counter("pages_total")
    printing = idle = 0
    # one minute into every slot of a Monday
    for slot in range(24 * 12):
        model.advance(MONDAY + timedelta(minutes=5 * slot + 1))
        printed = model.counter("pages_total") - pages
        pages += printed
        assert model.values()["state"] == int(printed > 0), f"slot {slot}"
        assert 0 <= printed <= 40
        printing += printed > 0
        idle += printed == 0 and HOURS.is_open(model.now)
    assert printing > 20
    assert idle > 20  # not every open slot prints


def test_copier_toner_falls_with_pages() -> None:
    model = _copier(seed=4, toner_pct=100.0, drum_life_pct=50.0)
    before = model.values()
    for now in steps(MONDAY, MONDAY + timedelta(days=1), timedelta(minutes=13)):
        previous = model.values()
        model.advance(now)
        current = model.values()
        pages = model.counter("pages_total") - int(previous["pages_total"])
        used = (float(previous["toner_pct"]) - float(current["toner_pct"])) / 100
        assert used * CARTRIDGE_PAGES == pytest.approx(pages)
        assert float(current["drum_life_pct"]) <= float(previous["drum_life_pct"])
    after = model.values()
    assert after["pages_total"] != before["pages_total"]
    assert float(after["drum_life_pct"]) < float(before["drum_life_pct"])


def test_copier_toner_empty_stops_printing_until_a_new_cartridge() -> None:
    model = _copier(seed=7, toner_pct=0.5)  # 40 pages left
    assert model.faults() == ["TONER_LOW"]
    empty_open_slots = 0
    replaced = False
    for now in steps(MONDAY, MONDAY + 2 * WEEK, timedelta(minutes=5)):
        was_empty = "TONER_EMPTY" in model.faults()
        pages = model.counter("pages_total")
        model.advance(now)
        values, faults = model.values(), model.faults()
        assert ("TONER_LOW" in faults) == (float(values["toner_pct"]) < 10)
        assert ("TONER_EMPTY" in faults) == (values["toner_pct"] == 0)
        if "TONER_EMPTY" in faults:
            if was_empty:
                # the slot that used up the cartridge printed its last pages; none after it
                assert model.counter("pages_total") == pages
                assert values["state"] == 0
            empty_open_slots += HOURS.is_open(now)
        elif was_empty:
            assert float(values["toner_pct"]) > 99  # a fresh cartridge, maybe one job in
            replaced = True
            break
    assert empty_open_slots > 0
    assert replaced
    assert empty_open_slots <= 2 * OPEN_SLOTS_PER_DAY + 1


def test_copier_is_busier_in_the_morning() -> None:
    model = _copier(seed=9, toner_pct=100.0)
    pages = model.counter("pages_total")
    totals = {"morning": 0, "afternoon": 0}
    slots = {"morning": 0, "afternoon": 0}
    for slot in range(4 * 7 * 24 * 12):
        now = MONDAY + timedelta(minutes=5 * slot + 1)
        model.advance(now)
        printed = model.counter("pages_total") - pages
        pages += printed
        if HOURS.is_open(now) and "TONER_EMPTY" not in model.faults():
            part = "morning" if now.hour < 12 else "afternoon"
            totals[part] += printed
            slots[part] += 1
    assert totals["morning"] / slots["morning"] > 1.5 * totals["afternoon"] / slots["afternoon"]


def test_copier_worn_drum_prints_on_until_replaced() -> None:
    model = _copier(seed=10, toner_pct=100.0, drum_life_pct=5.05)  # 30 pages above the limit
    assert "DRUM_END_OF_LIFE" not in model.faults()
    worn_open_slots = worn_pages = 0
    replaced = False
    for now in steps(MONDAY, MONDAY + 2 * WEEK, timedelta(minutes=5)):
        was_worn = "DRUM_END_OF_LIFE" in model.faults()
        pages = model.counter("pages_total")
        model.advance(now)
        drum = float(model.values()["drum_life_pct"])
        assert ("DRUM_END_OF_LIFE" in model.faults()) == (drum < 5)
        if was_worn:
            worn_pages += model.counter("pages_total") - pages
        if drum < 5:
            worn_open_slots += HOURS.is_open(now)
        elif was_worn:
            assert drum > 99  # a new drum, maybe one job in
            replaced = True
            break
    assert replaced
    assert worn_pages > 0  # a worn drum still prints
    assert 0 < worn_open_slots <= 5 * OPEN_SLOTS_PER_DAY + 1


def test_copier_jam_counts_and_lasts_until_a_slot_without_one() -> None:
    model = _copier(seed=1, toner_pct=100.0)
    jams_seen = 0
    jammed, previous_jams = False, model.counter("jams_total")
    for slot in range(3 * 7 * 24 * 12):
        model.advance(MONDAY + timedelta(minutes=5 * slot + 2))
        jams = model.counter("jams_total")
        model_jammed = "JAM" in model.faults()
        new_jam = jams != previous_jams
        # a jam holds through closed hours; the next open slot without one clears it
        expected = new_jam or (jammed and not HOURS.is_open(model.now))
        assert model_jammed == expected, f"slot {slot}"
        if new_jam:
            assert jams == previous_jams + 1
            assert model.values()["state"] == 1  # only a printing slot jams
            jams_seen += 1
        jammed, previous_jams = model_jammed, jams
    assert jams_seen >= 1


def test_copier_pages_wrap_at_32_bits() -> None:
    twin = _copier(seed=8)
    model = _copier(seed=8)
    model.set_counter("pages_total", WRAP_32 - 5)
    assert model.values()["pages_total"] == WRAP_32 - 5
    end = _at(MONDAY, 12)
    twin.advance(end)
    model.advance(end)
    printed = twin.counter("pages_total") - _copier(seed=8).counter("pages_total")
    assert printed > 5
    assert model.values()["pages_total"] == printed - 5
    assert model.counter("pages_total") == (WRAP_32 - 5 + printed) % WRAP_32


# --- compressor: behaviour ---------------------------------------------------------------


def test_compressor_same_values_however_often_advanced() -> None:
    # a filter about to clog, so that the week holds a clogged spell and a filter change
    coarse = trace(_compressor(seed=2, filter_dp_kpa=34.9), CHECKPOINTS, None)
    fine = trace(_compressor(seed=2, filter_dp_kpa=34.9), CHECKPOINTS, timedelta(minutes=7))
    single = _compressor(seed=2, filter_dp_kpa=34.9)
    single.advance(CHECKPOINTS[-1])
    assert fine == coarse
    assert coarse[-1] == (single.values(), single.faults())
    assert any("FILTER_CLOGGED" in faults for _, faults in coarse)
    assert "FILTER_CLOGGED" not in coarse[-1][1]
    assert coarse[-1][0]["run_hours"] != coarse[0][0]["run_hours"]
    other_seed = trace(_compressor(seed=3, filter_dp_kpa=34.9), CHECKPOINTS, None)
    assert other_seed != coarse


def _sample(model: CompressorModel, start: datetime, end: datetime) -> Iterator[dict[str, Value]]:
    """The model every 20 seconds: shorter than any run and any pause between runs."""
    for now in steps(start, end, timedelta(seconds=20)):
        model.advance(now)
        yield model.values()


def test_compressor_each_start_is_one_run() -> None:
    model = CompressorModel(seed=4, start=MONDAY, hours=HOURS)
    starts, run_hours = model.counter("starts_total"), float(model.values()["run_hours"])
    seen_starts = running_samples = 0
    was_running = 0
    for values in _sample(model, MONDAY, MONDAY + timedelta(days=1)):
        started = int(values["starts_total"]) - starts
        assert started in (0, 1)
        assert started == int(values["motor_running"] == 1 and was_running == 0)
        starts += started
        seen_starts += started
        was_running = int(values["motor_running"])
        running_samples += was_running
        if was_running:
            assert 6.0 <= float(values["pressure_bar"]) <= 8.0
            assert values["state"] in (1, 2)
        else:
            assert values["state"] in (0, 2)
    assert seen_starts > 30  # a clinic day's cycling
    sampled_hours = running_samples * 20 / 3600
    measured = float(model.values()["run_hours"]) - run_hours
    assert measured == pytest.approx(sampled_hours, abs=0.3)
    assert measured > 1


def test_compressor_only_tops_up_at_night_and_weekends() -> None:
    start = _at(FRIDAY, 18)
    end = _at(FRIDAY + timedelta(days=3), 7, 59, 59)
    model = CompressorModel(seed=5, start=start, hours=HOURS)
    starts, run_hours = model.counter("starts_total"), float(model.values()["run_hours"])
    longest = current = 0
    for values in _sample(model, start, end):
        current = current + 1 if values["motor_running"] else 0
        longest = max(longest, current)
    assert 0 < model.counter("starts_total") - starts <= 12
    assert float(model.values()["run_hours"]) - run_hours <= 0.5
    assert longest * 20 <= 160  # top-ups are short


def test_compressor_overheats_rarely_and_trips() -> None:
    # seed 3 overheats once on the Monday afternoon
    model = CompressorModel(seed=3, start=MONDAY, hours=HOURS)
    hot = 0
    for values in _sample(model, MONDAY, MONDAY + timedelta(days=1)):
        faults = model.faults()
        is_hot = float(values["discharge_temp_c"]) > HIGH_TEMP_C
        assert ("HIGH_TEMP" in faults) == is_hot
        assert values["high_temp"] == int(is_hot)
        if is_hot:
            assert (values["state"], values["alarm_relay"]) == (2, 1)
            hot += 1
        else:
            assert values["state"] == values["motor_running"]
    assert 0 < hot < 30  # 20-second samples: a few minutes, not hours


def test_compressor_filter_clogs_with_run_hours_until_changed() -> None:
    model = CompressorModel(seed=6, start=MONDAY, hours=HOURS, initial={"filter_dp_kpa": 34.0})
    run_tenths = model.counter("run_hours")
    previous = model.values()
    clogged_open_steps = 0
    changed = False
    for now in steps(MONDAY, MONDAY + 2 * WEEK, timedelta(minutes=5)):
        model.advance(now)
        values = model.values()
        dp, before = float(values["filter_dp_kpa"]), float(previous["filter_dp_kpa"])
        clogged = dp > FILTER_CLOGGED_KPA
        assert ("FILTER_CLOGGED" in model.faults()) == clogged
        assert (values["filter_clogged"], values["alarm_relay"]) == (int(clogged), int(clogged))
        if dp < before:
            assert dp == CLEAN_FILTER_KPA
            changed = True
            break
        # the pressure drop follows run hours (counted in whole tenths, reported to 0.01 kPa)
        ran = (model.counter("run_hours") - run_tenths) / 10
        assert dp == pytest.approx(34.0 + FILTER_KPA_PER_RUN_HOUR * ran, abs=0.02)
        idle = values["starts_total"] == previous["starts_total"] and not (
            values["motor_running"] or previous["motor_running"]
        )
        if idle:
            assert dp == before
        clogged_open_steps += clogged and HOURS.is_open(now)
        previous = values
    assert changed
    # staff change it within 3 clinic days of 10-minute slots (two of these steps each)
    assert 0 < clogged_open_steps <= 2 * (3 * 60 + 2)


@pytest.mark.parametrize(
    ("code", "bit"), [("HIGH_TEMP", "high_temp"), ("FILTER_CLOGGED", "filter_clogged")]
)
def test_compressor_injected_fault_sets_its_bit_and_the_alarm_relay(code: str, bit: str) -> None:
    model = _compressor(filter_dp_kpa=10.0)
    model.advance(_at(MONDAY, 3))
    assert (model.values()[bit], model.values()["alarm_relay"]) == (0, 0)
    model.inject_fault(code, until=_at(MONDAY, 4))
    values = model.values()
    assert (values[bit], values["alarm_relay"]) == (1, 1)
    assert values["state"] == (2 if code == "HIGH_TEMP" else values["motor_running"])
    discrete = next(r for r in REGISTER_MAP if r.name == bit)
    assert encode_tables(REGISTER_MAP, values)["discrete"][discrete.address] == 1
    model.advance(_at(MONDAY, 4))
    assert (model.values()[bit], model.values()["alarm_relay"]) == (0, 0)


def test_compressor_counters_wrap_at_32_bits() -> None:
    model = _compressor(seed=4)
    model.set_counter("starts_total", WRAP_32 - 1)
    model.set_counter("run_hours", WRAP_32 - 2)  # tenths of an hour
    assert model.values()["run_hours"] == pytest.approx((WRAP_32 - 2) / 10)
    model.advance(_at(MONDAY, 12))
    values = model.values()
    assert 0 < int(values["starts_total"]) < 100
    assert model.counter("run_hours") < 100
    assert values["run_hours"] == pytest.approx(model.counter("run_hours") / 10)
    tables = encode_tables(REGISTER_MAP, values)
    assert tables["holding"][2:4] == [0, values["starts_total"]]  # big word order
    assert tables["holding"][0:2] == [model.counter("run_hours"), 0]  # little word order


# --- compressor: the register map --------------------------------------------------------


def _round_trip(model: CompressorModel, values: dict[str, Value]) -> None:
    decoded = decoded_by_pymodbus(REGISTER_MAP, encode_tables(REGISTER_MAP, values))
    assert set(decoded) == set(values)
    for register in REGISTER_MAP:
        value, raw = values[register.name], decoded[register.name]
        if register.type is DataType.STRING:
            assert raw == value
        elif register.type is DataType.FLOAT32:
            assert isinstance(raw, float)
            assert raw == pytest.approx(value, rel=1e-7), register.name
        else:
            assert isinstance(raw, int), register.name
            if register.kind is MetricKind.COUNTER:
                assert raw == model.counter(register.name)
            assert raw == round((float(value) - register.offset) / register.scale), register.name
            assert raw * register.scale + register.offset == pytest.approx(value, abs=1e-9)


def test_compressor_register_map_round_trips_through_pymodbus() -> None:
    model = _compressor(seed=3, filter_dp_kpa=34.99)
    model.set_counter("starts_total", WRAP_32 - 3)
    model.set_counter("run_hours", 0x0001_FFFF)  # both words of a little-endian pair matter
    states: set[tuple[Value, ...]] = set()
    for values in _sample(model, _at(MONDAY, 8), _at(MONDAY, 18)):
        _round_trip(model, values)
        states.add((values["state"], values["motor_running"], values["filter_clogged"]))
    # the walk went through running, stopped, overheated and clogged: every bit seen both ways
    assert {s[0] for s in states} == {0, 1, 2}
    assert {s[1] for s in states} == {0, 1}
    assert {s[2] for s in states} == {0, 1}
    model.inject_fault("HIGH_TEMP", until=None)
    _round_trip(model, model.values())


def test_compressor_int16_registers_are_signed() -> None:
    model = _compressor()
    model.advance(_at(MONDAY, 9))
    values = model.values() | {"ambient_temp_c": -4.5}
    decoded = decoded_by_pymodbus(REGISTER_MAP, encode_tables(REGISTER_MAP, values))
    assert decoded["ambient_temp_c"] == -45


def test_compressor_register_map_has_the_promised_variety() -> None:
    by_name = {r.name: r for r in REGISTER_MAP}
    assert len(by_name) == len(REGISTER_MAP)
    assert {r.table for r in REGISTER_MAP} == set(TABLES)
    assert any(r.type is DataType.STRING for r in REGISTER_MAP)
    for data_type in (DataType.UINT32, DataType.FLOAT32):
        orders = {r.word_order for r in REGISTER_MAP if r.type is data_type}
        assert orders == {Order.BIG, Order.LITTLE}, data_type
    assert by_name["run_hours"].word_order is Order.LITTLE
    assert by_name["filter_dp_kpa"].word_order is Order.LITTLE
    assert by_name["ambient_temp_c"].type is DataType.INT16

    sizes = table_sizes(REGISTER_MAP)
    for table in TABLES:
        used: list[int] = []
        for register in (r for r in REGISTER_MAP if r.table == table):
            span = range(register.address, register.address + register.registers)
            assert not set(span) & set(used), f"{register.name} overlaps in {table}"
            assert span.stop <= sizes[table]
            used.extend(span)
        assert max(used) + 1 == sizes[table]
    holding = sorted(
        a
        for r in REGISTER_MAP
        if r.table == "holding"
        for a in range(r.address, r.address + r.registers)
    )
    assert holding != list(range(holding[0], holding[-1] + 1))  # a gap to merge across


def test_compressor_channels_match_the_register_map() -> None:
    channels = {c.name: c for c in CompressorModel.channels}
    assert set(channels) == {r.name for r in REGISTER_MAP}
    for register in REGISTER_MAP:
        channel = channels[register.name]
        assert (channel.kind, channel.unit) == (register.kind, register.unit), register.name
        if register.kind is MetricKind.COUNTER:
            assert (channel.width, channel.scale) == (register.width, register.scale)
            assert channel.width == 32
    faults = {r.name.upper() for r in REGISTER_MAP if r.kind is MetricKind.FAULT}
    assert faults == set(CompressorModel.fault_codes)
