"""A stream of every reading, fault and status change to a server that speaks the InfluxDB v2
write API (InfluxDB 2.x/3.x, InfluxDB Cloud, VictoriaMetrics), for a practice's Grafana.

Schema (line protocol; every point carries the tags ``site``, ``device`` and ``kind``):

| measurement | extra tags | fields | one point per |
|---|---|---|---|
| ``<device kind>`` (e.g. ``autoclave``) | | one numeric field per metric | device and time |
| ``fault`` | ``code`` | ``active`` = 1 or 0 | fault raised or cleared |
| ``status`` | | ``online`` = 1 or 0 | status change |

Faults carry their code as a tag and a numeric field because not every server stores string
fields (VictoriaMetrics keeps numbers only, and names series ``<measurement>_<field>``, e.g.
``autoclave_cycles_total``). Readings of poor quality are written with a ``quality`` tag.

Errors are classified as Telegraf does: 429 and 5xx (and no answer at all) are worth retrying,
honouring Retry-After; 413 means the batch is too large, so it is split in halves; any other 4xx
will never succeed, so those points are dropped, counted and logged with the server's reason.
The caller (the outbox's drain loop) retries a ``SinkUnavailable`` and commits otherwise, so an
outage loses nothing and a bad point cannot block the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import cast

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from urllib3.exceptions import HTTPError

from core.errors import StoreError
from core.records import DeadLetter, FaultEvent, Quality, Reading, Record, StatusChange

__all__ = ["InfluxSink", "SinkUnavailable", "to_lines"]

log = logging.getLogger(__name__)


class SinkUnavailable(StoreError):
    """The server cannot take the batch now; try again after ``retry_after`` seconds (if the
    server said so)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _ns(ts: datetime) -> int:
    return int(ts.timestamp() * 1_000_000) * 1000


def to_lines(records: Sequence[Record], *, site: str, kinds: Mapping[str, str]) -> list[str]:
    """Line protocol for ``records``: readings of one device at one time share a point."""
    points: dict[tuple[str, int, str], list[str]] = {}
    lines: list[str] = []
    site_tag = _escape_tag(site)
    for record in records:
        kind = kinds.get(record.device_id, "device")
        tags = f"site={site_tag},device={_escape_tag(record.device_id)},kind={_escape_tag(kind)}"
        if isinstance(record, Reading):
            quality = "" if record.quality is Quality.GOOD else f",quality={record.quality}"
            key = (f"{_escape_tag(kind)},{tags}{quality}", _ns(record.ts), record.device_id)
            points.setdefault(key, []).append(
                f"{_escape_tag(record.metric)}={float(record.value)!r}"
            )
        elif isinstance(record, FaultEvent):
            code = _escape_tag(record.code)
            lines.append(f"fault,{tags},code={code} active={int(record.active)}i {_ns(record.ts)}")
        elif isinstance(record, StatusChange):
            lines.append(f"status,{tags} online={int(record.online)}i {_ns(record.ts)}")
    for (series, ns, _), fields in points.items():
        lines.append(f"{series} {','.join(fields)} {ns}")
    return lines


class InfluxSink:
    """Writes batches of records to one bucket. ``write`` is the outbox drain's handler."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        org: str,
        bucket: str,
        site: str,
        kinds: Mapping[str, str],
        timeout: float = 10.0,
    ) -> None:
        self._client = InfluxDBClient(
            url=url, token=token, org=org, timeout=int(timeout * 1000), retries=False
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._bucket = bucket
        self._org = org
        self._site = site
        self._kinds = dict(kinds)
        # the client blocks on urllib3; one thread keeps the batches in order
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="influx")
        self.points_written = 0
        self.dropped: Counter[str] = Counter()  # points refused for good, by HTTP status
        self.splits = 0

    async def write(self, records: Sequence[Record | DeadLetter]) -> None:
        """Write ``records``; raise SinkUnavailable when the server should be asked again."""
        lines = to_lines(
            [r for r in records if not isinstance(r, DeadLetter)],
            site=self._site,
            kinds=self._kinds,
        )
        if lines:
            await self._write_lines(lines)

    async def _write_lines(self, lines: list[str]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._post, lines)
        except ApiException as exc:
            status = int(exc.status or 0)
            if status == 413 and len(lines) > 1:
                self.splits += 1
                middle = len(lines) // 2
                await self._write_lines(lines[:middle])
                await self._write_lines(lines[middle:])
                return
            if status == 429 or status >= 500:
                raise SinkUnavailable(
                    f"InfluxDB write: HTTP {status} {exc.reason}", _retry_after(exc)
                ) from exc
            # any other 4xx will fail the same way every time: drop, count, say why
            self.dropped[str(status)] += len(lines)
            log.warning(
                "InfluxDB refused %d point(s) for good: HTTP %s %s",
                len(lines),
                status,
                (exc.body or exc.reason or "")[:300],
            )
            return
        except (HTTPError, OSError) as exc:
            raise SinkUnavailable(f"InfluxDB write: {exc}") from exc
        self.points_written += len(lines)

    def _post(self, lines: list[str]) -> None:
        self._write_api.write(
            bucket=self._bucket,
            org=self._org,
            record=lines,
            write_precision=cast(WritePrecision, WritePrecision.NS),  # a str constant in the stubs
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._client.close()  # type: ignore[no-untyped-call]


def _retry_after(exc: ApiException) -> float | None:
    headers: Mapping[str, str] = exc.headers or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
