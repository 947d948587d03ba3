"""The site configuration: what loads, and how every problem is located for a technician."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from core.config import CalendarPlan, ModbusSource, MqttSource, UsagePlan, load_config, parse_config
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
        type: usage
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
        every_days: 180
"""
# Lines referred to below: 3 timezone, 5 first device, 10 expected_interval, 15 usage plan,
# 20 second device (21 kind, 22 source, 24 host, 25 interval, 27 and 29 registers 0 and 2),
# 31 calendar plan.


def _with(old: str, new: str) -> str:
    assert GOOD.count(old) == 1, f"{old!r} must occur exactly once in GOOD"
    return GOOD.replace(old, new)


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
        (5, 5),
        "devices[0]",
        "plan 'autoclave-1-service' counts 'chamber_temp_c', which is not a counter",
        id="usage-plan-on-gauge-metric",
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
    service, validation = autoclave.plans
    assert isinstance(service, UsagePlan)
    assert (service.every, service.first_due) == (500, 4500)
    assert isinstance(validation, CalendarPlan)
    assert validation.start is not None
    assert validation.start.isoformat() == "2026-06-01"
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
    assert f"{SAMPLE}: OK: 7 devices (5 MQTT, 2 Modbus), 8 maintenance plans" in out


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
