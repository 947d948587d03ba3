"""Every error equipwatch raises on purpose.

    EquipwatchError
    ├── ConfigError          the site configuration is invalid (names file, line and field)
    ├── PayloadError         one incoming message cannot be turned into records (dead-lettered)
    ├── DeviceError          a device could not be read
    │   ├── DeviceTimeout    it did not answer in time
    │   ├── DeviceRefused    it answered with a protocol exception (e.g. Modbus code 2)
    │   └── DeviceUnreachable  the connection could not be opened or was lost
    ├── StoreError           the store refused or failed a read or write
    │   └── SchemaMismatch   the records database's schema is not the one this code uses
    │       ├── DatabaseBehind  older: ``equipwatch db upgrade`` brings it to the head
    │       └── DatabaseAhead   a revision this code does not know (a newer equipwatch wrote it)
    └── RecordError          a request on the records cannot be carried out as asked
        ├── NotFound         no record has that id or key
        ├── InvalidRecord    a value is not allowed (unknown priority, naive time, ...)
        └── InvalidTransition  a work order cannot move from its state to the one asked for

Errors from the libraries underneath (paho, aiomqtt, pymodbus, sqlite3, SQLAlchemy) are
translated into these at the adapter that calls them, with ``raise ... from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "DatabaseAhead",
    "DatabaseBehind",
    "DeviceError",
    "DeviceRefused",
    "DeviceTimeout",
    "DeviceUnreachable",
    "EquipwatchError",
    "InvalidRecord",
    "InvalidTransition",
    "NotFound",
    "PayloadError",
    "RecordError",
    "SchemaMismatch",
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


class SchemaMismatch(StoreError):
    """The records database is not at the revision this code needs; ``revision`` is where it
    is (None when it holds no records yet) and ``head`` what the code needs."""

    def __init__(self, message: str, *, revision: str | None, head: str) -> None:
        self.revision = revision
        self.head = head
        super().__init__(message)


class DatabaseBehind(SchemaMismatch):
    """The records database is at an older revision; the message names the command to run."""


class DatabaseAhead(SchemaMismatch):
    """The records database is at a revision this code does not know."""


class RecordError(EquipwatchError):
    """A request on the records (work orders, alarms, notifications) cannot be carried out."""


class NotFound(RecordError):
    """No record has the id or key asked for."""


class InvalidRecord(RecordError):
    """A value given for a record is not allowed; the message names the field and why."""


class InvalidTransition(RecordError):
    """A work order cannot go from its state to the one asked for."""

    def __init__(self, work_order_id: int, current: str, target: str, allowed: list[str]) -> None:
        self.work_order_id = work_order_id
        self.current = current
        self.target = target
        self.allowed = allowed
        targets = ", ".join(allowed) if allowed else f"none: {current} is final"
        super().__init__(
            f"work order {work_order_id} cannot go from {current} to {target} "
            f"(from {current} it can go to: {targets})"
        )
