"""The site configuration: what loads, and how every problem is located for a technician."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
import yaml

from core.config import (
    CalendarPlan,
    ConditionPlan,
    FaultPlan,
    MeterPlan,
    ModbusSource,
    MqttSource,
    Period,
    SuppliesPlan,
    WhicheverFirstPlan,
    load_config,
    parse_config,
)
from core.errors import ConfigError, ConfigIssue
from core.records import MetricKind
from equipwatch.cli import main

SAMPLE = Path(str(resources.files("equipwatch") / "sample" / "site.yaml"))

# A valid file; every bad case below replaces one unique snippet of it.
GOOD = """\
site:
  name: Test practice
  timezone: Europe/London
devices:
  - id: autoclave-1
    kind: autoclave
    source:
      protocol: mqtt
      topic: clinic/autoclave-1
      expected_interval: 2s
      fields:
        - {field: cycles_total, kind: counter, width: 32}
        - {field: chamber_temp_c, unit: C}
    plans:
      - id: autoclave-1-service
        name: Autoclave service
        type: meter
        metric: cycles_total
        every: 500
  - id: ups-1
    kind: ups
    source:
      protocol: modbus
      host: 127.0.0.1
      interval: 2s
      registers:
        - {name: status, address: 0, type: uint16, kind: state}
        - {name: fails, address: 1, type: uint16, kind: counter}
        - {name: hours, address: 2, type: uint32, count: 2, kind: counter}
    plans:
      - id: ups-1-test
        name: UPS battery test
        type: calendar
        every: 6 months
"""
# Lines referred to below: 3 timezone, 5 first device, 10 expected_interval, 15 meter plan
# (17 type, 18 metric, 19 every), 20 second device (21 kind, 22 source, 24 host, 25 interval,
# 27 and 29 registers 0 and 2), 31 calendar plan (33 type, 34 every).


def _with(old: str, new: str, *more: str, base: str = GOOD) -> str:
    """``base`` with each unique snippet replaced: ``_with(old, new, old2, new2, ...)``."""
    text = base
    pairs = (old, new, *more)
    for index in range(0, len(pairs), 2):
        assert text.count(pairs[index]) == 1, f"{pairs[index]!r} must occur exactly once"
        text = text.replace(pairs[index], pairs[index + 1])
    return text


METER = "type: meter\n        metric: cycles_total\n        every: 500\n"
CALENDAR = "type: calendar\n        every: 6 months\n"


def _single_issue(text: str) -> ConfigIssue:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "site.yaml")
    issues = caught.value.issues
    assert len(issues) == 1, [str(issue) for issue in issues]
    return issues[0]


BAD_CONFIGS = [
    pytest.param(
        _with("kind: ups", "kind: toaster"),
        (21, 5),
        "devices[1].kind",
        "unknown device kind 'toaster'",
        id="unknown-device-kind-located-at-kind-key",
    ),
    pytest.param(
        _with("type: uint32, count: 2", "type: uint32, count: 1"),
        (29, 51),
        "devices[1].source.registers[2].count",
        "uint32 needs 2 register(s) but count gives 1",
        id="uint32-with-count-1-located-at-count",
    ),
    pytest.param(
        _with("  - id: ups-1\n", "  - id: autoclave-1\n"),
        (20, 5),
        "devices[1].id",
        "duplicate device id 'autoclave-1' (first at devices[0])",
        id="duplicate-device-id-reported-on-second-id",
    ),
    pytest.param(
        _with("id: ups-1-test", "id: autoclave-1-service"),
        (31, 9),
        "devices[1].plans[0].id",
        "duplicate plan id 'autoclave-1-service' (first at devices[0].plans[0])",
        id="duplicate-plan-id-across-devices",
    ),
    pytest.param(
        _with("metric: cycles_total", "metric: chamber_temp_c"),
        (18, 9),
        "devices[0].plans[0].metric",
        "'chamber_temp_c' is not a counter of device 'autoclave-1' (counters: cycles_total)",
        id="meter-plan-on-gauge-metric-located-at-metric",
    ),
    pytest.param(
        _with("type: meter", "type: usage"),
        (15, 9),
        "devices[0].plans[0]",
        "Input tag 'usage' found using 'type' does not match any of the expected tags: "
        "'calendar', 'meter', 'whichever_first', 'condition', 'fault', 'supplies'",
        id="usage-is-no-longer-a-plan-type",
    ),
    pytest.param(
        _with("every: 6 months", "every: 6 months\n        every_days: 180"),
        (35, 9),
        "devices[1].plans[0].every_days",
        "Extra inputs are not permitted",
        id="every-days-is-no-longer-a-field",
    ),
    pytest.param(
        _with("every: 6 months", "every: 6 monhts"),
        (34, 9),
        "devices[1].plans[0].every",
        "'6 monhts' is not a period such as 180 days, 2 weeks, 6 months or 1 year",
        id="misspelled-period-unit",
    ),
    pytest.param(
        _with("every: 6 months", "every: 0 days"),
        (34, 9),
        "devices[1].plans[0].every",
        "'0 days': a period is at least 1 day",
        id="zero-period",
    ),
    pytest.param(
        _with("every: 6 months", "every: {count: 2, unit: fortnights}"),
        (34, 27),  # "        every: {count: 2, " is 26 characters
        "devices[1].plans[0].every.unit",
        "Input should be 'days', 'weeks', 'months' or 'years'",
        id="unknown-period-unit-as-mapping",
    ),
    pytest.param(
        _with(CALENDAR, CALENDAR.replace("6 months", "1 month") + "        lead: 5 weeks\n"),
        (35, 9),
        "devices[1].plans[0].lead",
        "lead 5 weeks is not shorter than every 1 month",
        id="calendar-lead-not-shorter-than-interval",
    ),
    pytest.param(
        _with(CALENDAR, CALENDAR + "        mode: sliding\n"),
        (35, 9),
        "devices[1].plans[0].mode",
        "Input should be 'fixed' or 'floating'",
        id="unknown-calendar-mode",
    ),
    pytest.param(
        _with(METER, METER + "        lead: 500\n"),
        (20, 9),
        "devices[0].plans[0].lead",
        "lead 500 is not smaller than every 500",
        id="meter-lead-not-smaller-than-interval",
    ),
    pytest.param(
        _with(METER, "type: condition\n        metric: cycles_total\n        above: 140\n"),
        (18, 9),
        "devices[0].plans[0].metric",
        "'cycles_total' is not a gauge of device 'autoclave-1' (gauges: chamber_temp_c)",
        id="condition-on-a-counter",
    ),
    pytest.param(
        _with(
            METER,
            "type: condition\n        metric: chamber_temp_c\n        above: 140\n"
            "        below: 100\n",
        ),
        (15, 9),
        "devices[0].plans[0]",
        "a condition needs exactly one of above or below",
        id="condition-with-above-and-below",
    ),
    pytest.param(
        _with(
            METER,
            "type: condition\n        metric: chamber_temp_c\n        above: 140\n"
            "        for: soon\n",
        ),
        (20, 9),
        "devices[0].plans[0].for",
        "'soon' is not a duration such as 10s, 5m, 2h or 1d",
        id="condition-for-is-a-duration",
    ),
    pytest.param(
        _with(
            METER,
            "type: condition\n        metric: chamber_temp_c\n        below: 100\n"
            "        hysteresis: -1\n",
        ),
        (20, 9),
        "devices[0].plans[0].hysteresis",
        "Input should be greater than or equal to 0",
        id="condition-negative-hysteresis",
    ),
    pytest.param(
        _with(
            METER,
            "type: supplies\n        metric: cycles_total\n        below: 10\n"
            "        item: Water\n",
        ),
        (18, 9),
        "devices[0].plans[0].metric",
        "'cycles_total' is not a gauge of device 'autoclave-1' (gauges: chamber_temp_c)",
        id="supplies-on-a-counter",
    ),
    pytest.param(
        _with(METER, "type: supplies\n        metric: chamber_temp_c\n        below: 10\n"),
        (15, 9),
        "devices[0].plans[0].item",
        "Field required",
        id="supplies-without-item",
    ),
    pytest.param(
        _with(METER, "type: fault\n        any: true\n"),
        (15, 9),
        "devices[0].plans[0]",
        "device 'autoclave-1' reports no faults (no field or register of kind fault)",
        id="fault-plan-on-device-without-faults",
    ),
    pytest.param(
        _with(METER, "type: fault\n        code: DOOR\n        any: true\n"),
        (15, 9),
        "devices[0].plans[0]",
        "a fault plan needs exactly one of code, codes or any: true",
        id="fault-plan-with-code-and-any",
    ),
    pytest.param(
        _with(METER, "type: fault\n        any: true\n        count: 3\n"),
        (19, 9),
        "devices[0].plans[0].count",
        "count 3 needs within: the window they fall in",
        id="fault-count-without-window",
    ),
    pytest.param(
        _with(METER, "type: fault\n        any: true\n        within: 1h\n"),
        (19, 9),
        "devices[0].plans[0].within",
        "within applies only with a count above 1",
        id="fault-window-without-count",
    ),
    pytest.param(
        # line 30 gains a fault register, so the UPS plan's code sits on line 35
        _with(
            "kind: counter}\n    plans:",
            "kind: counter}\n        - {name: on_battery, "
            "table: discrete, address: 0, type: bit, kind: fault}\n    plans:",
            CALENDAR,
            "type: fault\n        code: REPLACE_BATTERY\n",
        ),
        (35, 9),
        "devices[1].plans[0].code",
        "device 'ups-1' never raises 'REPLACE_BATTERY' (its fault registers raise: ON_BATTERY)",
        id="modbus-fault-code-no-register-raises",
    ),
    pytest.param(
        _with(
            METER,
            "type: whichever_first\n        calendar: {every: 1 year}\n"
            "        meter: {metric: chamber_temp_c, every: 500}\n",
        ),
        # "        meter: {" is 16 characters: the metric key starts in column 17
        (19, 17),
        "devices[0].plans[0].meter.metric",
        "'chamber_temp_c' is not a counter of device 'autoclave-1' (counters: cycles_total)",
        id="whichever-first-meter-part-on-a-gauge",
    ),
    pytest.param(
        _with("      interval: 2s\n", "      intervall: 2s\n"),
        (25, 7),
        "devices[1].source.intervall",
        "Extra inputs are not permitted",
        id="misspelled-key-is-extra",
    ),
    pytest.param(
        _with("      host: 127.0.0.1\n", ""),
        (22, 5),
        "devices[1].source.host",
        "Field required",
        id="modbus-source-without-host-located-at-source",
    ),
    pytest.param(
        _with("      interval: 2s\n", "\tinterval: 2s\n"),
        (25, 1),
        "(syntax)",
        "found character '\\t' that cannot start any token",
        id="yaml-tab-is-syntax-error-on-its-line",
    ),
    pytest.param(
        _with("      interval: 2s\n", "     interval: 2s\n"),
        (25, 6),
        "(syntax)",
        "expected <block end>",
        id="yaml-bad-indentation-on-its-line",
    ),
    pytest.param(
        _with("expected_interval: 2s", "expected_interval: 2 minutes"),
        (10, 7),
        "devices[0].source.expected_interval",
        "'2 minutes' is not a duration such as 10s, 5m, 2h or 1d",
        id="bad-duration-string",
    ),
    pytest.param(
        _with("Europe/London", "Europe/Londn"),
        (3, 3),
        "site.timezone",
        "unknown time zone 'Europe/Londn'",
        id="unknown-time-zone",
    ),
    pytest.param(
        _with("{name: status, address: 0, type: uint16", "{name: status, address: 0, type: string"),
        (27, 11),
        "devices[1].source.registers[0]",
        "a string register needs count",
        id="string-register-without-count",
    ),
    pytest.param(
        _with("{name: status, address: 0,", "{name: status, table: coil, address: 0,"),
        (27, 11),
        "devices[1].source.registers[0]",
        "coil and discrete tables hold type bit, and only they do",
        id="coil-table-with-uint16",
    ),
]


def test_good_config_parses() -> None:
    """The base every bad case is derived from is itself valid."""
    site = parse_config(GOOD, "site.yaml")
    assert [d.id for d in site.devices] == ["autoclave-1", "ups-1"]


@pytest.mark.parametrize(("text", "where", "field", "message"), BAD_CONFIGS)
def test_bad_config_is_located(text: str, where: tuple[int, int], field: str, message: str) -> None:
    issue = _single_issue(text)
    assert issue.file == "site.yaml"
    assert (issue.line, issue.column) == where
    assert issue.field == field
    assert message in issue.message


def test_issue_text_names_file_line_column_field_and_message() -> None:
    issue = _single_issue(_with("Europe/London", "Mars/Olympus"))
    assert str(issue) == "site.yaml:3:3: site.timezone: unknown time zone 'Mars/Olympus'"


def test_issue_text_without_location() -> None:
    issue = ConfigIssue("a.yaml", None, None, "(file)", "No such file or directory")
    assert str(issue) == "a.yaml: (file): No such file or directory"


def test_every_issue_is_reported_in_line_order() -> None:
    text = _with("kind: ups", "kind: toaster").replace("Europe/London", "Nowhere/City")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "site.yaml")
    assert [(i.line, i.field) for i in caught.value.issues] == [
        (3, "site.timezone"),
        (21, "devices[1].kind"),
    ]
    assert str(caught.value).splitlines() == [str(i) for i in caught.value.issues]


def test_top_level_must_be_a_mapping() -> None:
    issue = _single_issue("- just\n- a list\n")
    assert (issue.line, issue.field) == (1, "(top level)")
    assert "expected a mapping" in issue.message


def test_sample_config_parses() -> None:
    site = load_config(SAMPLE)
    assert site.site.timezone == "Europe/London"
    assert site.store.flush_interval == pytest.approx(0.2)
    assert site.rules.tick == 1.0
    autoclave, ups = site.device("autoclave-1"), site.device("ups-1")
    assert autoclave is not None
    assert ups is not None
    assert isinstance(autoclave.source, MqttSource)
    assert autoclave.source.expected_interval == 2.0
    assert autoclave.offline_after == 6.0
    assert autoclave.metrics["cycles_total"] is MetricKind.COUNTER
    assert autoclave.metrics["faults"] is MetricKind.FAULT
    service, validation, spore_test = site.device_plans(autoclave)
    assert isinstance(service, MeterPlan)
    assert (service.every, service.first_due, service.lead) == (500, 4500, 50)
    assert isinstance(validation, CalendarPlan)
    assert (validation.every, validation.mode) == (Period(count=6, unit="months"), "fixed")
    assert validation.lead == Period(count=2, unit="weeks")
    assert isinstance(spore_test, CalendarPlan)
    assert spore_test.id == "spore-test.autoclave-1"  # from kind_plans.autoclave
    assert (str(spore_test.every), spore_test.mode) == ("1 week", "floating")
    fridge, copier, compressor = (site.device(i) for i in ("fridge-1", "copier-1", "compressor-1"))
    assert fridge is not None
    assert copier is not None
    assert compressor is not None
    too_warm = fridge.plans[1]
    assert isinstance(too_warm, ConditionPlan)
    assert (too_warm.above, too_warm.duration, too_warm.hysteresis) == (8, 1800, 0.5)
    toner = copier.plans[1]
    assert isinstance(toner, SuppliesPlan)
    assert (toner.below, toner.hysteresis) == (10, 20)
    service, clogged = compressor.plans
    assert isinstance(service, WhicheverFirstPlan)
    assert (str(service.calendar.every), service.meter.every) == ("1 year", 2000)
    assert isinstance(clogged, FaultPlan)
    assert (clogged.fault_codes, clogged.count, clogged.within) == (
        frozenset({"FILTER_CLOGGED"}), 2, 86400.0,
    )  # fmt: skip
    assert isinstance(ups.source, ModbusSource)
    run_hours = next(r for r in ups.source.registers if r.name == "run_hours")
    assert (run_hours.registers, run_hours.scale, run_hours.width) == (2, 0.1, 32)
    assert ups.offline_after == (3 + 1) * 2.0 + 1.0
    assert site.simulation.initial["ups-1"]["line_fail_count"] == 65530


def test_load_config_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    (issue,) = caught.value.issues
    assert issue.file == str(missing)
    assert issue.field == "(file)"
    assert str(missing) in str(caught.value)


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """``main`` configures logging; put the global logging state back afterwards."""
    names = ["", "pymodbus", "amqtt", "transitions", "uvicorn.error"]
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = list(logging.getLogger().handlers)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers


@pytest.mark.usefixtures("keep_logging")
def test_check_config_accepts_sample(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert f"{SAMPLE}: OK: 7 devices (5 MQTT, 2 Modbus), 13 maintenance plans" in out


@pytest.mark.usefixtures("keep_logging")
def test_check_config_reports_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text(_with("kind: ups", "kind: toaster"), encoding="utf-8")
    assert main(["check-config", str(bad)]) == 2
    captured = capsys.readouterr()
    assert "OK" not in captured.out
    assert "1 problem(s)" in captured.err
    assert f"{bad}:21:5: devices[1].kind: unknown device kind 'toaster'" in captured.err


@pytest.mark.usefixtures("keep_logging")
def test_check_config_reports_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.yaml"
    assert main(["check-config", str(missing)]) == 2
    assert f"{missing}: (file):" in capsys.readouterr().err


# --- plans every device of a kind gets ----------------------------------------------------

# GOOD with a second autoclave (lines 20-28) and kind plans from line 40 on.
KINDS = (
    _with(
        "  - id: ups-1\n",
        """\
  - id: autoclave-2
    kind: autoclave
    source:
      protocol: mqtt
      topic: clinic/autoclave-2
      fields:
        - {field: cycles_total, kind: counter, width: 32}
        - {field: temp_c}
        - {field: faults, kind: fault}
  - id: ups-1
""",
    )
    + """\
kind_plans:
  autoclave:
    - id: spore
      name: Spore test
      type: calendar
      every: 1 week
    - id: service
      name: Autoclave service
      type: meter
      metric: cycles_total
      every: 1000
"""
)
# Lines: 29 ups-1 (40 its plan), 44 kind_plans, 45 autoclave, 46 spore, 50 service (53 metric).


def test_kind_plans_apply_to_every_device_of_the_kind_under_derived_ids() -> None:
    site = parse_config(KINDS, "site.yaml")
    first, second, ups = site.devices
    assert [p.id for p in site.device_plans(first)] == [
        "autoclave-1-service",
        "spore.autoclave-1",
        "service.autoclave-1",
    ]
    assert [p.id for p in site.device_plans(second)] == ["spore.autoclave-2", "service.autoclave-2"]
    assert [p.id for p in site.device_plans(ups)] == ["ups-1-test"]
    # the declared plans are left as written
    assert [p.id for p in site.kind_plans["autoclave"]] == ["spore", "service"]


def test_device_plan_with_a_kind_plans_id_replaces_it_and_takes_the_derived_id() -> None:
    text = _with(
        "        - {field: faults, kind: fault}\n  - id: ups-1\n",
        """\
        - {field: faults, kind: fault}
    plans:
      - {id: service, name: Big autoclave service, type: meter, metric: cycles_total, every: 400}
  - id: ups-1
""",
        base=KINDS,
    )
    site = parse_config(text, "site.yaml")
    second = site.devices[1]
    service, spore = site.device_plans(second)  # its own plans first
    assert spore.id == "spore.autoclave-2"
    assert isinstance(service, MeterPlan)
    assert (service.id, service.name, service.every) == (
        "service.autoclave-2",
        "Big autoclave service",
        400,
    )
    assert [p.id for p in site.device_plans(site.devices[0])][-1] == "service.autoclave-1"


KIND_CONFIGS = [
    pytest.param(
        _with("kind_plans:\n  autoclave:", "kind_plans:\n  toaster:", base=KINDS),
        (45, 3),
        "kind_plans.toaster",
        "unknown device kind 'toaster'",
        id="kind-plans-for-an-unknown-kind",
    ),
    pytest.param(
        _with(
            "      metric: cycles_total\n      every: 1000",
            "      metric: temp_c\n      every: 1000",
            base=KINDS,
        ),
        (53, 7),
        "kind_plans.autoclave[1].metric",
        "'temp_c' is not a counter of device 'autoclave-1' (counters: cycles_total) "
        "(and 1 more device(s))",
        id="kind-plan-metric-missing-on-every-device",
    ),
    pytest.param(
        _with(
            "- {field: cycles_total, kind: counter, width: 32}\n        - {field: temp_c}",
            "- {field: cycles, kind: counter, width: 32}\n        - {field: temp_c}",
            base=KINDS,
        ),
        (53, 7),
        "kind_plans.autoclave[1].metric",
        "'cycles_total' is not a counter of device 'autoclave-2' (counters: cycles)",
        id="kind-plan-metric-missing-on-one-device",
    ),
    pytest.param(
        _with("id: ups-1-test", "id: spore.autoclave-2", base=KINDS),
        (40, 9),
        "devices[2].plans[0].id",
        "duplicate plan id 'spore.autoclave-2' (first at kind_plans.autoclave[0] on device "
        "autoclave-2)",
        id="device-plan-id-equal-to-a-derived-id",
    ),
    pytest.param(
        _with("id: autoclave-1-service", "id: service.autoclave-2", base=KINDS),
        (50, 7),
        "kind_plans.autoclave[1].id",
        "plan id 'service.autoclave-2', which this plan takes on device 'autoclave-2', is "
        "already used at devices[0].plans[0]",
        id="derived-id-equal-to-an-earlier-device-plan-id",
    ),
    pytest.param(
        _with("    - id: service\n", "    - id: spore\n", base=KINDS),
        (50, 7),
        "kind_plans.autoclave[1].id",
        "duplicate plan id 'spore' (first at kind_plans.autoclave[0])",
        id="duplicate-id-within-a-kind",
    ),
]


@pytest.mark.parametrize(("text", "where", "field", "message"), KIND_CONFIGS)
def test_bad_kind_plans_are_located(
    text: str, where: tuple[int, int], field: str, message: str
) -> None:
    issue = _single_issue(text)
    assert (issue.line, issue.column) == where
    assert issue.field == field
    assert message in issue.message


def test_two_plans_of_one_device_replacing_the_same_kind_plan_collide() -> None:
    text = _with(
        "        - {field: faults, kind: fault}\n  - id: ups-1\n",
        """\
        - {field: faults, kind: fault}
    plans:
      - {id: spore, name: Spore test A, type: calendar, every: 1 week}
      - {id: spore, name: Spore test B, type: calendar, every: 2 weeks}
  - id: ups-1
""",
        base=KINDS,
    )
    issue = _single_issue(text)
    # autoclave-2 is lines 20-28; its plans follow on lines 29-31
    assert (issue.line, issue.field) == (31, "devices[1].plans[1].id")
    assert issue.message == ("duplicate plan id 'spore.autoclave-2' (first at devices[1].plans[0])")


@pytest.mark.parametrize(
    ("written", "period", "text"),
    [
        pytest.param("6 months", Period(count=6, unit="months"), "6 months", id="plural"),
        pytest.param("1 month", Period(count=1, unit="months"), "1 month", id="singular"),
        pytest.param("1 months", Period(count=1, unit="months"), "1 month", id="loose-plural"),
        pytest.param("2weeks", Period(count=2, unit="weeks"), "2 weeks", id="no-space"),
        pytest.param("180 days", Period(count=180, unit="days"), "180 days", id="days"),
        pytest.param("{count: 1, unit: years}", Period(count=1, unit="years"), "1 year",
                     id="mapping"),
    ],
)  # fmt: skip
def test_periods_are_read_in_either_spelling_and_written_as_text(
    written: str, period: Period, text: str
) -> None:
    site = parse_config(_with("every: 6 months", f"every: {written}"), "site.yaml")
    plan = site.devices[1].plans[0]
    assert isinstance(plan, CalendarPlan)
    assert plan.every == period
    assert plan.model_dump(mode="json")["every"] == text


def test_every_plan_type_survives_a_dump_and_a_reload() -> None:
    """A generated configuration (``equipwatch simulate --write-config``) is a dump: it must
    read back as the same plans, ``for`` included (a keyword in Python, an alias here)."""
    site = load_config(SAMPLE)
    dumped = yaml.safe_dump(site.model_dump(mode="json", exclude_defaults=True))
    again = parse_config(dumped, "dumped.yaml")
    assert again == site
    fridge = again.device("fridge-1")
    assert fridge is not None
    assert fridge.plans[1].model_dump(mode="json", exclude_defaults=True)["for"] == 1800
