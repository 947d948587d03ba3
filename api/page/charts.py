"""Line charts as data for inline SVG: the templates draw them, so every value reaching the
markup passes through the template's escaping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from core.store.models import Bucket

__all__ = ["Chart", "line_chart"]


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    points: str
    """SVG polyline points, ``x,y x,y ...``, in the chart's own coordinates."""
    low: float
    high: float
    last: float
    count: int


def line_chart(
    buckets: Sequence[Bucket], start: datetime, end: datetime, *, width: int, height: int
) -> Chart | None:
    """``buckets`` placed by time over [start, end] and scaled to their own range; None when
    there is nothing to draw."""
    if not buckets:
        return None
    span = (end - start).total_seconds() or 1.0
    values = [bucket.value for bucket in buckets]
    low, high = min(values), max(values)
    # a flat series is drawn across the middle rather than along an edge
    spread = high - low
    pad = 2.0
    points = []
    for bucket in buckets:
        offset = (bucket.start - start).total_seconds() / span
        x = pad + min(max(offset, 0.0), 1.0) * (width - 2 * pad)
        share = 0.5 if spread == 0 else (bucket.value - low) / spread
        y = height - pad - share * (height - 2 * pad)
        points.append(f"{x:.1f},{y:.1f}")
    return Chart(
        width=width,
        height=height,
        points=" ".join(points),
        low=low,
        high=high,
        last=values[-1],
        count=len(values),
    )
