"""The MQTT settings of a site file: what they accept, and where their problems are reported."""

from __future__ import annotations

import pytest

from core.config import MqttSettings, MqttSource, parse_config
from core.errors import ConfigError, ConfigIssue

# A valid file; every bad case below replaces one unique snippet of it.
GOOD = """\
mqtt:
  url: mqtts://broker.example:8883
  username: collector
  password: secret
  tls: {ca_file: /etc/equipwatch/ca.pem}
  qos: 1
  session_expiry: 2h
  shared_group: collectors
  subscriptions:
    - topic: "clinic/{site}/devices/{device_id}/telemetry"
    - {topic: "clinic/{site}/devices/{device_id}/status", status: true}
devices:
  - id: fridge-1
    kind: vaccine_fridge
    source:
      protocol: mqtt
      fields:
        - {field: temperature_c, minimum: -30, maximum: 60}
  - id: autoclave-1
    kind: autoclave
    source:
      protocol: mqtt
      topic: legacy/autoclave-1
      fields:
        - {field: chamber_temp_c}
"""
# Lines referred to below: 1 mqtt, 6 qos, 9 subscriptions, 10 first template, 12 devices,
# 13 fridge, 15 its source, 18 its field, 19 autoclave, 23 its topic.


def _with(old: str, new: str) -> str:
    assert GOOD.count(old) == 1, f"{old!r} must occur exactly once in GOOD"
    return GOOD.replace(old, new)


def _single_issue(text: str) -> ConfigIssue:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "site.yaml")
    issues = caught.value.issues
    assert len(issues) == 1, [str(issue) for issue in issues]
    return issues[0]


def test_good_mqtt_settings_parse() -> None:
    site = parse_config(GOOD, "site.yaml")
    assert site.mqtt.qos == 1
    assert site.mqtt.session_expiry == 7200.0
    assert site.mqtt.protocol == "auto"
    assert [t.status for t in site.mqtt.subscriptions] == [False, True]
    fridge = site.device("fridge-1")
    assert fridge is not None
    assert isinstance(fridge.source, MqttSource)
    assert fridge.source.topic is None


def test_protocol_may_be_written_as_a_number() -> None:
    assert MqttSettings.model_validate({"protocol": 5}).protocol == "5"


BAD = [
    pytest.param(
        _with('    - topic: "clinic/{site}/devices/{device_id}/telemetry"\n', ""),
        (14, 5),  # one line up: the template's line is gone
        "devices[0].source",
        "an MQTT device needs a topic, or a topic template in mqtt.subscriptions",
        id="device-without-topic-needs-a-data-template",
    ),
    pytest.param(
        _with(
            "topic: legacy/autoclave-1",
            "topic: clinic/x/devices/fridge-1/status\n"
            "      status_topic: clinic/x/devices/fridge-1/status",
        ),
        (24, 7),
        "devices[1].source.status_topic",
        "topic 'clinic/x/devices/fridge-1/status' is already used by devices[1]",
        id="one-topic-for-two-purposes",
    ),
    pytest.param(
        _with(
            "{field: temperature_c, minimum: -30, maximum: 60}",
            "{field: temperature_c, minimum: 60, maximum: -30}",
        ),
        (18, 11),
        "devices[0].source.fields[0]",
        "minimum 60 is above maximum -30",
        id="minimum-above-maximum",
    ),
    pytest.param(
        _with("device_id}/telemetry", "id}/telemetry"),
        (10, 7),
        "mqtt.subscriptions[0].topic",
        "segment '{id}': a segment is a whole level",
        id="unknown-template-segment",
    ),
    pytest.param(
        _with("devices/{device_id}/telemetry", "devices/+/telemetry"),
        (10, 7),
        "mqtt.subscriptions[0].topic",
        "use named segments such as {device_id}, not MQTT wildcards",
        id="wildcard-in-template",
    ),
    pytest.param(
        _with("  qos: 1\n", "  qos: 3\n"),
        (6, 3),
        "mqtt.qos",
        "Input should be 0, 1 or 2",
        id="qos-3",
    ),
    pytest.param(
        _with("  username: collector\n", ""),
        (1, 1),
        "mqtt",
        "a password needs a username",
        id="password-without-username",
    ),
    pytest.param(
        _with("mqtts://broker.example:8883", "mqtt://broker.example:1883"),
        (1, 1),
        "mqtt",
        "tls settings need an mqtts:// url",
        id="tls-with-plain-url",
    ),
]


@pytest.mark.parametrize(("text", "where", "field", "message"), BAD)
def test_bad_mqtt_config_is_located(
    text: str, where: tuple[int, int], field: str, message: str
) -> None:
    issue = _single_issue(text)
    assert issue.file == "site.yaml"
    assert (issue.line, issue.column) == where
    assert issue.field == field
    assert message in issue.message


def test_a_status_template_alone_does_not_deliver_data() -> None:
    text = _with('    - topic: "clinic/{site}/devices/{device_id}/telemetry"\n', "")
    issue = _single_issue(text)
    assert "without status: true" in issue.message
