"""The deployment files in deploy/, checked with the tools that will run them.

The broker's ACL and TLS listener run in a real Mosquitto; the database roles and the Grafana
dashboard's SQL run on a real PostgreSQL; the systemd units go through ``systemd-analyze``.
Docker, the compose client and promtool are optional here (they are not servers the suite
needs): their checks skip, with the reason, where the tool is missing.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import zipfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import asyncpg
import pytest
import yaml
from sqlalchemy.ext.asyncio import create_async_engine

from core.config import load_config
from core.db.schema import Base
from core.net import free_port
from core.store.postgres import PostgresStore
from equipwatch.cli import _parser, main
from tests.pg import postgres_cluster
from tests.support import require_binary, wait_for, wait_for_port
from tests.test_mqtt_tls import make_certificates

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
EXECUTABLE = "/opt/equipwatch/bin/equipwatch"

METRICS = (
    "equipwatch_messages_total",
    "equipwatch_records_total",
    "equipwatch_dead_letters_total",
    "equipwatch_polls_total",
    "equipwatch_outbox_depth",
    "equipwatch_outbox_dropped_total",
    "equipwatch_writer_queue_depth",
    "equipwatch_rules_passes_total",
    "equipwatch_notifications_total",
    "equipwatch_ready",
    "equipwatch_leader",
)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _compose() -> dict[str, Any]:
    document = _yaml(DEPLOY / "compose.yaml")
    assert isinstance(document, dict)
    return document


def _equipwatch_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the equipwatch image."""
    return {
        name: service
        for name, service in _compose()["services"].items()
        if service.get("image") == "equipwatch:local"
    }


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


# --- the site file ------------------------------------------------------------------------


def test_compose_site_file_passes_check_config(capsys: pytest.CaptureFixture[str]) -> None:
    path = DEPLOY / "site.compose.yaml"
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err
    assert "OK" in capsys.readouterr().out
    site = load_config(path)
    assert site.store.backend == "postgresql"
    assert site.store.postgresql is not None
    assert site.store.postgresql.password_env == "EQUIPWATCH_DB_PASSWORD"
    assert site.influx is not None
    assert site.influx.token_env == "EQUIPWATCH_INFLUX_TOKEN"
    assert site.mqtt.shared_group
    assert site.mqtt.url == "mqtts://mosquitto:8883"
    assert site.api.port == 8000  # the image's HEALTHCHECK and prometheus.yml say 8000
    # a relative outbox lands in each container's own state volume
    assert not site.store.outbox.path.is_absolute()


# --- compose ------------------------------------------------------------------------------


def test_compose_secrets_come_from_the_env_example() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = _env_example()
    assert used == set(example), "compose.yaml and .env.example name different variables"
    assert all(value.startswith("change-me") for value in example.values())
    site = load_config(DEPLOY / "site.compose.yaml")
    assert site.store.postgresql is not None
    assert site.influx is not None
    for service in _equipwatch_services().values():
        environment = service["environment"]
        assert site.store.postgresql.password_env in environment
        assert site.influx.token_env in environment
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_compose_mounts_shipped_files_and_keeps_state_apart() -> None:
    """Every file compose mounts exists, except the ones the operator makes (certificates,
    the broker's password file); every equipwatch container reads the site file read-only;
    no two containers share a state volume."""
    operator_made = {"./certs", "./mosquitto/passwd"}
    services = _compose()["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and not any(source.startswith(p) for p in operator_made):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    tls = load_config(DEPLOY / "site.compose.yaml").mqtt.tls
    assert tls is not None
    assert tls.ca_file is not None
    state_volumes: dict[str, str] = {}
    for name, service in _equipwatch_services().items():
        assert service["read_only"] is True
        assert "./site.compose.yaml:/etc/equipwatch/site.yaml:ro" in service["volumes"]
        targets = [volume.split(":")[1] for volume in service["volumes"]]
        assert str(tls.ca_file) in targets, f"{name} does not mount the broker's CA"
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            if target == "/var/lib/equipwatch":
                assert source not in state_volumes, f"{name} and {state_volumes[source]} share"
                state_volumes[source] = name
    assert services["api"]["deploy"]["replicas"] >= 2
    assert "/var/lib/equipwatch" in services["api"]["tmpfs"]


def test_compose_runs_every_shard_and_two_rules_engines() -> None:
    commands = {name: service["command"] for name, service in _equipwatch_services().items()}
    shards = sorted(
        command[command.index("--shard") + 1]
        for command in commands.values()
        if "--role" in command and command[command.index("--role") + 1] == "collector"
    )
    assert shards == ["1/2", "2/2"]
    roles = [c[c.index("--role") + 1] for c in commands.values() if "--role" in c]
    assert roles.count("rules") == 2
    assert roles.count("api") == 1  # with replicas
    assert commands["migrate"][:2] == ["db", "upgrade"]


def _compose_client() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return command
    return None


def test_compose_file_is_valid_for_the_compose_client() -> None:
    client = _compose_client()
    if client is None:
        pytest.skip("no compose client (docker compose or docker-compose) is installed")
    result = subprocess.run(
        [*client, "-f", str(DEPLOY / "compose.yaml"), "--env-file",
         str(DEPLOY / ".env.example"), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


# --- the image ----------------------------------------------------------------------------


def _docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def test_dockerfile_builds_the_wheel_and_runs_it_unprivileged_with_a_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert stages == ["python:3.11-slim", "python:3.11-slim"]
    assert "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ." in text
    final = text[text.rindex("FROM ") :]
    user = re.findall(r"^USER (\S+)", final, flags=re.MULTILINE)
    assert user, "the final stage names no USER"
    assert user[-1] not in ("root", "0")
    assert re.search(r'^HEALTHCHECK .*\n?.*CMD \["python"', final, flags=re.MULTILINE)
    assert "/healthz" in final
    assert 'ENTRYPOINT ["equipwatch"]' in final


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Whether a path is left out of the build context; enough of the .dockerignore syntax
    for the patterns this project uses (plain names, ``*`` and a leading ``**/``)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


def test_build_context_makes_a_complete_wheel(tmp_path: Path) -> None:
    """Stage 1 of the Dockerfile by hand: the context that survives Dockerfile.dockerignore
    builds the wheel, and that wheel alone (not this checkout) runs the command."""
    patterns = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = tmp_path / "context"
    for directory, subdirectories, files in os.walk(ROOT):
        base = Path(directory).relative_to(ROOT)
        subdirectories[:] = [
            d for d in subdirectories if not _ignored((base / d).as_posix(), patterns)
        ]
        for name in files:
            relative = (base / name).as_posix()
            if not _ignored(relative, patterns):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / relative, context / relative)
    assert not (context / ".venv").exists()
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", str(wheels), "."],
        cwd=context,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("equipwatch-*.whl")
    installed = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
    # the wheel's modules come first on the path, so nothing is imported from the checkout
    probe = (
        "import sys, equipwatch.cli; "
        f"assert equipwatch.cli.__file__.startswith({str(installed)!r}), equipwatch.cli.__file__; "
        "sys.exit(equipwatch.cli.main(['check-config', sys.argv[1]]))"
    )
    ran = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-c", probe, str(DEPLOY / "site.compose.yaml")],
        cwd=installed,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "OK: 2 devices" in ran.stdout


def test_docker_image_builds_and_runs() -> None:
    if not _docker_daemon():
        pytest.skip("no Docker daemon answers (docker info fails)")
    tag = f"equipwatch-test:{os.getpid()}"
    built = subprocess.run(
        ["docker", "build", "-f", str(DEPLOY / "Dockerfile"), "-t", tag, str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    try:
        user = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert user.stdout.strip() != "0"
        helped = subprocess.run(
            ["docker", "run", "--rm", tag, "--help"], capture_output=True, text=True, check=False
        )
        assert helped.returncode == 0, helped.stderr
        assert "check-config" in helped.stdout
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, check=False)


# --- systemd ------------------------------------------------------------------------------

# unit file -> the instance systemd-analyze verifies (templates need one)
UNIT_INSTANCES = {
    "equipwatch.service": "equipwatch.service",
    "equipwatch-collector@.service": "equipwatch-collector@2.service",
    "equipwatch-rules.service": "equipwatch-rules.service",
    "equipwatch-api@.service": "equipwatch-api@8001.service",
}

HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "CapabilityBoundingSet": "",
    "SystemCallFilter": "@system-service",
    "Restart": "on-failure",
}


def _unit_settings(path: Path) -> dict[str, list[str]]:
    """Every Key=value of a unit file, continuation lines joined."""
    settings: dict[str, list[str]] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(" ".join(value.split()))
    return settings


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root directory for ``systemd-analyze --root``: the host's own system units (the
    targets ours are ordered after), ours, and an executable where ExecStart expects one."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    host_units = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    if host_units is None:
        pytest.skip("no system unit directory to resolve systemd's own targets from")
    root = tmp_path_factory.mktemp("unit-root")
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNIT_INSTANCES:
        shutil.copy(UNITS / unit, root / "etc/systemd/system" / unit)
    executable = root / EXECUTABLE.lstrip("/")
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\nexit 0\n")
    executable.chmod(0o755)
    return root


@pytest.mark.parametrize("unit", sorted(UNIT_INSTANCES))
def test_systemd_unit_verifies(unit_root: Path, unit: str) -> None:
    instance = UNIT_INSTANCES[unit]
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={unit_root}", "--man=no", instance],
        capture_output=True,
        text=True,
        check=False,
    )
    # systemd-analyze only warns (exit 0) about unknown keys and unparsable values, so any
    # word about our unit is a failure
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if unit.partition("@")[0].removesuffix(".service") in line
    ]
    assert result.returncode == 0, result.stderr
    assert complaints == []


@pytest.mark.parametrize("unit", sorted(UNIT_INSTANCES))
def test_systemd_unit_is_hardened(unit_root: Path, unit: str) -> None:
    settings = _unit_settings(UNITS / unit)
    for key, value in HARDENING.items():
        assert value in settings.get(key, []), f"{unit}: {key}={value} is missing"
    (exec_start,) = settings["ExecStart"]
    assert exec_start.startswith(f"{EXECUTABLE} run --config /etc/equipwatch/site.yaml")
    assert settings["StateDirectory"][0].startswith("equipwatch")
    assert settings["EnvironmentFile"] == ["-/etc/equipwatch/equipwatch.env"]
    assert settings["User"] == ["equipwatch"]
    # systemd's own rating: 0 is fully confined, 10 not at all; ours are 1.7
    rated = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={unit_root}",
         "--threshold=20", "--no-pager", UNIT_INSTANCES[unit]],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert rated.returncode == 0, rated.stdout[-2000:] + rated.stderr


def _command_lines() -> Iterator[tuple[str, list[str]]]:
    """Every equipwatch command line the deployment files run, as the process would get it:
    the units' ExecStart with a sample instance and environment, and compose's commands."""
    environment = {"EQUIPWATCH_COLLECTOR_SHARDS": "2"}
    for unit, instance in UNIT_INSTANCES.items():
        (exec_start,) = _unit_settings(UNITS / unit)["ExecStart"]
        name = instance.removesuffix(".service")
        line = exec_start.replace("%i", name.partition("@")[2])
        line = re.sub(r"\$\{(\w+)\}", lambda m: environment[m.group(1)], line)
        yield unit, shlex.split(line)[1:]
    for name, service in _equipwatch_services().items():
        yield f"compose {name}", list(service["command"])


@pytest.mark.parametrize(("where", "argv"), list(_command_lines()), ids=lambda v: str(v)[:40])
def test_deployed_command_lines_are_accepted(where: str, argv: list[str]) -> None:
    """The roles' command-line options are another module's contract; this holds the
    deployment files to it, so a renamed option fails here rather than at a site."""
    try:
        _parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: equipwatch refuses {' '.join(argv)} (exit {exc.code})")


# --- Mosquitto ----------------------------------------------------------------------------

PASSWORDS = {"equipwatch": "service-secret", "autoclave-1": "device-a", "fridge-1": "device-b"}


@dataclass
class DeployBroker:
    port: int
    ca_file: Path


@pytest.fixture(scope="module")
def deploy_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployBroker]:
    """Mosquitto with the shipped mosquitto.conf and ACL: only the listener's port and
    address and the file locations are replaced (throwaway certificates and passwords)."""
    binary = require_binary("mosquitto", "mosquitto")
    passwd = require_binary("mosquitto_passwd", "mosquitto")
    directory = tmp_path_factory.mktemp("deploy-broker")
    certs = directory / "certs"
    make_certificates(certs)
    passwords = directory / "passwd"
    for index, (user, password) in enumerate(PASSWORDS.items()):
        create = ["-c"] if index == 0 else []
        subprocess.run(
            [passwd, *create, "-b", str(passwords), user, password], check=True, capture_output=True
        )
    port = free_port()
    text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    for old, new in {
        "listener 8883\n": f"listener {port} 127.0.0.1\n",
        "/etc/mosquitto/certs/": f"{certs}/",
        "/etc/mosquitto/passwd": str(passwords),
        "/etc/mosquitto/acl": str(DEPLOY / "mosquitto" / "acl"),
        "/var/lib/mosquitto/": f"{directory}/",
    }.items():
        assert old in text, f"mosquitto.conf no longer has {old!r}"
        text = text.replace(old, new)
    # as root, mosquitto would switch to its own user, who cannot read pytest's directories
    config = directory / "mosquitto.conf"
    config.write_text(text + "user root\n")
    with (directory / "mosquitto.log").open("wb") as log:
        process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=log)
        try:
            wait_for_port(port, timeout=10, process=process)
            yield DeployBroker(port, certs / "ca.pem")
        finally:
            process.terminate()
            process.wait(timeout=10)


@asynccontextmanager
async def _login(
    broker: DeployBroker,
    user: str | None,
    *,
    password: str | None = None,
    tls: bool = True,
    timeout: float = 5,
) -> AsyncIterator[aiomqtt.Client]:
    client = aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        identifier=f"deploy-test-{user}",
        username=user,
        password=password if password is not None else PASSWORDS.get(user or ""),
        tls_params=aiomqtt.TLSParameters(ca_certs=str(broker.ca_file)) if tls else None,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=timeout,
    )
    async with client:
        yield client


class Inbox:
    """What a client receives, collected in the background until the block ends."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    @asynccontextmanager
    async def listening(self, client: aiomqtt.Client) -> AsyncIterator[Inbox]:
        async def collect() -> None:
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                self.messages.append((str(message.topic), payload))

        task = asyncio.create_task(collect(), name="deploy-test-inbox")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def receive(self, topic: str, payload: bytes) -> None:
        async def arrived() -> bool:
            return (topic, payload) in self.messages

        await wait_for(arrived, timeout=10, what=f"{payload!r} on {topic}")


def _site(request: pytest.FixtureRequest) -> str:
    """A site level of the test's own, so tests on the shared broker never see each other."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)


async def test_device_publishes_only_under_its_own_id(
    deploy_broker: DeployBroker, request: pytest.FixtureRequest
) -> None:
    site = _site(request)
    own = f"clinic/{site}/devices/autoclave-1/telemetry"
    other = f"clinic/{site}/devices/fridge-1/telemetry"
    async with (
        _login(deploy_broker, "equipwatch") as collector,
        _login(deploy_broker, "autoclave-1") as device_a,
        _login(deploy_broker, "fridge-1") as device_b,
        Inbox().listening(collector) as inbox,
    ):
        await collector.subscribe(f"$share/collectors/clinic/{site}/devices/+/telemetry", qos=1)
        await device_a.publish(own, b'{"cycles_total": 1}', qos=1)
        await inbox.receive(own, b'{"cycles_total": 1}')
        await device_b.publish(other, b'{"temperature_c": 4.5}', qos=1)
        await inbox.receive(other, b'{"temperature_c": 4.5}')

        # publish returns on the broker's PUBACK, so the forged message has been routed (or
        # refused) before the next one; a message on one session arrives in order
        await device_a.publish(other, b"forged by autoclave-1", qos=1)
        await device_a.publish(own, b"after the forgery", qos=1)
        await inbox.receive(own, b"after the forgery")
        assert (other, b"forged by autoclave-1") not in inbox.messages
        assert len(inbox.messages) == 3


async def test_service_user_reads_devices_and_writes_alerts_only(
    deploy_broker: DeployBroker, request: pytest.FixtureRequest
) -> None:
    site = _site(request)
    device_topic = f"clinic/{site}/devices/autoclave-1/telemetry"
    alert_topic = f"clinic/{site}/alerts/major"
    async with (
        _login(deploy_broker, "equipwatch") as collector,
        _login(deploy_broker, "autoclave-1") as device,
        Inbox().listening(collector) as inbox,
    ):
        await collector.subscribe([(f"clinic/{site}/devices/#", 1), (f"clinic/{site}/alerts/#", 1)])

        await collector.publish(device_topic, b"forged by the collector", qos=1)
        await device.publish(device_topic, b"real", qos=1)
        await inbox.receive(device_topic, b"real")
        assert (device_topic, b"forged by the collector") not in inbox.messages

        await device.publish(alert_topic, b"alert forged by a device", qos=1)
        await collector.publish(alert_topic, b"alert", qos=1)
        await inbox.receive(alert_topic, b"alert")
        assert (alert_topic, b"alert forged by a device") not in inbox.messages
        assert len(inbox.messages) == 2


@pytest.mark.parametrize(
    ("user", "password", "tls"),
    [
        (None, None, True),  # anonymous
        ("autoclave-1", "wrong", True),
        ("unknown-device", "device-a", True),
        ("autoclave-1", "device-a", False),  # plain MQTT to the TLS listener
    ],
    ids=["anonymous", "wrong-password", "unknown-user", "without-tls"],
)
async def test_broker_refuses_clients_without_credentials_or_tls(
    deploy_broker: DeployBroker, user: str | None, password: str | None, tls: bool
) -> None:
    # a broker that accepted the client would answer CONNACK at once; without TLS it never
    # answers at all, so a short connect timeout decides that case
    with pytest.raises(aiomqtt.MqttError):
        async with _login(deploy_broker, user, password=password, tls=tls, timeout=2):
            pass


# --- Prometheus ---------------------------------------------------------------------------


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(DEPLOY / "prometheus/alerts.yml")["groups"]
            for rule in group["rules"]]  # fmt: skip


def test_prometheus_scrapes_every_role_and_alerts_on_the_named_metrics() -> None:
    config = _yaml(DEPLOY / "prometheus/prometheus.yml")
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()
    port = load_config(DEPLOY / "site.compose.yaml").api.port
    scraped: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            scraped |= set(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            assert dns["port"] == port
            scraped |= {f"{name}:{port}" for name in dns["names"]}
    roles = {name for name, s in _equipwatch_services().items() if name != "migrate"}
    assert scraped == {f"{name}:{port}" for name in roles}

    rules = _alert_rules()
    used = {m for rule in rules for m in re.findall(r"equipwatch_[a-z_]+", rule["expr"])}
    assert used <= set(METRICS), f"alerts use unknown metrics: {used - set(METRICS)}"
    expressions = {rule["alert"]: rule["expr"] for rule in rules}
    assert 'up{job="equipwatch-collector"} == 0' in expressions.values()
    assert any("equipwatch_outbox_depth" in e and "15m" in e for e in expressions.values())
    assert any(
        "rate(equipwatch_dead_letters_total[10m])" in e and e.endswith("> 0")
        for e in expressions.values()
    )
    assert any(e.startswith("equipwatch_ready == 0") for e in expressions.values())
    readme = (DEPLOY / "README.md").read_text()
    for metric in METRICS:
        assert f"`{metric}" in readme, f"deploy/README.md does not list {metric}"


def test_promtool_accepts_the_prometheus_files() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    for command in (["check", "config"], ["check", "rules"]):
        target = "prometheus.yml" if command[1] == "config" else "alerts.yml"
        result = subprocess.run(
            [promtool, *command, str(DEPLOY / "prometheus" / target)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana ------------------------------------------------------------------------------


def _datasources() -> dict[str, str]:
    document = _yaml(DEPLOY / "grafana/provisioning/datasources/equipwatch.yaml")
    return {source["uid"]: source["type"] for source in document["datasources"]}


def _dashboard() -> dict[str, Any]:
    document = json.loads((DEPLOY / "grafana/dashboards/equipwatch.json").read_text())
    assert isinstance(document, dict)
    return document


def _panels() -> list[dict[str, Any]]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def test_dashboard_panels_use_provisioned_datasources() -> None:
    sources = _datasources()
    panels = _panels()
    assert {panel["datasource"]["uid"] for panel in panels} == set(sources)
    for panel in panels:
        for where in (panel, *panel["targets"]):
            reference = where["datasource"]
            assert reference["uid"] in sources, f"{panel['title']}: unknown {reference}"
            assert reference["type"] == sources[reference["uid"]], panel["title"]
    titles = {panel["title"] for panel in panels}
    assert {"Fleet status", "Usage per day", "Faults raised", "Maintenance due"} <= titles
    # the provider reads the directory compose mounts the dashboards into
    provider = _yaml(DEPLOY / "grafana/provisioning/dashboards/equipwatch.yaml")
    path = provider["providers"][0]["options"]["path"]
    grafana = _compose()["services"]["grafana"]
    assert f"./grafana/dashboards:{path}:ro" in grafana["volumes"]
    provisioning = (DEPLOY / "grafana/provisioning/datasources/equipwatch.yaml").read_text()
    for variable in re.findall(r"\$([A-Z_]+)", provisioning):
        assert variable in grafana["environment"]


@dataclass
class ReaderDatabase:
    app_dsn: str
    reader_dsn: str


@pytest.fixture(scope="module")
def reader_database() -> Iterator[ReaderDatabase]:
    """A throwaway PostgreSQL set up by deploy/postgres/init-roles.sh, as the postgres image
    runs it on its first start (its own cluster: the script makes roles and a database)."""
    psql = require_binary("psql", "postgresql-client")
    with postgres_cluster() as cluster:
        server = urlsplit(cluster.dsn)
        result = subprocess.run(
            ["sh", str(DEPLOY / "postgres/init-roles.sh")],
            env={
                "PATH": f"{Path(psql).parent}:{os.environ.get('PATH', '')}",
                "PGHOST": str(server.hostname),
                "PGPORT": str(server.port),
                "POSTGRES_USER": "postgres",
                "EQUIPWATCH_DB_PASSWORD": "app-secret",
                "GRAFANA_DB_PASSWORD": "reader-secret",
            },
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        where = f"{server.hostname}:{server.port}/equipwatch"
        yield ReaderDatabase(
            app_dsn=f"postgresql://equipwatch@{where}",
            reader_dsn=f"postgresql://grafana_reader@{where}",
        )


async def _tables_with_rows(app_dsn: str) -> None:
    """The tables equipwatch makes, as the ``equipwatch`` role, with a few rows to find."""
    async with PostgresStore(app_dsn):
        pass
    engine = create_async_engine(app_dsn.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
    finally:
        await engine.dispose()
    conn = await asyncpg.connect(app_dsn)
    try:
        await conn.execute(
            """
            INSERT INTO equipwatch.status_changes (device_id, ts, online, reason) VALUES
                ('autoclave-1', now() - interval '2 hours', false, 'will'),
                ('autoclave-1', now() - interval '1 hour', true, 'message'),
                ('ups-1', now() - interval '5 minutes', false, 'timeout');
            INSERT INTO equipwatch.latest (device_id, metric, ts, value, quality) VALUES
                ('autoclave-1', 'cycles_total', now(), 4512, 'good');
            INSERT INTO equipwatch.faults (device_id, ts, code, active) VALUES
                ('autoclave-1', now() - interval '3 hours', 'DOOR', true),
                ('autoclave-1', now() - interval '2 hours', 'DOOR', false),
                ('ups-1', now() - interval '4 minutes', 'ON_BATTERY', true);
            INSERT INTO devices (id, kind, manufacturer, model, serial, location, risk_class,
                                 first_seen, retired) VALUES
                ('ups-1', 'ups', 'APC', 'SRT 3000', 'AS1', 'Server cupboard', 'high', now(),
                 false);
            INSERT INTO maintenance_due (plan_id, device_id, cycle, basis, detail, due_at,
                                         due_value, detected, closed_at) VALUES
                ('ups-1-battery', 'ups-1', 1, 'calendar', 'battery test', now(), NULL, now(),
                 NULL),
                ('autoclave-1-service', 'autoclave-1', 1, 'usage', '4500 cycles', NULL, 4500,
                 now() - interval '10 days', now() - interval '9 days');
            INSERT INTO alarms (device_id, type, severity, message, active, acknowledged,
                                count, first_seen, last_seen) VALUES
                ('ups-1', 'ON_BATTERY', 'critical', 'on battery', true, false, 1, now(), now());
            """
        )
    finally:
        await conn.close()


async def test_dashboard_sql_runs_as_the_read_only_grafana_role(
    reader_database: ReaderDatabase,
) -> None:
    await _tables_with_rows(reader_database.app_dsn)
    queries = {
        panel["title"]: target["rawSql"]
        for panel in _panels()
        for target in panel["targets"]
        if panel["datasource"]["uid"] == "equipwatch-postgresql"
    }
    reader = await asyncpg.connect(reader_database.reader_dsn)
    try:
        rows = {title: await reader.fetch(sql) for title, sql in queries.items()}
        with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
            await reader.execute("DELETE FROM maintenance_due")
        await reader.execute("SET default_transaction_read_only = off")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await reader.execute("DELETE FROM maintenance_due")
    finally:
        await reader.close()
    status = {row["device"]: row["online"] for row in rows["Fleet status"]}
    assert status == {"autoclave-1": True, "ups-1": False}
    assert [(r["device"], r["code"]) for r in rows["Active faults"]] == [("ups-1", "ON_BATTERY")]
    assert [(r["device"], r["plan"], r["risk_class"]) for r in rows["Maintenance due"]] == [
        ("ups-1", "ups-1-battery", "high")
    ]
    assert [(r["device"], r["severity"]) for r in rows["Active alarms"]] == [("ups-1", "critical")]


# --- certificates -------------------------------------------------------------------------


def test_make_certs_issues_a_server_certificate_for_every_name(tmp_path: Path) -> None:
    openssl = require_binary("openssl", "openssl")
    out = tmp_path / "certs"

    def make(*names: str) -> None:
        subprocess.run(
            ["sh", str(DEPLOY / "make-certs.sh"), str(out), *names],
            check=True,
            capture_output=True,
        )

    make("mosquitto", "localhost", "127.0.0.1")
    ca = (out / "ca.pem").read_bytes()
    make("mosquitto", "broker.clinic.lan")  # again, with other names: the CA stays
    assert (out / "ca.pem").read_bytes() == ca
    verified = subprocess.run(
        [openssl, "verify", "-CAfile", str(out / "ca.pem"), str(out / "server.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    names = subprocess.run(
        [openssl, "x509", "-in", str(out / "server.pem"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:mosquitto" in names
    assert "DNS:broker.clinic.lan" in names
    assert (out / "ca.key").stat().st_mode & 0o077 == 0
