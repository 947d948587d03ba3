"""`equipwatch export`: readings as CSV for a spreadsheet."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.records import Quality, Reading
from core.store import SqliteStore
from equipwatch import export as export_module
from equipwatch.cli import main, sample_config_path

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)  # GMT: the sample site's local time equals UTC


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "site.sqlite"

    async def fill() -> None:
        async with SqliteStore(path) as store:
            await store.write(
                [Reading("ups-1", "load_pct", 30 + i, T0 + timedelta(minutes=i)) for i in range(5)]
                + [Reading("ups-1", "run_hours", 18250.5, T0, Quality.GOOD, 182505, 32)]
                + [Reading("autoclave-1", "cycles_total", 4491, T0 + timedelta(hours=30))]
            )

    asyncio.run(fill())
    return path


def _export(
    store_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> list[dict[str, str]]:
    code = main(
        ["export", "--config", str(sample_config_path()), "--data", str(store_path), *extra]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return list(csv.DictReader(io.StringIO(captured.out)))


def test_export_writes_one_row_per_reading_in_the_window(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _export(store_path, capsys, "--from", "2026-11-24", "--to", "2026-11-25")
    assert [(r["device"], r["metric"], r["value"]) for r in rows] == [
        ("ups-1", "load_pct", "30"),
        ("ups-1", "run_hours", "18250.5"),
        *[("ups-1", "load_pct", str(30 + i)) for i in range(1, 5)],
    ]
    first = rows[0]
    assert first == {
        "time": "2026-11-24T09:00:00.000+00:00",
        "device": "ups-1",
        "kind": "ups",
        "location": "Server cupboard",
        "metric": "load_pct",
        "value": "30",
        "unit": "%",
        "quality": "good",
    }


def test_export_filters_by_device_and_time(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _export(
        store_path,
        capsys,
        "--from",
        "2026-11-24T09:02",
        "--to",
        "2026-11-26",
        "--device",
        "autoclave-1",
    )
    assert [(r["device"], r["metric"], r["value"]) for r in rows] == [
        ("autoclave-1", "cycles_total", "4491")
    ]


def test_export_pages_through_many_readings_without_loss(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(export_module, "PAGE", 2)  # pages end between readings of one instant
    rows = _export(store_path, capsys, "--from", "2026-11-24", "--to", "2026-11-26")
    assert len(rows) == 7
    assert len({(r["device"], r["metric"], r["time"]) for r in rows}) == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "yesterday", "--to", "2026-11-25"], "give dates as"),
        (["--from", "2026-11-25", "--to", "2026-11-24"], "--to must be after --from"),
        (["--from", "2026-11-24", "--to", "2026-11-25", "--device", "nope"], "no device nope"),
    ],
)
def test_export_refuses_bad_requests_with_a_reason(
    store_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code = main(["export", "--config", str(sample_config_path()), "--data", str(store_path), *args])
    assert code == 2
    assert message in capsys.readouterr().err
