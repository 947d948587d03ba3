"""The manager's daily digest: overdue, due this week, open alarms, supplies to reorder.

Rendered twice from the same rows: plain text, and HTML that reads well in a mail client
(inline styles only, since mail clients drop style sheets and never load external ones; every
value escaped). One digest per site and local day: its event key is ``digest:<site>:<date>``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from core.notify_config import Severity
from rules.notify.events import Event, digest_key

__all__ = [
    "AlarmRow",
    "DigestData",
    "MaintenanceRow",
    "SupplyRow",
    "digest_event",
    "next_digest_time",
    "render_digest",
]


@dataclass(frozen=True, slots=True)
class MaintenanceRow:
    """A plan occurrence falling due (or already overdue) on a device."""

    device_id: str
    location: str
    plan: str
    due_on: date


@dataclass(frozen=True, slots=True)
class AlarmRow:
    device_id: str
    location: str
    alarm: str
    severity: Severity
    since: datetime
    acknowledged: bool = False


@dataclass(frozen=True, slots=True)
class SupplyRow:
    device_id: str
    location: str
    item: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DigestData:
    site: str
    local_date: date
    timezone: str = "UTC"
    due_this_week: Sequence[MaintenanceRow] = field(default_factory=tuple)
    overdue: Sequence[MaintenanceRow] = field(default_factory=tuple)
    open_alarms: Sequence[AlarmRow] = field(default_factory=tuple)
    supplies: Sequence[SupplyRow] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class _Section:
    title: str
    empty: str
    headings: tuple[str, ...]
    cells: list[tuple[str, ...]]  # one tuple per row, for the HTML table
    lines: list[str]  # the same rows as sentences, for the plain text


def _day(value: date) -> str:
    return f"{value:%a} {value.day} {value:%b %Y}"


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _place(device_id: str, location: str) -> str:
    return f"{device_id} ({location})" if location else device_id


def _sections(data: DigestData) -> list[_Section]:
    zone = ZoneInfo(data.timezone)
    overdue = sorted(data.overdue, key=lambda r: (r.due_on, r.device_id))
    due = sorted(data.due_this_week, key=lambda r: (r.due_on, r.device_id))
    alarms = sorted(data.open_alarms, key=lambda r: (r.since, r.device_id))
    supplies = sorted(data.supplies, key=lambda r: (r.device_id, r.item))

    def late(row: MaintenanceRow) -> str:
        days = (data.local_date - row.due_on).days
        return f"{days} day{'s' if days != 1 else ''} overdue" if days > 0 else "due today"

    def since(row: AlarmRow) -> str:
        return f"{row.since.astimezone(zone):%d %b %Y %H:%M}"

    def acknowledged(row: AlarmRow) -> str:
        return "acknowledged" if row.acknowledged else "not acknowledged"

    return [
        _Section(
            "Overdue",
            "Nothing is overdue.",
            ("Device", "Location", "Plan", "Was due", "Late"),
            [(r.device_id, r.location, r.plan, _day(r.due_on), late(r)) for r in overdue],
            [
                f"{_place(r.device_id, r.location)}: {r.plan}, was due {_day(r.due_on)}, {late(r)}"
                for r in overdue
            ],
        ),
        _Section(
            "Due this week",
            "Nothing falls due this week.",
            ("Device", "Location", "Plan", "Due"),
            [(r.device_id, r.location, r.plan, _day(r.due_on)) for r in due],
            [f"{_place(r.device_id, r.location)}: {r.plan}, due {_day(r.due_on)}" for r in due],
        ),
        _Section(
            "Open alarms",
            "No open alarms.",
            ("Device", "Location", "Alarm", "Severity", "Since", "Acknowledged"),
            [
                (r.device_id, r.location, r.alarm, r.severity, since(r), _yes(r.acknowledged))
                for r in alarms
            ],
            [
                f"{_place(r.device_id, r.location)}: {r.alarm} ({r.severity}) since {since(r)}, "
                f"{acknowledged(r)}"
                for r in alarms
            ],
        ),
        _Section(
            "Supplies to reorder",
            "Nothing to reorder.",
            ("Device", "Location", "Item", "Detail"),
            [(r.device_id, r.location, r.item, r.detail) for r in supplies],
            [
                f"{_place(r.device_id, r.location)}: {r.item}"
                + (f", {r.detail}" if r.detail else "")
                for r in supplies
            ],
        ),
    ]


def _title(data: DigestData) -> str:
    return f"{data.site}: equipment digest for {_day(data.local_date)}"


def _render_text(data: DigestData, sections: list[_Section]) -> str:
    lines = [_title(data), ""]
    for section in sections:
        lines.append(f"{section.title} ({len(section.lines)})")
        lines += [f"  - {line}" for line in section.lines] or [f"  {section.empty}"]
        lines.append("")
    lines.append(f"Times are site time ({data.timezone}).")
    return "\n".join(lines) + "\n"


_CELL = "padding:4px 10px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top"
_HEAD = _CELL + ";background:#f2f2f2;font-weight:bold"


def _render_html(data: DigestData, sections: list[_Section]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{e(_title(data))}</title></head>",
        '<body style="font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#222">',
        f'<h1 style="font-size:18px">{e(_title(data))}</h1>',
    ]
    for section in sections:
        heading = f"{section.title} ({len(section.cells)})"
        parts.append(f'<h2 style="font-size:16px;margin-top:20px">{e(heading)}</h2>')
        if not section.cells:
            parts.append(f'<p style="color:#555">{e(section.empty)}</p>')
            continue
        parts.append('<table style="border-collapse:collapse" cellpadding="0" cellspacing="0">')
        parts.append(
            "<tr>" + "".join(f'<th style="{_HEAD}">{e(h)}</th>' for h in section.headings) + "</tr>"
        )
        for row in section.cells:
            parts.append(
                "<tr>" + "".join(f'<td style="{_CELL}">{e(v)}</td>' for v in row) + "</tr>"
            )
        parts.append("</table>")
    parts.append(
        f'<p style="color:#555;font-size:12px">Times are site time ({e(data.timezone)}).</p>'
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_digest(data: DigestData) -> tuple[str, str]:
    """(plain text, HTML) of the digest; every section appears, saying so when it is empty."""
    sections = _sections(data)
    return _render_text(data, sections), _render_html(data, sections)


def digest_event(data: DigestData) -> Event:
    """The digest as an event, keyed so that a day gets exactly one digest per recipient."""
    text, page = render_digest(data)
    counts = {
        "overdue": len(data.overdue),
        "due_this_week": len(data.due_this_week),
        "open_alarms": len(data.open_alarms),
        "supplies_to_reorder": len(data.supplies),
    }
    return Event(
        key=digest_key(data.site, data.local_date),
        kind="digest",
        severity="info",
        device_id=None,
        subject=_title(data),
        body=text,
        data={"local_date": data.local_date.isoformat(), **counts},
        html=page,
    )


def next_digest_time(now: datetime, zone: ZoneInfo, at: time) -> datetime:
    """The next moment after ``now`` when the site's clocks show ``at``, in ``zone``.

    On the day clocks go forward, a time inside the skipped hour is taken as the same moment
    an hour later on the new clock (01:30 becomes 02:30 in Europe/London); on the day they go
    back, a time shown twice is taken the first time.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    local_now = now.astimezone(zone)
    day = local_now.date()
    while True:
        wall = datetime.combine(day, at.replace(tzinfo=None, fold=0), tzinfo=zone)
        # a skipped wall time has no instant: going through UTC and back moves it past the gap
        moment = wall.astimezone(UTC).astimezone(zone)
        if moment > now:
            return moment
        day += timedelta(days=1)
