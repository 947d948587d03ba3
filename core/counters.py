"""The counter rule: how many units a counter counted between two raw readings.

It lives here, not in ``rules/``, because both the rules (usage since the last service) and the
store (usage over a window) apply it, and they must never disagree on a wrap or a reset.
"""

from __future__ import annotations

__all__ = ["counter_delta"]


def counter_delta(previous: float, current: float, width: int | None) -> float:
    """Units counted between two raw readings of one counter; never negative.

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
