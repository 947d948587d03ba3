"""What the notification layer raises.

    EquipwatchError                      (core.errors)
    └── NotifyError
        ├── DeliveryError    one notice could not be delivered on one channel; ``retryable``
        │                    says whether trying again later can help
        ├── MissingSecret    an environment variable named in the settings is not set
        └── InvalidEvent     a rule built an event that cannot be sent (also a ValueError)

Errors of aiosmtplib, httpx and aiomqtt are translated into ``DeliveryError`` in the channel
that calls them, with ``raise ... from exc``.
"""

from __future__ import annotations

from core.errors import EquipwatchError

__all__ = ["DeliveryError", "InvalidEvent", "MissingSecret", "NotifyError"]


class NotifyError(EquipwatchError):
    """Base of every error of the notification layer."""


class DeliveryError(NotifyError):
    """A notice was not delivered. ``reason`` says why in words a person can act on."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        self.reason = reason
        self.retryable = retryable
        super().__init__(reason)


class MissingSecret(NotifyError):
    """A password or signing secret is to come from an environment variable that is not set."""

    def __init__(self, variable: str, needed_by: str) -> None:
        self.variable = variable
        super().__init__(f"environment variable {variable} is not set ({needed_by} needs it)")


class InvalidEvent(NotifyError, ValueError):
    """An event that cannot be sent: unknown kind or severity, a multi-line subject, data that
    is not JSON."""
