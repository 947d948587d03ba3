"""VictoriaMetrics, a real server that speaks the InfluxDB v2 write API, for the sink tests."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.net import free_port
from tests.support import POLL, require_binary


@dataclass
class VictoriaMetrics:
    """A VictoriaMetrics process that can be stopped and started again on the same port and
    data, as an outage does."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = require_binary("victoria-metrics", "victoria-metrics")
        self.process = subprocess.Popen(
            [
                binary,
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={self.directory / 'data'}",
                "-search.latencyOffset=0s",  # otherwise fresh points stay hidden for 30 s
                "-retentionPeriod=100y",
                "-loggerOutput=stderr",
                "-loggerLevel=ERROR",
            ],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"victoria-metrics exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=POLL) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(POLL)
        raise AssertionError("victoria-metrics did not become healthy within 20 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every series matching ``match``, as VictoriaMetrics exports them (after a flush)."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):
            pass
        query = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=10) as answer:
            return [json.loads(line) for line in answer.read().decode().splitlines() if line]


@contextmanager
def victoria_metrics(directory: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
