from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import mosquitto


@pytest.fixture(scope="session")
def mqtt_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MQTT broker: EQUIPWATCH_TEST_MQTT_URL, or a Mosquitto started for the session."""
    configured = os.environ.get("EQUIPWATCH_TEST_MQTT_URL")
    if configured:
        yield configured
        return
    with mosquitto(Path(tmp_path_factory.mktemp("mosquitto"))) as url:
        yield url


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic root of the test's own, so tests never see each other's messages."""
    return f"test/{request.node.name.replace('[', '_').replace(']', '')}"
