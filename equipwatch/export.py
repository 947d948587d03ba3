"""Readings as CSV, for the technician's spreadsheet: ``equipwatch export``."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import date, datetime, time
from typing import TextIO
from zoneinfo import ZoneInfo

from core.config import SiteConfig
from core.store import SqliteStore

__all__ = ["COLUMNS", "export_csv", "parse_moment"]

COLUMNS = ("time", "device", "kind", "location", "metric", "value", "unit", "quality")
PAGE = 10_000


def parse_moment(text: str, zone: ZoneInfo) -> datetime:
    """A date (midnight at the site) or a date and time (the site's zone unless it says)."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=zone)
    return datetime.combine(day, time(), zone)


async def export_csv(
    store: SqliteStore,
    site: SiteConfig,
    *,
    start: datetime,
    end: datetime,
    device_ids: Sequence[str],
    out: TextIO,
) -> int:
    """Write every reading of ``device_ids`` in [start, end) to ``out``, device by device, oldest
    first; return how many rows were written. Reads in pages, so a year of data streams."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    rows = 0
    for device_id in device_ids:
        device = site.device(device_id)
        units = device.units if device else {}
        page_start = start
        seen_at_start: set[str] = set()  # metrics already written at page_start's instant
        while True:
            # the readings already written of page_start's instant come first again (pages are
            # ordered by time, then metric): ask for that many more, so every page moves on
            limit = PAGE + len(seen_at_start)
            page = await store.readings(device_id, start=page_start, end=end, limit=limit)
            fresh = [r for r in page if not (r.ts == page_start and r.metric in seen_at_start)]
            for reading in fresh:
                writer.writerow(
                    (
                        reading.ts.isoformat(timespec="milliseconds"),
                        device_id,
                        device.kind if device else "",
                        device.location if device else "",
                        reading.metric,
                        f"{reading.value:g}",
                        units.get(reading.metric) or "",
                        reading.quality,
                    )
                )
            rows += len(fresh)
            if len(page) < limit:
                break
            # the next page starts at the last instant seen; skip what was written of it
            last = page[-1].ts
            seen_at_start = {r.metric for r in page if r.ts == last}
            page_start = last
    return rows
