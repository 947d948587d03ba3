"""FHIR ids for what equipwatch names otherwise.

A FHIR id is 1 to 64 of ``A-Z a-z 0-9 - .``; equipwatch's ids may hold ``_`` and metric names
more. So, readable where possible and stable always:
- a Device is its device id when that is a FHIR id (``autoclave-1``);
- a DeviceMetric is ``<device>.<metric>`` with ``_`` written ``-`` (``autoclave-1.cycles-total``);
- an Observation (one reading) is ``<metric id>-<time in ms since the epoch>``.
Where that would not be a valid or unique id, a hash of the name stands in (``d-…``, ``m-…``),
the same on every start, so that another system can keep the ids it has seen.
"""

from __future__ import annotations

import hashlib
import re

from api.catalogue import Catalogue
from core.errors import NotFound

__all__ = ["FHIR_ID", "FhirIds"]

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_MAX = 64


def _hashed(prefix: str, *parts: str) -> str:
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
    return f"{prefix}-{digest}"


class FhirIds:
    """Both ways between equipwatch's names and FHIR ids, for one site."""

    def __init__(self, catalogue: Catalogue) -> None:
        self._device: dict[str, str] = {}
        self._device_back: dict[str, str] = {}
        self._metric: dict[tuple[str, str], str] = {}
        self._short: dict[tuple[str, str], str] = {}
        self._metric_back: dict[str, tuple[str, str]] = {}
        for device_id in catalogue.devices:
            fhir_id = device_id
            if not FHIR_ID.match(fhir_id) or fhir_id in self._device_back:
                fhir_id = _hashed("d", device_id)
            self._device[device_id] = fhir_id
            self._device_back[fhir_id] = device_id
        for device_id, metrics in catalogue.metrics_of.items():
            for metric in sorted(metrics):
                key = (device_id, metric)
                short = _hashed("m", device_id, metric)
                readable = f"{self._device[device_id]}.{metric.replace('_', '-')}"
                taken = readable in self._metric_back
                fhir_id = short if taken or not FHIR_ID.match(readable) else readable
                self._metric[key] = fhir_id
                self._short[key] = short
                self._metric_back[fhir_id] = key
                self._metric_back[short] = key

    def device(self, device_id: str) -> str:
        """A device's FHIR id; for one no longer configured (an old work order's), what it
        would have had."""
        known = self._device.get(device_id)
        if known is not None:
            return known
        return device_id if FHIR_ID.match(device_id) else _hashed("d", device_id)

    def device_named(self, fhir_id: str) -> str:
        """The device id of a Device's FHIR id; NotFound otherwise."""
        device_id = self._device_back.get(fhir_id)
        if device_id is None:
            raise NotFound(f"no Device/{fhir_id}")
        return device_id

    def metric(self, device_id: str, metric: str) -> str:
        """A metric's FHIR id; for one no longer configured (an old reading's), its hash."""
        return self._metric.get((device_id, metric)) or _hashed("m", device_id, metric)

    def metric_named(self, fhir_id: str) -> tuple[str, str]:
        """(device id, metric) of a DeviceMetric's FHIR id; NotFound otherwise."""
        key = self._metric_back.get(fhir_id)
        if key is None:
            raise NotFound(f"no DeviceMetric/{fhir_id}")
        return key

    def observation(self, device_id: str, metric: str, ts_ms: int) -> str:
        key = (device_id, metric)
        prefix = self._metric.get(key) or _hashed("m", device_id, metric)
        fhir_id = f"{prefix}-{ts_ms}"
        if len(fhir_id) > _MAX:
            fhir_id = f"{self._short.get(key) or _hashed('m', device_id, metric)}-{ts_ms}"
        return fhir_id

    def observation_named(self, fhir_id: str) -> tuple[str, str, int]:
        """(device id, metric, time in ms) of an Observation's FHIR id; NotFound otherwise."""
        prefix, _, digits = fhir_id.rpartition("-")
        key = self._metric_back.get(prefix)
        if key is None or not digits.isdigit() or not digits.isascii() or len(digits) > 15:
            raise NotFound(f"no Observation/{fhir_id}")
        return key[0], key[1], int(digits)
