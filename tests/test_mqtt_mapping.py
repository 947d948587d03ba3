"""Payload mapping and topic routing as tables of (input, expected): pure, no broker."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from collector.mapping import map_payload
from collector.mqtt import Route, TopicRouter, parse_mqtt_url
from core.config import Device, TopicTemplate, parse_config
from core.errors import PayloadError

RECEIVED = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)

SITE = """\
mqtt:
  subscriptions:
    - topic: "clinic/{site}/devices/{device_id}/telemetry"
    - topic: "clinic/{site}/devices/{device_id}/channels/{channel}"
    - {topic: "clinic/{site}/devices/{device_id}/status", status: true}
devices:
  - id: fridge-1
    kind: vaccine_fridge
    source:
      protocol: mqtt
      timestamp_field: ts
      fields:
        - {field: temperature_c, minimum: -30, maximum: 60}
        - {field: door_openings, kind: counter, width: 32}
        - {field: /logger/battery, metric: logger_battery_pct, scale: 100, maximum: 100}
        - {field: faults, kind: fault}
  - id: autoclave-1
    kind: autoclave
    source:
      protocol: mqtt
      topic: legacy/autoclave-1
      status_topic: legacy/autoclave-1/status
      fields:
        - {field: chamber_temp_c}
"""


@pytest.fixture(scope="module")
def site_devices() -> dict[str, Device]:
    return {device.id: device for device in parse_config(SITE, "site.yaml").devices}


def _values(device: Device, payload: bytes, channel: str | None = None) -> dict[str, float]:
    mapped = map_payload(device, payload, RECEIVED, channel)
    return {reading.metric: reading.value for reading in mapped.readings}


GOOD_PAYLOADS = [
    pytest.param(
        b'{"ts": 1795420800000, "temperature_c": 4.5, "door_openings": 12,'
        b' "logger": {"battery": 0.87}, "faults": []}',
        None,
        {"temperature_c": 4.5, "door_openings": 12, "logger_battery_pct": 87.0},
        id="json-object-with-pointer-and-scale",
    ),
    pytest.param(b"21.5", "temperature_c", {"temperature_c": 21.5}, id="plain-number-on-channel"),
    pytest.param(b"-30", "temperature_c", {"temperature_c": -30}, id="plain-number-at-minimum"),
    pytest.param(b"7", "door_openings", {"door_openings": 7}, id="plain-counter-on-channel"),
    pytest.param(
        b"0.5", "logger_battery_pct", {"logger_battery_pct": 50.0}, id="channel-by-metric-name"
    ),
    pytest.param(
        b'{"ts": "2026-11-23T08:00:00Z", "temperature_c": 5.0}',
        "temperature_c",
        {"temperature_c": 5.0},
        id="object-on-channel-maps-that-field-only",
    ),
]


@pytest.mark.parametrize(("payload", "channel", "expected"), GOOD_PAYLOADS)
def test_payload_maps(
    site_devices: dict[str, Device],
    payload: bytes,
    channel: str | None,
    expected: dict[str, float],
) -> None:
    assert _values(site_devices["fridge-1"], payload, channel) == pytest.approx(expected)


def test_plain_value_is_stamped_with_its_arrival(site_devices: dict[str, Device]) -> None:
    mapped = map_payload(site_devices["fridge-1"], b"4.0", RECEIVED, "temperature_c")
    assert mapped.ts == RECEIVED


def test_single_field_device_takes_a_plain_number(site_devices: dict[str, Device]) -> None:
    assert _values(site_devices["autoclave-1"], b"134.2") == {"chamber_temp_c": 134.2}


def test_fault_channel_takes_a_code_string(site_devices: dict[str, Device]) -> None:
    mapped = map_payload(site_devices["fridge-1"], b'"E12"', RECEIVED, "faults")
    assert mapped.active_faults == {"E12"}
    assert mapped.readings == []


BAD_PAYLOADS = [
    pytest.param(b'{"temperature_c": 4', None, "bad_json", id="truncated-json"),
    pytest.param(b"warm", "temperature_c", "bad_json", id="plain-text-is-not-json"),
    pytest.param(b"\xff\xfe", None, "bad_json", id="not-utf8"),
    pytest.param(b"[1, 2]", None, "not_an_object", id="array"),
    pytest.param(b"4.5", None, "not_an_object", id="plain-number-without-channel"),
    pytest.param(b'{"ts": 1795420800000, "door_openings": 1}', None, "missing_field", id="field"),
    pytest.param(b'{"temperature_c": 4.5}', None, "missing_field", id="timestamp-field"),
    pytest.param(
        b'{"ts": "yesterday", "temperature_c": 4.5}', None, "bad_timestamp", id="bad-timestamp"
    ),
    pytest.param(b'{"ts": true, "temperature_c": 4.5}', None, "bad_timestamp", id="bool-time"),
    pytest.param(b'"warm"', "temperature_c", "wrong_type", id="string-for-gauge"),
    pytest.param(b"NaN", "temperature_c", "wrong_type", id="nan"),
    pytest.param(b"4.5", "door_openings", "wrong_type", id="fractional-counter"),
    pytest.param(b"-1", "door_openings", "out_of_range", id="negative-counter"),
    pytest.param(b"4294967296", "door_openings", "out_of_range", id="counter-beyond-width"),
    pytest.param(b"60.01", "temperature_c", "out_of_range", id="above-maximum"),
    pytest.param(b"-30.5", "temperature_c", "out_of_range", id="below-minimum"),
    pytest.param(b"1.2", "logger_battery_pct", "out_of_range", id="maximum-after-scale"),
    pytest.param(b"4.5", "humidity", "unknown_channel", id="unknown-channel"),
]


@pytest.mark.parametrize(("payload", "channel", "reason"), BAD_PAYLOADS)
def test_bad_payload_has_a_reason(
    site_devices: dict[str, Device], payload: bytes, channel: str | None, reason: str
) -> None:
    with pytest.raises(PayloadError) as caught:
        map_payload(site_devices["fridge-1"], payload, RECEIVED, channel)
    assert caught.value.reason == reason


ROUTES = [
    pytest.param(
        "clinic/riverside/devices/fridge-1/telemetry", ("fridge-1", None, False), id="template"
    ),
    pytest.param(
        "clinic/north/devices/fridge-1/channels/temperature_c",
        ("fridge-1", "temperature_c", False),
        id="channel-template",
    ),
    pytest.param(
        "clinic/riverside/devices/fridge-1/status", ("fridge-1", None, True), id="status-template"
    ),
    pytest.param("legacy/autoclave-1", ("autoclave-1", None, False), id="exact-topic"),
    pytest.param("legacy/autoclave-1/status", ("autoclave-1", None, True), id="exact-status"),
    pytest.param(
        "clinic/riverside/devices/xray-9/telemetry", ("xray-9", None, False), id="unknown-device"
    ),
]


@pytest.mark.parametrize(("topic", "expected"), ROUTES)
def test_topic_routes(
    site_devices: dict[str, Device], topic: str, expected: tuple[str, str | None, bool]
) -> None:
    site = parse_config(SITE, "site.yaml")
    route = TopicRouter(list(site_devices.values()), site.mqtt.subscriptions).route(topic)
    assert route is not None
    assert (route.device_id, route.channel, route.status) == expected
    assert (route.device is None) == (expected[0] not in site_devices)


@pytest.mark.parametrize(
    "topic",
    [
        "clinic/riverside/devices/fridge-1",  # too short
        "clinic/riverside/devices/fridge-1/telemetry/extra",  # too long
        "hospital/riverside/devices/fridge-1/telemetry",  # another literal
        "legacy/autoclave-2",
    ],
)
def test_topics_nothing_subscribed_to_have_no_route(
    site_devices: dict[str, Device], topic: str
) -> None:
    site = parse_config(SITE, "site.yaml")
    assert TopicRouter(list(site_devices.values()), site.mqtt.subscriptions).route(topic) is None


def test_filters_turn_segments_into_wildcards_and_skip_covered_topics() -> None:
    text = SITE.replace(
        "topic: legacy/autoclave-1\n", "topic: clinic/x/devices/autoclave-1/telemetry\n"
    )
    site = parse_config(text, "site.yaml")
    router = TopicRouter(site.devices, site.mqtt.subscriptions)
    assert router.filters() == [
        ("clinic/+/devices/+/telemetry", False),
        ("clinic/+/devices/+/channels/+", False),
        ("clinic/+/devices/+/status", True),
        # the autoclave's telemetry topic is covered by the first template: one subscription
        ("legacy/autoclave-1/status", True),
    ]
    route = router.route("clinic/x/devices/autoclave-1/telemetry")
    assert route == Route(site.device("autoclave-1"), "autoclave-1", None, False)


def test_first_matching_template_wins() -> None:
    templates = [
        TopicTemplate(topic="a/{device_id}/{channel}"),
        TopicTemplate(topic="a/{any}/{device_id}", status=True),
    ]
    route = TopicRouter([], templates).route("a/b/c")
    assert route == Route(None, "b", "c", False)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", ("broker", 1883, False)),
        ("mqtts://broker", ("broker", 8883, True)),
        ("mqtts://broker:9883/", ("broker", 9883, True)),
        ("mqtt://127.0.0.1:1884", ("127.0.0.1", 1884, False)),
    ],
)
def test_broker_url(url: str, expected: tuple[str, int, bool]) -> None:
    assert tuple(parse_mqtt_url(url)) == expected


def test_broker_url_must_be_mqtt() -> None:
    with pytest.raises(ValueError, match="not an mqtt://host:port URL"):
        parse_mqtt_url("http://broker:1883")
