"""Usage from counter readings: a counter that goes down wrapped or was reset; usage is never
negative. The rule itself lives in ``core.counters`` so that the store's usage queries apply
exactly the same one."""

from __future__ import annotations

from core.counters import counter_delta

__all__ = ["counter_delta"]
