"""What a simulator run did, for its progress line and for the scale benchmark."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field

__all__ = ["SimStats"]


@dataclass(slots=True)
class SimStats:
    published: int = 0  # MQTT messages, well-formed
    malformed: int = 0  # MQTT messages deliberately broken by a scenario
    connects: int = 0  # MQTT (re)connections
    requests: int = 0  # Modbus requests answered with data
    exceptions: int = 0  # Modbus requests answered with an exception code
    unanswered: int = 0  # Modbus requests left without an answer (offline, timeout)
    lag_max: float = 0.0  # worst lateness of a publication against its schedule, seconds
    late: int = 0  # publications more than one second behind schedule
    _started: float = field(default_factory=time.monotonic)

    def record_lag(self, lag: float) -> None:
        self.lag_max = max(self.lag_max, lag)
        if lag > 1.0:
            self.late += 1

    def line(self) -> str:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        elapsed = max(time.monotonic() - self._started, 1e-9)
        cpu = usage.ru_utime + usage.ru_stime
        return (
            f"published={self.published} malformed={self.malformed} connects={self.connects} "
            f"modbus_requests={self.requests} exceptions={self.exceptions} "
            f"unanswered={self.unanswered} lag_max={self.lag_max:.3f}s late={self.late} "
            f"cpu={cpu / elapsed:.1%} rss_max={usage.ru_maxrss / 1024:.0f}MiB"
        )
