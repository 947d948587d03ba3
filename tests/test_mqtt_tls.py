"""The collector on a broker that wants TLS, a client certificate, a user name and a password:
a Mosquitto of its own, with certificates made for the test by openssl."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from collector.mqtt import MqttCollector
from core.clock import ManualClock
from core.config import MqttSettings, TlsSettings
from tests.support import Mosquitto, require_binary, wait_for
from tests.test_mqtt_collector import FRIDGE, NOW, RecordingSink, running, site

USER, PASSWORD = "collector", "s3cret-for-tests"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        [require_binary("openssl", "openssl"), *args], cwd=cwd, check=True, capture_output=True
    )


def make_certificates(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=equipwatch test CA",
        cwd=directory,
    )  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, extra in (("server", ["-extfile", "san.ext"]), ("client", [])):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}",
            cwd=directory,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *extra,
            cwd=directory,
        )  # fmt: skip


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path]]:
    certs = tmp_path / "certs"
    make_certificates(certs)
    passwords = tmp_path / "passwords"
    subprocess.run(
        [require_binary("mosquitto_passwd", "mosquitto"), "-c", "-b", str(passwords), USER,
         PASSWORD],
        check=True,
        capture_output=True,
    )  # fmt: skip
    broker = Mosquitto(
        tmp_path / "broker",
        settings={
            "cafile": certs / "ca.pem",
            "certfile": certs / "server.pem",
            "keyfile": certs / "server.key",
            "require_certificate": "true",
            "allow_anonymous": "false",
            "password_file": passwords,
        },
    )
    broker.start()
    yield broker, certs
    broker.stop()


async def test_collector_connects_with_tls_certificate_and_password(
    tls_broker: tuple[Mosquitto, Path], topic_prefix: str
) -> None:
    broker, certs = tls_broker
    config = site(topic_prefix, FRIDGE)
    url = f"mqtts://127.0.0.1:{broker.port}"
    tls = TlsSettings(
        ca_file=certs / "ca.pem", cert_file=certs / "client.pem", key_file=certs / "client.key"
    )
    sink = RecordingSink()
    collector = MqttCollector(
        config.devices,
        settings=MqttSettings(
            url=url, client_id="tls-collector", username=USER, password=PASSWORD, tls=tls
        ),
        sink=sink,
        clock=ManualClock(NOW),
    )
    async with running(collector):
        assert collector.mqtt_stats.version == "5"
        async with aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            identifier="tls-publisher",
            username=USER,
            password=PASSWORD,
            tls_params=aiomqtt.TLSParameters(
                ca_certs=str(certs / "ca.pem"),
                certfile=str(certs / "client.pem"),
                keyfile=str(certs / "client.key"),
            ),
        ) as publisher:
            for minute in range(20):
                ts = 1795424400000 + minute * 60_000
                await publisher.publish(
                    f"{topic_prefix}/fridge-1/telemetry",
                    b'{"ts": %d, "temperature_c": 4.5, "door_openings": %d}' % (ts, minute),
                    qos=1,
                )

        async def received() -> bool:
            return len(sink.readings("door_openings")) == 20

        await wait_for(received, timeout=10, what="the messages over TLS")
        assert collector.mqtt_stats.acks_sent == 20


async def test_wrong_password_is_retried_not_fatal(
    tls_broker: tuple[Mosquitto, Path], topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker, certs = tls_broker
    config = site(topic_prefix, FRIDGE)
    collector = MqttCollector(
        config.devices,
        settings=MqttSettings(
            url=f"mqtts://127.0.0.1:{broker.port}",
            client_id="tls-collector-2",
            username=USER,
            password="wrong",
            tls=TlsSettings(
                ca_file=certs / "ca.pem",
                cert_file=certs / "client.pem",
                key_file=certs / "client.key",
            ),
            backoff_max=0.2,
        ),
        sink=RecordingSink(),
        clock=ManualClock(NOW),
    )
    task = asyncio.create_task(collector.run())
    try:

        async def refused_twice() -> bool:
            return sum("reconnecting" in r.getMessage() for r in caplog.records) >= 2

        await wait_for(refused_twice, timeout=15, what="two refused attempts")
        assert not collector.connected.is_set()
        assert any("Not authorized" in r.getMessage() for r in caplog.records)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
