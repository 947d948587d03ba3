"""Waiting on conditions (never on the clock) and the servers tests talk to."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import pytest

from collector.modbus_client import ModbusEndpoint
from core.clock import AcceleratedClock
from core.config import SiteConfig, parse_config
from core.net import free_port
from equipwatch.cli import sample_config_path
from simulators.modbus import ModbusSimServer, ModbusUnit

_T = TypeVar("_T")

POLL = 0.05


def sample_site(topic_prefix: str | None = None) -> SiteConfig:
    """The bundled sample configuration, its MQTT topics moved under ``topic_prefix``."""
    text = sample_config_path().read_text()
    if topic_prefix is not None:
        text = text.replace("clinic/riverside", topic_prefix)
    return parse_config(text, "site.yaml")


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def require_binary(name: str, package: str) -> str:
    """The path of a server binary; under CI its absence fails the run, elsewhere it skips."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        message = f"{name} is not installed (apt-get install {package})"
        if in_ci():
            pytest.fail(f"{message}; CI=true requires it")
        pytest.skip(message)
    return path


async def wait_for(probe: Callable[[], Awaitable[_T | None]], *, timeout: float, what: str) -> _T:
    """Call ``probe`` until it returns something other than None or False, or fail."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await probe()
        if result is not None and result is not False:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(POLL)


def wait_for_port(port: int, *, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=POLL):
                return
        except OSError:
            time.sleep(POLL)
    raise AssertionError(f"nothing listened on port {port} within {timeout:g}s")


class Mosquitto:
    """A Mosquitto on a loopback port that can be stopped and started again on the same port,
    with its persistence file in ``directory``, so sessions and queued messages survive."""

    def __init__(self, directory: Path, *, settings: Mapping[str, object] | None = None) -> None:
        self.binary = require_binary("mosquitto", "mosquitto")
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # as root, mosquitto would switch to its own user, who cannot write to this directory
            "user root\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {directory}/\n"
            f"log_dest file {directory}/mosquitto.log\n"
            + "".join(f"{key} {value}\n" for key, value in (settings or {}).items())
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)])
        try:
            wait_for_port(self.port, timeout=10, process=self.process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop as a service manager would (SIGTERM): Mosquitto saves its persistence file."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def mosquitto(directory: Path, *, settings: Mapping[str, object] | None = None) -> Iterator[str]:
    """A throwaway Mosquitto on a free loopback port; yields its mqtt:// URL. ``settings`` adds
    lines to its configuration (e.g. ``{"max_queued_messages": 0}``)."""
    broker = Mosquitto(directory, settings=settings)
    broker.start()
    try:
        yield broker.url
    finally:
        broker.stop()


FROZEN = 1e-9  # speed of a clock whose simulated time stands still during a test


@asynccontextmanager
async def modbus_gateway(
    units: dict[int, ModbusUnit],
    *,
    start: datetime,
    answering_unit: int = 1,
    speed: float = FROZEN,
) -> AsyncIterator[int]:
    """A simulated gateway hosting ``units`` on a free port, once ``answering_unit`` answers;
    yields the port. Simulated time starts at ``start`` and, by default, stands still."""
    port = free_port()
    server = ModbusSimServer("127.0.0.1", port, units, clock=AcceleratedClock(start, speed))
    task = asyncio.create_task(server.serve(), name=f"sim[{port}]")
    endpoint = ModbusEndpoint("127.0.0.1", port, timeout=0.5)

    async def answering() -> bool:
        try:
            await endpoint.read("holding", 0, 1, answering_unit)
        except Exception:
            return False
        return True

    try:
        await wait_for(answering, timeout=10, what=f"the simulated gateway on {port} to answer")
        endpoint.close()
        yield port
    finally:
        endpoint.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
