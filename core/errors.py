"""Every error equipwatch raises on purpose.

    EquipwatchError
    ├── ConfigError          the site configuration is invalid (names file, line and field)
    ├── PayloadError         one incoming message cannot be turned into records (dead-lettered)
    ├── DeviceError          a device could not be read
    │   ├── DeviceTimeout    it did not answer in time
    │   ├── DeviceRefused    it answered with a protocol exception (e.g. Modbus code 2)
    │   └── DeviceUnreachable  the connection could not be opened or was lost
    └── StoreError           the store refused or failed a read or write

Errors from the libraries underneath (paho, aiomqtt, pymodbus, sqlite3) are translated into
these at the adapter that calls them, with ``raise ... from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "DeviceError",
    "DeviceRefused",
    "DeviceTimeout",
    "DeviceUnreachable",
    "EquipwatchError",
    "PayloadError",
    "StoreError",
]


class EquipwatchError(Exception):
    """Base of every error equipwatch raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a configuration file, located as precisely as the file allows."""

    file: str
    line: int | None
    column: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.field}: {self.message}"


class ConfigError(EquipwatchError):
    """The configuration cannot be used; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


class PayloadError(EquipwatchError):
    """A message could not be mapped; ``reason`` is a short stable key used for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class DeviceError(EquipwatchError):
    """A device could not be read."""


class DeviceTimeout(DeviceError):
    """The device did not answer within the configured timeout."""


class DeviceRefused(DeviceError):
    """The device answered with a protocol exception."""

    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(message)


class DeviceUnreachable(DeviceError):
    """The connection to the device could not be opened or was lost."""


class StoreError(EquipwatchError):
    """The store failed a read or a write."""
