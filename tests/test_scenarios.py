"""Scenario and fleet files: what loads, what is refused (with file, line and field), and the
site configuration a generated fleet comes with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.clock import AcceleratedClock
from core.config import ModbusSource, MqttSource, SiteConfig
from core.errors import ConfigError
from simulators.devices import MODELS
from simulators.docs import render
from simulators.fleet import MIX, FleetSpec, SimulatedFleet, fleet_of, generate_site, load_fleet
from simulators.scenario import Scenario, ScenarioRunner, load_scenario
from tests.support import sample_site

ORIGIN = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
DOCS = Path(__file__).parent.parent / "docs" / "simulated-devices.md"


@pytest.fixture(scope="module")
def fleet_site() -> SiteConfig:
    return generate_site(
        FleetSpec(devices={"autoclave": 1, "ups": 1, "copier": 1}), mqtt_url="mqtt://x:1883"
    )


def _issues(tmp_path: Path, text: str, site: SiteConfig) -> list[tuple[int | None, str, str]]:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_scenario(path, site, ORIGIN)
    for issue in refused.value.issues:
        assert issue.file == str(path)
    return [(i.line, i.field, i.message) for i in refused.value.issues]


GOOD = """\
name: every action
events:
  - {at: 1h, device: ups-001, action: wrap, counter: line_fail_count, by: 2}
  - {at: 90m, device: ups-001, action: count, counter: line_fail_count, by: 3}
  - {at: 2h, device: copier-001, action: reset, counter: pages_total}
  - {at: 2h, device: copier-001, action: set_counter, counter: pages_total, value: 99}
  - {at: 3h, device: autoclave-001, action: fault, code: DOOR, for: 30m}
  - {at: 4h, device: autoclave-001, action: clear_fault, code: DOOR}
  - {at: 4h, device: autoclave-001, action: offline, for: 20m}
  - {at: 5h, device: ups-001, action: exception, code: 6, for: 10m}
  - {at: 6h, device: ups-001, action: timeout, for: 10m}
  - {at: 7h, device: autoclave-001, action: malformed, count: 3}
  - {at: "2026-11-24T17:00:00+00:00", kind: copier, action: slow, delay: 2s, for: 1h}
"""


def test_a_scenario_with_every_action_loads(tmp_path: Path, fleet_site: SiteConfig) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(GOOD)
    scenario = load_scenario(path, fleet_site, ORIGIN)
    assert len(scenario.events) == 11
    assert scenario.events[4].duration == 1800.0
    assert scenario.events[-1].start(ORIGIN) == datetime(2026, 11, 24, 17, tzinfo=UTC)


@pytest.mark.parametrize(
    ("event", "field", "message"),
    [
        pytest.param(
            "{at: 1h, kind: mri_scanner, action: offline}",
            "events[1].kind",
            "unknown device kind 'mri_scanner'",
            id="unknown-kind",
        ),
        pytest.param(
            '{at: "2026-11-24T08:00:00+00:00", device: ups-001, action: offline}',
            "events[1].at",
            "is before the simulation starts",
            id="time-in-the-past",
        ),
        pytest.param(
            "{at: 1h, device: ups-001, action: wrap, counter: battery_temp_c}",
            "events[1].counter",
            "no counter 'battery_temp_c' in a ups's map",
            id="register-outside-the-map",
        ),
        pytest.param(
            "{at: 1h, device: ups-001, action: set_counter, counter: line_fail_count, "
            "value: 70000}",
            "events[1].value",
            "does not fit line_fail_count (16 bits)",
            id="value-wider-than-register",
        ),
        pytest.param(
            "{at: 1h, device: ups-009, action: offline}",
            "events[1].device",
            "no device 'ups-009' in the fleet",
            id="unknown-device",
        ),
        pytest.param(
            "{at: 1h, device: autoclave-001, action: exception, code: 4}",
            "events[1].action",
            "exception is a Modbus answer",
            id="modbus-answer-on-mqtt-device",
        ),
        pytest.param(
            "{at: 1h, device: ups-001, action: malformed, count: 1}",
            "events[1].action",
            "malformed is an MQTT payload",
            id="payload-on-modbus-device",
        ),
        pytest.param(
            "{at: 1h, device: autoclave-001, action: fault, code: ON_FIRE}",
            "events[1].code",
            "has no fault 'ON_FIRE'",
            id="unknown-fault-code",
        ),
        pytest.param(
            "{at: 1h, device: ups-001, action: exception, code: 99}",
            "events[1]",
            "a Modbus exception code from 1 to 11",
            id="bad-exception-code",
        ),
        pytest.param(
            "{at: soon, device: ups-001, action: offline}",
            "events[1].at",
            "not a duration",
            id="unreadable-time",
        ),
        pytest.param(
            "{at: 1h, device: ups-001, action: explode}",
            "events[1].action",
            "Input should be",
            id="unknown-action",
        ),
    ],
)
def test_a_bad_event_is_refused_with_line_and_field(
    tmp_path: Path, fleet_site: SiteConfig, event: str, field: str, message: str
) -> None:
    text = f"events:\n  - {{at: 1h, device: ups-001, action: offline}}\n  - {event}\n"
    [(line, got_field, got_message)] = _issues(tmp_path, text, fleet_site)
    assert line == 3
    assert got_field == field
    assert message in got_message


def test_a_fleet_file_with_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("site: {name: Test}\ndevices:\n  autoclave: 3\n  lava_lamp: 2\n")
    with pytest.raises(ConfigError) as refused:
        load_fleet(path)
    [issue] = refused.value.issues
    assert (issue.file, issue.line, issue.field) == (str(path), 4, "devices.lava_lamp")
    assert "unknown device kind 'lava_lamp'" in issue.message


def test_fleet_of_deals_kinds_in_proportion() -> None:
    spec = fleet_of(1000)
    assert sum(spec.devices.values()) == 1000
    total = sum(MIX.values())
    for kind, weight in MIX.items():
        assert abs(spec.devices[kind] - 1000 * weight / total) <= 1, kind
    small = fleet_of(len(MIX))
    assert set(small.devices) == set(MIX)  # every kind once there is room for it


def test_a_generated_site_reads_exactly_what_the_simulators_serve() -> None:
    spec = FleetSpec(devices=dict.fromkeys(MODELS, 3), units_per_port=2)
    site = generate_site(spec, mqtt_url="mqtt://127.0.0.1:1883")
    assert len(site.devices) == 3 * len(MODELS)
    assert len({d.id for d in site.devices}) == len(site.devices)
    gateways: dict[int, list[int]] = {}
    for device in site.devices:
        model = MODELS[device.kind]
        if isinstance(device.source, ModbusSource):
            assert device.source.registers == list(model.register_map)
            gateways.setdefault(device.source.port, []).append(device.source.unit)
        else:
            assert isinstance(device.source, MqttSource)
            names = [f.field for f in device.source.fields]
            assert names == [c.name for c in model.channels] + ["faults"]
            assert str(device.source.topic).endswith(f"/devices/{device.id}/telemetry")
        assert [p.id for p in device.plans] == [
            f"{device.id}-{plan['suffix']}" for plan in model.default_plans
        ]
    # six Modbus devices, two units per gateway port: three ports, units 1 and 2 on each
    assert sorted(gateways.values()) == [[1, 2]] * 3


def test_the_shipped_sample_reads_exactly_what_the_simulators_serve() -> None:
    site = sample_site()
    assert {d.kind for d in site.devices} == set(MODELS)
    for device in site.devices:
        model = MODELS[device.kind]
        if isinstance(device.source, ModbusSource):
            assert device.source.registers == list(model.register_map), device.id
        else:
            assert isinstance(device.source, MqttSource)
            fields = {f.field: f for f in device.source.fields}
            assert list(fields) == [c.name for c in model.channels] + ["faults"], device.id
            for channel in model.channels:
                field = fields[channel.name]
                assert (field.kind, field.unit, field.width, field.scale) == (
                    channel.kind,
                    channel.unit,
                    channel.width,
                    channel.scale,
                ), f"{device.id}.{channel.name}"


def test_the_device_documentation_is_current() -> None:
    assert DOCS.read_text(encoding="utf-8") == render(), (
        "docs/simulated-devices.md is stale: run .venv/bin/python -m simulators.docs > "
        "docs/simulated-devices.md"
    )


async def test_the_runner_applies_counter_events_at_their_time(fleet_site: SiteConfig) -> None:
    clock = AcceleratedClock(ORIGIN, 1e6)  # eleven simulated days a real second
    fleet = SimulatedFleet(fleet_site, mqtt_url=None, clock=clock)
    ups = fleet.targets["ups-001"].model
    scenario = Scenario.model_validate(
        {
            "events": [
                {"at": "1h", "device": "ups-001", "action": "wrap",
                 "counter": "line_fail_count", "by": 2},
                {"at": "2h", "device": "ups-001", "action": "count",
                 "counter": "line_fail_count", "by": 3},
            ]
        }
    )  # fmt: skip
    runner = ScenarioRunner(scenario, fleet.targets, clock=clock, origin=ORIGIN)
    await runner.run()
    assert runner.applied == 2
    assert ups.counter("line_fail_count") in (1, 2)  # 65534 + 3, wrapped (+1 if an outage)
    assert ups.now >= ORIGIN + timedelta(hours=2)
