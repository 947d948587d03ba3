"""The JSON document a webhook receives and an MQTT alert carries."""

from __future__ import annotations

import json
from datetime import datetime

from rules.notify.events import Event

__all__ = ["notice_json"]


def notice_json(event: Event, *, site: str, sent_at: datetime) -> bytes:
    """UTF-8 JSON: key, kind, severity, site, device_id, subject, body, data, sent_at."""
    document = {
        "key": event.key,
        "kind": event.kind,
        "severity": event.severity,
        "site": site,
        "device_id": event.device_id,
        "subject": event.subject,
        "body": event.body,
        "data": dict(event.data),
        "sent_at": sent_at.isoformat(),
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
