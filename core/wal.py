"""Switching a SQLite file to WAL mode, which every equipwatch connection to one does.

The switch needs the file to itself for a moment, and when another connection holds it SQLite
answers "database is locked" at once: ``busy_timeout`` does not cover this step. That happens
when processes open a new file together and each tries the switch (three threads opening one
new file at once: 41 failures in 300 files here). The other connection's switch is over in
microseconds, so a retry a moment later finds the file in WAL mode.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["LOCKED", "use_wal"]

LOCKED = "database is locked"
"""How sqlite3 words the refusal."""


def use_wal(conn: sqlite3.Connection, *, timeout: float = 5.0) -> str:
    """Put ``conn``'s file in WAL mode, retrying for up to ``timeout`` seconds while another
    connection holds it; returns the journal mode the file is in (``"wal"`` unless the file
    cannot have one, such as ``:memory:``)."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if LOCKED not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)  # a backoff between attempts, on the caller's own thread
        delay = min(2 * delay, 0.1)
