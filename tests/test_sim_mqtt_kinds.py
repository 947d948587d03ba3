"""The vaccine fridge, X-ray and infusion pump models: pure functions of a seed and the time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest

from core.records import MetricKind
from simulators.devices.base import DeviceModel, ModelError
from simulators.devices.infusion_pump import BATTERY_LOW_PCT, InfusionPumpModel
from simulators.devices.usage import ClinicHours
from simulators.devices.vaccine_fridge import HIGH_LIMIT_C, LOW_LIMIT_C, VaccineFridgeModel
from simulators.devices.xray import OVER_TEMPERATURE_C, XrayModel

LONDON = ZoneInfo("Europe/London")
HOURS = ClinicHours(LONDON)
# ten minutes before opening on a Monday; in November London keeps GMT, so local time is UTC
MONDAY = datetime(2026, 11, 23, 7, 50, tzinfo=LONDON)
KINDS: tuple[type[DeviceModel], ...] = (VaccineFridgeModel, XrayModel, InfusionPumpModel)
SEED = 11
WRAP = 1 << 32

M = TypeVar("M", bound=DeviceModel)


def _at(days: int, hour: int, minute: int = 0) -> datetime:
    """``days`` after MONDAY at the given local time."""
    return (MONDAY + timedelta(days=days)).replace(hour=hour, minute=minute)


def _zeros(kind: type[DeviceModel]) -> dict[str, float]:
    return {c.name: 0 for c in kind.channels if c.kind is MetricKind.COUNTER}


def _model(kind: type[M], *, seed: int = SEED, start: datetime = MONDAY, **kwargs: Any) -> M:
    return kind(seed=seed, start=start, hours=HOURS, initial=_zeros(kind), **kwargs)


def _counters(model: DeviceModel) -> dict[str, int]:
    return {c.name: model.counter(c.name) for c in model.channels if c.kind is MetricKind.COUNTER}


def _steps(model: M, end: datetime, step: timedelta) -> Iterator[M]:
    """Advance ``model`` to ``end`` by ``step``, handing it back after every step."""
    now = model.now
    while now < end:
        now = min(now + step, end)
        model.advance(now)
        yield model


def _run(model: DeviceModel, end: datetime, step: timedelta) -> None:
    for _ in _steps(model, end, step):
        pass


# --- all three kinds ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_declared_channel_is_reported_and_nothing_else(kind: type[DeviceModel]) -> None:
    model = kind(seed=SEED, start=MONDAY, hours=HOURS)
    for moment in (MONDAY, _at(0, 10, 17), _at(0, 23), _at(5, 12)):
        model.advance(moment)
        assert list(model.values()) == [c.name for c in kind.channels]
        assert all(isinstance(v, int | float) for v in model.values().values())
    assert kind.transport == "mqtt"
    assert all(c.width == 32 for c in kind.channels if c.kind is MetricKind.COUNTER), (
        "every counter is a 32-bit register"
    )


# clinic-hours counters of each kind; the fridge's compressor runs around the clock
CLINIC_COUNTERS = {
    VaccineFridgeModel: ("door_openings",),
    XrayModel: ("exposures_total", "power_on_hours"),
    InfusionPumpModel: ("operating_hours", "infusions_total"),
}


def _trace(
    model: DeviceModel, checkpoints: list[datetime], step: timedelta
) -> list[tuple[dict[str, Any], list[str]]]:
    """The model's values and faults at every checkpoint, advancing by ``step`` in between and
    reading the values at every step too, as a publisher would."""
    trace: list[tuple[dict[str, Any], list[str]]] = []
    for checkpoint in checkpoints:
        for seen in _steps(model, checkpoint - step, step):
            seen.values()
            seen.faults()
        model.advance(checkpoint)
        trace.append((model.values(), model.faults()))
    return trace


CHECKPOINTS = [_at(d, h, m) for d in range(7) for h, m in ((9, 3), (12, 30), (17, 59), (23, 0))]


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_state_however_often_advanced(kind: type[DeviceModel]) -> None:
    coarse = _trace(_model(kind), CHECKPOINTS, timedelta(days=7))
    fine = _trace(_model(kind), CHECKPOINTS, timedelta(minutes=7))
    single = _model(kind)
    single.advance(CHECKPOINTS[-1])
    assert coarse == fine
    assert coarse[-1] == (single.values(), single.faults())
    # the week was not idle, so the comparison above compares something
    assert all(single.counter(name) > 0 for name in CLINIC_COUNTERS[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_different_seeds_differ(kind: type[DeviceModel]) -> None:
    # same starting counters: any difference comes from the simulated week itself
    one = _trace(_model(kind, seed=SEED), CHECKPOINTS, timedelta(days=7))
    other = _trace(_model(kind, seed=SEED + 1), CHECKPOINTS, timedelta(days=7))
    assert one != other
    assert one[-1][0] != other[-1][0]


@pytest.mark.parametrize("kind", KINDS)
def test_clinic_counters_grow_on_a_weekday(kind: type[DeviceModel]) -> None:
    model = _model(kind)
    model.advance(_at(0, 7, 59))
    assert all(model.counter(name) == 0 for name in CLINIC_COUNTERS[kind])
    model.advance(_at(0, 18))
    assert all(model.counter(name) > 0 for name in CLINIC_COUNTERS[kind])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(_at(0, 18), _at(1, 8), id="night"),
        pytest.param(_at(4, 18), _at(7, 8), id="weekend"),
    ],
)
def test_clinic_counters_still_while_closed(
    kind: type[DeviceModel], start: datetime, end: datetime
) -> None:
    model = _model(kind, start=start)
    _run(model, end, timedelta(minutes=13))
    counters = _counters(model)
    assert all(counters[name] == 0 for name in CLINIC_COUNTERS[kind])
    if kind is XrayModel or kind is InfusionPumpModel:
        assert set(counters.values()) == {0}


def test_fridge_compressor_starts_around_the_clock() -> None:
    start, end = _at(4, 18), _at(7, 8)  # Friday evening to Monday morning: 62 hours
    model = _model(VaccineFridgeModel, start=start)
    model.advance(end)
    minutes = (end - start) / timedelta(minutes=1)
    # cycles last 35 to 55 minutes; an excursion (at most 90 minutes) costs a few starts
    assert minutes // 55 - 3 <= model.counter("compressor_starts") <= minutes // 35 + 1


@pytest.mark.parametrize(
    ("kind", "code"),
    [(kind, code) for kind in KINDS for code in kind.fault_codes],
)
def test_injected_fault_lasts_until_its_end(kind: type[DeviceModel], code: str) -> None:
    start = _at(5, 10)  # a quiet Saturday morning
    model = _model(kind, start=start)
    assert code not in model.faults()
    model.inject_fault(code, until=start + timedelta(hours=1))
    model.advance(start + timedelta(minutes=59))
    assert code in model.faults()
    model.advance(start + timedelta(hours=1))
    assert code not in model.faults()


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_fault_code_is_refused(kind: type[DeviceModel]) -> None:
    model = _model(kind)
    with pytest.raises(ModelError, match="no fault 'DOOR'"):
        model.inject_fault("DOOR", until=None)


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (VaccineFridgeModel, "door_openings"),
        (VaccineFridgeModel, "compressor_starts"),
        (XrayModel, "exposures_total"),
        (XrayModel, "power_on_hours"),
        (InfusionPumpModel, "infusions_total"),
        (InfusionPumpModel, "operating_hours"),
    ],
)
def test_counter_wraps_at_32_bits(kind: type[DeviceModel], name: str) -> None:
    end = _at(0, 18)
    reference = _model(kind)
    reference.advance(end)
    used = reference.counter(name)
    assert used > 3
    model = _model(kind)
    model.set_counter(name, WRAP - 3)
    model.advance(end)
    assert model.counter(name) == used - 3
    assert model._counters[name] == WRAP - 3 + used  # the device's own count keeps growing
    scale = model._channel(name).scale
    assert model.values()[name] == pytest.approx((used - 3) * scale)


# --- vaccine fridge ----------------------------------------------------------------------

# seed 8 has excursions 5, 15 and 23 days after MONDAY (found by looking: at 1 % a day only
# about one seed in four has any in four weeks); seed 11 has none in its first four weeks
EXCURSION_SEED = 8
CALM_SEED = 11
FOUR_WEEKS = timedelta(days=28)


def _excursions(model: VaccineFridgeModel, span: timedelta) -> list[tuple[float, float]]:
    first = int(MONDAY.timestamp() // 86_400)
    days = range(first, first + span.days + 1)
    return [window for day in days if (window := model.excursion(day)) is not None]


def test_fridge_excursion_raises_high_exactly_while_above_8() -> None:
    model = _model(VaccineFridgeModel, seed=EXCURSION_SEED)
    windows = _excursions(model, FOUR_WEEKS)
    assert windows
    begins, ends = windows[0]
    assert 20 * 60 <= ends - begins <= 90 * 60
    model.advance(datetime.fromtimestamp(begins - 600, tz=LONDON))
    assert float(model.values()["temperature_c"]) <= HIGH_LIMIT_C
    above = 0
    for seen in _steps(model, datetime.fromtimestamp(ends + 3600, tz=LONDON), timedelta(minutes=1)):
        hot = float(seen.values()["temperature_c"]) > HIGH_LIMIT_C
        assert ("EXCURSION_HIGH" in seen.faults()) is hot
        above += hot
    # a real excursion, then back in range once the compressor has pulled it down
    assert above >= 10
    assert "EXCURSION_HIGH" not in model.faults()
    assert float(model.values()["max_temp_c"]) > HIGH_LIMIT_C


@pytest.mark.parametrize("seed", [EXCURSION_SEED, CALM_SEED])
def test_fridge_leaves_2_to_8_only_in_an_excursion(seed: int) -> None:
    model = _model(VaccineFridgeModel, seed=seed)
    windows = _excursions(model, FOUR_WEEKS)
    hot_moments = []
    for seen in _steps(model, MONDAY + FOUR_WEEKS, timedelta(minutes=5)):
        values, faults = seen.values(), seen.faults()
        temperature = float(values["temperature_c"])
        assert float(values["min_temp_c"]) <= temperature <= float(values["max_temp_c"])
        assert ("EXCURSION_HIGH" in faults) is (temperature > HIGH_LIMIT_C)
        assert ("EXCURSION_LOW" in faults) is (temperature < LOW_LIMIT_C)
        assert temperature >= LOW_LIMIT_C
        if temperature > HIGH_LIMIT_C:
            hot_moments.append(seen.now.timestamp())
    # door openings warm the cabinet but never past 8 °C: only an excursion (or its recovery)
    for moment in hot_moments:
        assert any(b <= moment <= e + 3600 for b, e in windows)
    assert bool(hot_moments) is bool(windows)


def test_fridge_door_openings_warm_the_cabinet_briefly() -> None:
    model = _model(VaccineFridgeModel, seed=CALM_SEED)
    night = [
        float(m.values()["temperature_c"]) for m in _steps(model, _at(0, 8), timedelta(minutes=1))
    ]
    day = [
        float(m.values()["temperature_c"]) for m in _steps(model, _at(0, 18), timedelta(minutes=1))
    ]
    # the compressor's band (4.0 to 6.0 at most) plus a little noise
    assert min(night) >= 3.9
    assert max(night) <= 6.1
    assert max(day) > max(night) + 0.3


def test_fridge_min_max_restart_at_local_midnight() -> None:
    model = _model(VaccineFridgeModel, seed=CALM_SEED)
    model.advance(_at(0, 23, 59))
    values = model.values()
    assert float(values["min_temp_c"]) < float(values["max_temp_c"])
    model.advance(_at(1, 0))
    values = model.values()
    assert values["min_temp_c"] == values["temperature_c"] == values["max_temp_c"]


def test_fridge_logger_battery_runs_down_and_raises_low() -> None:
    model = _model(VaccineFridgeModel)
    levels: list[float] = []
    for seen in _steps(model, MONDAY + timedelta(days=3 * 365), timedelta(days=10)):
        level = float(seen.values()["logger_battery_pct"])
        assert ("LOGGER_BATTERY_LOW" in seen.faults()) is (level < 15)
        levels.append(level)
    assert levels == sorted(levels, reverse=True)
    # a logger in service starts with at least 20 % left and is flat within three years
    assert levels[0] >= 20
    assert levels[-1] == 0


def test_fridge_calibration_due_counts_down() -> None:
    model = _model(VaccineFridgeModel)
    left = model.values()["calibration_days_left"]
    assert isinstance(left, int)
    assert 30 <= left <= 700
    model.advance(MONDAY + timedelta(days=7))
    assert model.values()["calibration_days_left"] == left - 7
    other = _model(VaccineFridgeModel, seed=SEED + 1)
    assert other.values()["calibration_days_left"] != left


# --- X-ray -------------------------------------------------------------------------------

# seed 17 has a tube fault on its first Monday
TUBE_FAULT_SEED = 17


def test_xray_power_on_hours_are_clinic_hours() -> None:
    model = _model(XrayModel)
    _run(model, _at(7, 7, 50), timedelta(minutes=7))
    assert model.values()["power_on_hours"] == 50.0  # five clinic days of ten hours


def test_xray_warms_up_for_15_minutes_before_exposing() -> None:
    model = _model(XrayModel)
    for seen in _steps(model, _at(0, 8, 14), timedelta(minutes=1)):
        assert seen.values()["warmed_up"] == 0
        assert seen.counter("exposures_total") == 0
    model.advance(_at(0, 8, 15))
    assert model.values()["warmed_up"] == 1
    model.advance(_at(0, 17, 59))
    assert model.values()["warmed_up"] == 1
    model.advance(_at(0, 18))
    assert model.values()["warmed_up"] == 0


def test_xray_tube_heats_with_exposures_and_cools_overnight() -> None:
    model = _model(XrayModel)
    cold = float(model.values()["tube_temp_c"])
    hottest = max(
        float(m.values()["tube_temp_c"]) for m in _steps(model, _at(0, 18), timedelta(minutes=3))
    )
    model.advance(_at(1, 3))
    assert cold <= 22.2
    assert hottest > cold + 10
    assert float(model.values()["tube_temp_c"]) <= 22.2
    assert model.values()["tube_heat_pct"] == 0.0


def test_xray_tube_fault_lasts_until_the_next_clinic_day() -> None:
    model = _model(XrayModel, seed=TUBE_FAULT_SEED)
    day = model.clinic_day(date(2026, 11, 23))
    assert day is not None
    assert day.fault is not None
    failed_at, code = day.fault
    model.advance(datetime.fromtimestamp(failed_at - 1, tz=LONDON))
    assert code not in model.faults()
    model.advance(datetime.fromtimestamp(failed_at, tz=LONDON))
    assert code in model.faults()
    exposures = model.counter("exposures_total")
    model.advance(_at(1, 7, 59))
    assert code in model.faults()
    assert model.counter("exposures_total") == exposures  # out of service for the rest of the day
    model.advance(_at(1, 8))
    assert code not in model.faults()


def test_xray_over_temperature_exactly_while_above_70() -> None:
    # a heavy workload (25 °C per exposure instead of 8) drives the tube past its limit
    model = _model(XrayModel)
    model.heat_per_exposure_c = 25.0
    over = 0
    for seen in _steps(model, _at(0, 18), timedelta(minutes=1)):
        hot = float(seen.values()["tube_temp_c"]) > OVER_TEMPERATURE_C
        assert ("OVER_TEMPERATURE" in seen.faults()) is hot
        over += hot
    assert over > 0


# --- infusion pump -----------------------------------------------------------------------

# seed 5 runs its battery under 20 % on its first Wednesday (two long infusions, short gap)
LOW_BATTERY_SEED = 5


def test_pump_counts_its_infusions_and_their_running_time() -> None:
    model = _model(InfusionPumpModel)
    infusions = model.infusions(date(2026, 11, 23))
    assert infusions
    model.advance(_at(0, 18))
    assert model.counter("infusions_total") == len(infusions)
    running = sum(i.ends - i.starts for i in infusions) / 360
    # whole tenths of an hour crossed: each infusion counts its length, give or take one
    assert running - len(infusions) <= model.counter("operating_hours") <= running + len(infusions)
    assert all(
        i.starts >= _at(0, 8).timestamp() and i.ends <= _at(0, 18).timestamp() for i in infusions
    )


def test_pump_reports_what_it_is_doing() -> None:
    model = _model(InfusionPumpModel)
    infusing_seen = idle_seen = 0
    for seen in _steps(model, _at(1, 8), timedelta(minutes=2)):
        values = seen.values()
        occluded = "OCCLUSION" in seen.faults()
        if values["infusing"] == 1:
            assert (float(values["rate_ml_h"]) > 0) is not occluded
            infusing_seen += 1
        else:
            assert values["rate_ml_h"] == 0.0
            assert not occluded
            idle_seen += 1
    assert infusing_seen > 0
    assert idle_seen > 0


def test_pump_occlusion_counts_and_clears() -> None:
    model = _model(InfusionPumpModel)
    occlusions = [
        i.occlusion
        for n in range(28)
        for i in model.infusions(date(2026, 11, 23) + timedelta(days=n))
        if i.occlusion is not None
    ]
    assert occlusions  # a few in a hundred infusions, four weeks of them
    begins, ends = occlusions[0]
    assert 2 * 60 <= ends - begins <= 6 * 60
    model.advance(datetime.fromtimestamp(begins - 1, tz=LONDON))
    before = model.counter("occlusion_alarms_total")
    assert "OCCLUSION" not in model.faults()
    model.advance(datetime.fromtimestamp(begins, tz=LONDON))
    assert model.counter("occlusion_alarms_total") == before + 1
    assert "OCCLUSION" in model.faults()
    assert model.values()["rate_ml_h"] == 0.0
    model.advance(datetime.fromtimestamp(ends, tz=LONDON))
    assert "OCCLUSION" not in model.faults()
    assert model.counter("occlusion_alarms_total") == before + 1


def test_pump_battery_drains_infusing_and_charges_docked() -> None:
    model = _model(InfusionPumpModel, seed=LOW_BATTERY_SEED)
    low = 0
    for seen in _steps(model, _at(7, 8), timedelta(minutes=1)):
        level = float(seen.values()["battery_pct"])
        assert ("BATTERY_LOW" in seen.faults()) is (level < BATTERY_LOW_PCT)
        low += level < BATTERY_LOW_PCT
        if seen.values()["infusing"] == 0 and not HOURS.is_open(seen.now):
            # even a flat battery is full again a little over two hours after closing
            assert level == 100.0 or seen.now.hour < 21
    assert low > 0
    # the low Wednesday leaves no trace: Thursday's first infusion starts on a full battery
    thursday = _model(InfusionPumpModel, seed=LOW_BATTERY_SEED, start=_at(3, 7, 50))
    first = thursday.infusions(date(2026, 11, 26))[0]
    thursday.advance(datetime.fromtimestamp(first.starts, tz=LONDON))
    assert thursday.values()["battery_pct"] == 100.0
