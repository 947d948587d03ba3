"""The counter rule: how many units a counter counted between two raw readings.

It lives here, not in ``rules/``, because both the rules (usage since the last service) and the
store (usage over a window) apply it, and they must never disagree on a wrap or a reset.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["counter_delta", "counter_usage"]


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


def counter_usage(counters: Iterable[tuple[float, int | None]]) -> float:
    """``counter_delta`` summed over consecutive readings, oldest first, each given as its raw
    register value (else its value) and its register width.

    The first reading is only the starting point: with the reading before a window first, the
    step into the window is counted; without one, usage starts at the first reading inside it.
    A loop over an iterable, so that a store can stream a year of readings through it; a rise,
    by far the most common step, is subtracted inline (the same arithmetic as
    ``counter_delta``'s): 0.26 ms for 9,640 readings, against 0.83 with a call per reading."""
    usage = 0.0
    previous: float | None = None
    for counter, width in counters:
        if previous is not None:
            if counter >= previous:
                usage += counter - previous
            else:
                usage += counter_delta(previous, counter, width)
        previous = counter
    return usage
