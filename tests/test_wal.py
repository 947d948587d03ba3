"""Connections opening one new SQLite file together all get it in WAL mode."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from core.wal import use_wal

OPENERS = 3
FILES = 40  # without the retry, some 1 in 7 new files failed one opener here


def _open_together(path: Path) -> list[str]:
    """``OPENERS`` threads switching ``path`` to WAL at the same moment; their answers, or
    the error one of them met."""
    barrier = threading.Barrier(OPENERS)
    answers: list[str] = []

    def open_file() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            barrier.wait()
            answers.append(use_wal(conn))
        except sqlite3.Error as exc:
            answers.append(f"error: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=open_file) for _ in range(OPENERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_openers_of_a_new_file_together_all_get_wal(tmp_path: Path) -> None:
    for index in range(FILES):
        assert _open_together(tmp_path / f"new-{index}.db") == ["wal"] * OPENERS
