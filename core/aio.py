"""Small asyncio helpers."""

from __future__ import annotations

import asyncio

__all__ = ["raise_if_cancelling"]


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library swallowed.

    On Python 3.11, ``asyncio.wait_for`` returns the inner result instead of raising when the
    cancellation lands just as the inner future completes. aiomqtt (publish, connect) and pymodbus
    (connect) use it, so a loop around their calls can miss its cancellation and run forever,
    holding up shutdown. Call this after such a call, in any loop that must stop when asked.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
