"""Usage from counter readings: a counter that goes down wrapped or was reset; usage is never
negative."""

from __future__ import annotations

__all__ = ["counter_delta"]


def counter_delta(previous: float, current: float, width: int | None) -> float:
    """Units counted between two raw readings of one counter.

    - up: the difference;
    - down, with a known register width, and the wrapped distance is less than half the
      register's range: a wrap (65535 -> 3 on a uint16 is 4 units);
    - any other drop: a reset (device replaced, firmware reset): the counter counted from
      zero, so the new value is the usage.
    """
    if current >= previous:
        return current - previous
    if width is not None:
        modulus = float(2**width)
        wrapped = current + modulus - previous
        if 0 < wrapped < modulus / 2:
            return wrapped
    return current
