"""Scripted misbehaviour of a simulated device's front-end: the ways a real device goes wrong
on the wire rather than in its values (it drops off the network, answers with an exception,
stops answering, answers slowly, publishes garbage).

Each is a window of simulated time; the front-ends ask what is active now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

__all__ = ["Behaviour", "Misbehaviour", "Window"]

Misbehaviour = Literal["offline", "exception", "timeout", "slow"]


@dataclass(frozen=True, slots=True)
class Window:
    what: Misbehaviour
    start: datetime
    end: datetime | None  # None: until the end of the run
    code: int = 4  # exception: the Modbus exception code to answer with
    delay: float = 0.0  # slow: real seconds added to every answer or publication


@dataclass(slots=True)
class Behaviour:
    windows: list[Window] = field(default_factory=list)
    malformed_pending: int = 0  # malformed payloads still to publish

    def add(self, window: Window) -> None:
        self.windows.append(window)

    def active(self, what: Misbehaviour, now: datetime) -> Window | None:
        for window in self.windows:
            if (
                window.what == what
                and window.start <= now
                and (window.end is None or now < window.end)
            ):
                return window
        return None

    def take_malformed(self) -> bool:
        if self.malformed_pending <= 0:
            return False
        self.malformed_pending -= 1
        return True
