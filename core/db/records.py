"""The records: devices, plan state, due occurrences, work orders, alarms, notifications, the
audit log and read cursors, on SQLite or PostgreSQL through SQLAlchemy (async).

Use as ``async with RecordStore.open(url) as records:`` (``url`` from ``records_url``). The
database must be at the migrations' head (``core.db.migrate``); opening refuses one that is not.

How the rules hold:
- Every method that changes a plan, work order, alarm or device appends its audit row in the
  same transaction: the change and its record commit together or not at all. ``before`` and
  ``after`` are the record as JSON. A plan's running state (usage, last reading) changes on
  every tick and is not audited; a plan's creation, a new cycle, and its due occurrences
  opening and closing are.
- Write transactions take the write lock first (see ``core.db.engine``) and read the rows they
  change ``FOR UPDATE`` on PostgreSQL, so concurrent callers serialise instead of losing
  updates; the unique keys (one active alarm per device and type, one PM order per plan
  occurrence, one notice per event, recipient and channel) settle what two callers racing to
  insert would otherwise duplicate.
- Listings page by id (keyset): ``Page.next_after`` goes back as ``after``.
- API tokens are ``ew_<lookup>_<secret>``; only a hash of the secret is stored, so the
  token is shown once, by ``create_token``, and cannot be read back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import JSON, ColumnElement, Table, TableClause, column, select, text, update
from sqlalchemy import table as table_clause
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.clock import Clock, SystemClock
from core.config import Device
from core.db.engine import WRITE, create_engine, describe
from core.db.migrate import require_current
from core.db.models import (
    Alarm,
    AuditEntry,
    DeviceRecord,
    MaintenanceDue,
    Notification,
    Page,
    StoredPlanState,
    WorkOrder,
    WorkOrderDraft,
)
from core.db.schema import (
    ACTIVE_ALARM,
    ALARM_SEVERITIES,
    API_ROLES,
    PRIORITIES,
    WORK_ORDER_KINDS,
    AlarmRow,
    ApiTokenRow,
    AuditRow,
    CursorRow,
    DeviceRow,
    MaintenanceDueRow,
    NotificationRow,
    PlanStateRow,
    WorkOrderRow,
)
from core.db.types import UTCDateTime
from core.errors import InvalidRecord, InvalidTransition, NotFound, StoreError
from core.notices import NoticeRecord

__all__ = [
    "API_ROLES",
    "MAX_PAGE",
    "RULES",
    "TOKEN_PREFIX",
    "TRANSITIONS",
    "UNSET",
    "ApiToken",
    "Principal",
    "RecordStore",
    "Unset",
]

RULES = "rules"
"""The actor of what the rules engine does."""

MAX_PAGE = 1000

TRANSITIONS: dict[str, tuple[str, ...]] = {
    "open": ("in_progress", "cancelled"),
    "in_progress": ("on_hold", "done", "cancelled"),
    "on_hold": ("in_progress", "done", "cancelled"),
    "done": (),
    "cancelled": (),
}
"""Where a work order may go from each state; ``done`` is reached by ``complete_work_order``."""

# Higher is more severe: a repeat never lowers an active alarm's severity.
_SEVERITY_RANK = {severity: -rank for rank, severity in enumerate(ALARM_SEVERITIES)}

# Statement parameters per chunk where a list of keys is sent (SQLite's limit is 32766).
_CHUNK = 500

_T = TypeVar("_T")


class Unset(Enum):
    """A field left as it is (None means: clear it)."""

    UNSET = "unset"


UNSET = Unset.UNSET

TOKEN_PREFIX = "ew_"
"""What every API token starts with, so that a leaked one is recognisable (secret scanners,
logs)."""
_LOOKUP_CHARS = 12
_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, and in which role (one of ``API_ROLES``)."""

    name: str
    role: str


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An API token as listed: never its secret, which only ``create_token`` shows, once."""

    id: int
    name: str
    role: str
    lookup: str
    created_at: datetime
    revoked_at: datetime | None


def _secret_hash(secret: str) -> str:
    # sha256 rather than a slow KDF: the secret is 256 random bits, not a password, so there
    # is nothing a guesser could enumerate, and checking stays cheap on every request
    return hashlib.sha256(secret.encode()).hexdigest()


def _split_token(token: str) -> tuple[str, str] | None:
    """(lookup, secret) of a well-formed token, else None."""
    head = len(TOKEN_PREFIX) + _LOOKUP_CHARS
    if not token.startswith(TOKEN_PREFIX) or len(token) < head + 2 or token[head] != "_":
        return None
    return token[len(TOKEN_PREFIX) : head], token[head + 1 :]


_DEVICES = cast(Table, DeviceRow.__table__)
_PLANS = cast(Table, PlanStateRow.__table__)
_DUES = cast(Table, MaintenanceDueRow.__table__)
_ORDERS = cast(Table, WorkOrderRow.__table__)
_ALARMS = cast(Table, AlarmRow.__table__)
_NOTICES = cast(Table, NotificationRow.__table__)
_AUDIT = cast(Table, AuditRow.__table__)
_CURSORS = cast(Table, CursorRow.__table__)
_TOKENS = cast(Table, ApiTokenRow.__table__)


def _untyped(table: Table) -> TableClause:
    """``table`` without column types: bulk writes hand it values already converted by the
    columns' own bind processors (once per batch where values repeat), which is most of the
    cost of a large batch, while the stored form stays the one SQLAlchemy writes."""
    return table_clause(table.name, *(column(col.name) for col in table.c))


_PLAN_ROWS = _untyped(_PLANS)
_PLAN_COLUMNS = ("plan_id", "device_id", "cycle", "state", "updated_at")
_PLAN_STATES_FROM_ARRAYS = text(
    """
    INSERT INTO plan_state (plan_id, device_id, cycle, state, updated_at)
    SELECT plan_id, device_id, cycle, CAST(state AS json), updated_at
    FROM unnest(
        CAST(:plan_id AS text[]), CAST(:device_id AS text[]), CAST(:cycle AS integer[]),
        CAST(:state AS text[]), CAST(:updated_at AS timestamptz[])
    ) AS batch (plan_id, device_id, cycle, state, updated_at)
    ON CONFLICT (plan_id) DO UPDATE SET device_id = excluded.device_id,
        cycle = excluded.cycle, state = excluded.state, updated_at = excluded.updated_at
    """
)
_AUDIT_ROWS = _untyped(_AUDIT)


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...]:
    """A record class's field names; looked up once per class, as bulk writes need them for
    every row."""
    names = _FIELDS.get(kind)
    if names is None:
        names = _FIELDS[kind] = tuple(field.name for field in dataclasses.fields(kind))
    return names


def _as_json(record: object) -> dict[str, Any]:
    """A record (one of ``core.db.models``) as a JSON document: its times become ISO 8601
    strings; its dict fields (plan state, counters) are JSON documents already."""
    document = {name: getattr(record, name) for name in _field_names(type(record))}
    for name, value in document.items():
        if isinstance(value, datetime):
            document[name] = value.isoformat()
    return document


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise InvalidRecord(f"{name}: {value.isoformat()} has no timezone; give an aware time")


def _one_of(name: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise InvalidRecord(f"{name}: {value!r} is not one of {', '.join(allowed)}")


def _text(name: str, value: str) -> None:
    if not value.strip():
        raise InvalidRecord(f"{name}: must not be empty")


def _window(due_from: datetime | None, due_to: datetime | None) -> None:
    _aware("due_from", due_from)
    _aware("due_to", due_to)
    if due_from is not None and due_to is not None and due_to < due_from:
        raise InvalidRecord(
            f"due_to: {due_to.isoformat()} is before due_from {due_from.isoformat()}"
        )


def _values(row: Row[Any]) -> dict[str, Any]:
    return dict(row._mapping)


def _device(row: Row[Any]) -> DeviceRecord:
    return DeviceRecord(**_values(row))


def _plan_state(row: Row[Any]) -> StoredPlanState:
    return StoredPlanState(**_values(row))


def _due(row: Row[Any]) -> MaintenanceDue:
    return MaintenanceDue(**_values(row))


def _work_order(row: Row[Any]) -> WorkOrder:
    return WorkOrder(**_values(row))


def _alarm(row: Row[Any]) -> Alarm:
    return Alarm(**_values(row))


def _notification(row: Row[Any]) -> Notification:
    return Notification(**_values(row))


def _audit_entry(row: Row[Any]) -> AuditEntry:
    return AuditEntry(**_values(row))


def _api_token(row: Row[Any]) -> ApiToken:
    return ApiToken(
        id=row.id,
        name=row.name,
        role=row.role,
        lookup=row.lookup,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


class RecordStore:
    """The records in one database (see the module's notes). Implements
    ``core.notices.NotificationLog``."""

    def __init__(self, engine: AsyncEngine, *, url: str, schema: str | None, clock: Clock) -> None:
        self._engine = engine
        self._where = describe(url, schema)
        self._clock = clock
        dialect = engine.dialect
        self._insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        self._bind_json = JSON().dialect_impl(dialect).bind_processor(dialect) or _same
        self._bind_time = UTCDateTime().bind_processor(dialect) or _same

    # --- lifecycle -----------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        schema: str | None = None,
        clock: Clock | None = None,
        config_file: Path | None = None,
    ) -> RecordStore:
        """Open the records at ``url`` after checking that the database is at the head;
        ``config_file`` (a Path) goes into the command a refusal names. Close with ``close``."""
        await require_current(url, config_file, schema=schema)
        engine = create_engine(url, schema=schema)
        return cls(engine, url=url, schema=schema, clock=clock or SystemClock())

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        schema: str | None = None,
        clock: Clock | None = None,
        config_file: Path | None = None,
    ) -> AsyncIterator[RecordStore]:
        """``async with RecordStore.open(url) as records:``; see ``connect``."""
        store = await cls.connect(url, schema=schema, clock=clock, config_file=config_file)
        try:
            yield store
        finally:
            await store.close()

    async def close(self) -> None:
        await self._engine.dispose()

    # --- plumbing ------------------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self, *, writes: bool) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.connect() as connection:
                if writes:
                    await connection.execution_options(**{WRITE: True})
                async with connection.begin():
                    yield connection
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"records database {self._where}: {exc}") from exc

    def _write(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return self._transaction(writes=True)

    def _read(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return self._transaction(writes=False)

    async def _audit(
        self,
        connection: AsyncConnection,
        entries: Sequence[tuple[str, str, str, str, object | None, object | None]],
    ) -> None:
        """Append (actor, entity, entity_id, action, before, after) rows; records as JSON."""
        if not entries:
            return
        at = self._bind_time(self._clock.now())
        json = self._bind_json
        await connection.execute(
            _AUDIT_ROWS.insert(),
            [
                {
                    "at": at,
                    "actor": actor,
                    "entity": entity,
                    "entity_id": entity_id,
                    "action": action,
                    "before": None if before is None else json(_as_json(before)),
                    "after": None if after is None else json(_as_json(after)),
                }
                for actor, entity, entity_id, action, before, after in entries
            ],
        )

    async def _page(
        self,
        table: Table,
        conditions: list[ColumnElement[bool]],
        after: int | None,
        limit: int,
        convert: Callable[[Row[Any]], _T],
    ) -> Page[_T]:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRecord(f"limit: {limit} is not between 1 and {MAX_PAGE}")
        if after is not None:
            conditions = [*conditions, table.c.id > after]
        query = select(table).where(*conditions).order_by(table.c.id).limit(limit + 1)
        async with self._read() as connection:
            rows = (await connection.execute(query)).all()
        items = [convert(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(items, next_after=rows[limit - 1].id if more else None)

    @staticmethod
    async def _one(connection: AsyncConnection, query: Any) -> Row[Any] | None:
        return (await connection.execute(query)).first()

    # --- devices -------------------------------------------------------------------------

    async def sync_devices(self, devices: Sequence[Device], *, actor: str = "config") -> None:
        """Make the registry match the site configuration: add new devices, update changed
        ones, retire those no longer configured (never delete) and reinstate returning ones."""
        ids = [device.id for device in devices]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise InvalidRecord(f"devices: id {', '.join(twice)} is given more than once")
        now = self._clock.now()
        async with self._write() as connection:
            rows = (await connection.execute(select(_DEVICES).with_for_update())).all()
            known = {row.id: _device(row) for row in rows}
            audit: list[tuple[str, str, str, str, object | None, object | None]] = []
            for device in devices:
                wanted: dict[str, Any] = {
                    "kind": device.kind,
                    "manufacturer": device.manufacturer,
                    "model": device.model,
                    "serial": device.serial,
                    "location": device.location,
                    "risk_class": device.risk_class,
                    "retired": False,
                }
                old = known.get(device.id)
                if old is None:
                    new = DeviceRecord(id=device.id, first_seen=now, **wanted)
                    await connection.execute(_DEVICES.insert(), [_as_row(new)])
                    audit.append((actor, "device", device.id, "added", None, new))
                    continue
                new = dataclasses.replace(old, **wanted)
                if new != old:
                    await connection.execute(
                        _DEVICES.update().where(_DEVICES.c.id == device.id).values(**wanted)
                    )
                    action = "reinstated" if old.retired else "updated"
                    audit.append((actor, "device", device.id, action, old, new))
            for device_id, old in known.items():
                if device_id not in set(ids) and not old.retired:
                    await connection.execute(
                        _DEVICES.update().where(_DEVICES.c.id == device_id).values(retired=True)
                    )
                    new = dataclasses.replace(old, retired=True)
                    audit.append((actor, "device", device_id, "retired", old, new))
            await self._audit(connection, audit)

    async def devices(self, *, include_retired: bool = True) -> list[DeviceRecord]:
        query = select(_DEVICES).order_by(_DEVICES.c.id)
        if not include_retired:
            query = query.where(_DEVICES.c.retired.is_(False))
        async with self._read() as connection:
            return [_device(row) for row in await connection.execute(query)]

    # --- plan state ----------------------------------------------------------------------

    async def plan_states(self) -> dict[str, StoredPlanState]:
        async with self._read() as connection:
            rows = await connection.execute(select(_PLANS))
            return {row.plan_id: _plan_state(row) for row in rows}

    async def save_plan_states(
        self, states: Sequence[StoredPlanState], *, actor: str = RULES
    ) -> None:
        """Insert or replace these plans' states in one transaction (the last of a plan wins).
        A new plan and a plan whose cycle moved are audited; routine state changes are not."""
        latest = {state.plan_id: state for state in states}
        if not latest:
            return
        times: dict[datetime, Any] = {}
        rows = []
        for state in latest.values():
            if state.updated_at not in times:
                _aware("updated_at", state.updated_at)
                times[state.updated_at] = self._bind_time(state.updated_at)
            rows.append(
                {
                    "plan_id": state.plan_id,
                    "device_id": state.device_id,
                    "cycle": state.cycle,
                    "state": self._bind_json(state.state),
                    "updated_at": times[state.updated_at],
                }
            )
        async with self._write() as connection:
            cycles = await connection.execute(select(_PLANS.c.plan_id, _PLANS.c.cycle))
            known: dict[str, int] = {row.plan_id: row.cycle for row in cycles}
            moved = [
                plan_id
                for plan_id, state in latest.items()
                if plan_id in known and known[plan_id] != state.cycle
            ]
            before: dict[str, StoredPlanState] = {}
            for start in range(0, len(moved), _CHUNK):
                chunk = moved[start : start + _CHUNK]
                found = await connection.execute(select(_PLANS).where(_PLANS.c.plan_id.in_(chunk)))
                before.update((row.plan_id, _plan_state(row)) for row in found)
            await self._upsert_plan_states(connection, rows)
            audit: list[tuple[str, str, str, str, object | None, object | None]] = []
            for plan_id, state in latest.items():
                if plan_id not in known:
                    audit.append((actor, "plan", plan_id, "created", None, state))
                elif plan_id in before:
                    audit.append((actor, "plan", plan_id, "cycle", before[plan_id], state))
            await self._audit(connection, audit)

    async def _upsert_plan_states(
        self, connection: AsyncConnection, rows: list[dict[str, Any]]
    ) -> None:
        """PostgreSQL takes the batch as one array per column in one statement, where row by
        row costs a server round trip each; SQLite runs in-process, so rows are cheap."""
        if connection.dialect.name == "postgresql":
            await connection.execute(
                _PLAN_STATES_FROM_ARRAYS,
                {name: [row[name] for row in rows] for name in _PLAN_COLUMNS},
            )
            return
        statement = self._insert(_PLAN_ROWS)
        statement = statement.on_conflict_do_update(
            index_elements=["plan_id"],
            set_={name: statement.excluded[name] for name in _PLAN_COLUMNS[1:]},
        )
        await connection.execute(statement, rows)

    # --- due occurrences -----------------------------------------------------------------

    async def open_due(
        self,
        plan_id: str,
        device_id: str,
        cycle: int,
        basis: str,
        detail: str,
        due_at: datetime | None,
        due_value: float | None,
        detected: datetime,
        *,
        actor: str = RULES,
    ) -> MaintenanceDue | None:
        """Record that a plan's ``cycle``-th occurrence is due; None when it already was, so
        re-evaluation and catch-up record it once."""
        _aware("due_at", due_at)
        _aware("detected", detected)
        statement = (
            self._insert(_DUES)
            .values(
                plan_id=plan_id,
                device_id=device_id,
                cycle=cycle,
                basis=basis,
                detail=detail,
                due_at=due_at,
                due_value=due_value,
                detected=detected,
                closed_at=None,
            )
            .on_conflict_do_nothing(index_elements=[_DUES.c.plan_id, _DUES.c.cycle])
            .returning(*_DUES.c)
        )
        async with self._write() as connection:
            row = await self._one(connection, statement)
            if row is None:
                return None
            due = _due(row)
            await self._audit(connection, [(actor, "plan", plan_id, "due", None, due)])
            return due

    async def maintenance_due(self, open_only: bool = True) -> list[MaintenanceDue]:
        query = select(_DUES).order_by(_DUES.c.detected, _DUES.c.id)
        if open_only:
            query = query.where(_DUES.c.closed_at.is_(None))
        async with self._read() as connection:
            return [_due(row) for row in await connection.execute(query)]

    async def close_due(
        self, plan_id: str, cycle: int, at: datetime, *, actor: str = RULES
    ) -> MaintenanceDue:
        """Close a due occurrence (its work is done); closing a closed one changes nothing."""
        _aware("at", at)
        async with self._write() as connection:
            due = await self._close_due(connection, plan_id, cycle, at, actor, missing_ok=False)
            assert due is not None
            return due

    async def _close_due(
        self,
        connection: AsyncConnection,
        plan_id: str,
        cycle: int,
        at: datetime,
        actor: str,
        *,
        missing_ok: bool,
    ) -> MaintenanceDue | None:
        where = (_DUES.c.plan_id == plan_id, _DUES.c.cycle == cycle)
        row = await self._one(connection, select(_DUES).where(*where).with_for_update())
        if row is None:
            if missing_ok:
                return None
            raise NotFound(f"plan {plan_id} has no due occurrence {cycle}")
        old = _due(row)
        if old.closed_at is not None:
            return old
        statement = update(_DUES).where(*where).values(closed_at=at).returning(*_DUES.c)
        new = _due((await connection.execute(statement)).one())
        await self._audit(connection, [(actor, "plan", plan_id, "due_closed", old, new)])
        return new

    # --- work orders ---------------------------------------------------------------------

    async def open_work_order(self, draft: WorkOrderDraft, actor: str) -> tuple[WorkOrder, bool]:
        """Open a work order, or return the one already open for the same plan occurrence
        (pm) or fault (corrective ``fault_key``); the flag says whether this call created it."""
        _check_draft(draft)
        now = self._clock.now()
        values = {
            **{field.name: getattr(draft, field.name) for field in dataclasses.fields(draft)},
            "state": "open",
            "problem_code": None,
            "cause_code": None,
            "remedy_code": None,
            "created_at": now,
            "updated_at": now,
            "completed_at": None,
            "counters": None,
        }
        statement = (
            self._insert(_ORDERS).values(**values).on_conflict_do_nothing().returning(*_ORDERS.c)
        )
        async with self._write() as connection:
            row = await self._one(connection, statement)
            if row is not None:
                order = _work_order(row)
                audit = (actor, "work_order", str(order.id), "opened", None, order)
                await self._audit(connection, [audit])
                return order, True
            same: list[ColumnElement[bool]]
            if draft.kind == "pm":
                same = [_ORDERS.c.plan_id == draft.plan_id, _ORDERS.c.cycle == draft.cycle]
            else:
                same = [_ORDERS.c.fault_key == draft.fault_key]
            existing = await self._one(connection, select(_ORDERS).where(*same))
            if existing is None:
                raise StoreError(f"work order {draft!r} was refused by the database")
            return _work_order(existing), False

    async def work_order(self, work_order_id: int) -> WorkOrder | None:
        async with self._read() as connection:
            row = await self._one(connection, select(_ORDERS).where(_ORDERS.c.id == work_order_id))
        return None if row is None else _work_order(row)

    async def work_orders(
        self,
        *,
        device_id: str | None = None,
        state: str | None = None,
        kind: str | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> Page[WorkOrder]:
        conditions: list[ColumnElement[bool]] = []
        if device_id is not None:
            conditions.append(_ORDERS.c.device_id == device_id)
        if state is not None:
            _one_of("state", state, TRANSITIONS)
            conditions.append(_ORDERS.c.state == state)
        if kind is not None:
            _one_of("kind", kind, WORK_ORDER_KINDS)
            conditions.append(_ORDERS.c.kind == kind)
        return await self._page(_ORDERS, conditions, after, limit, _work_order)

    async def finished_work_orders(self, ids: Iterable[int]) -> list[WorkOrder]:
        """Those of these work orders that are done or cancelled, in id order (unknown ids are
        left out): one query per few hundred ids, for a caller that keeps track of the orders
        it opened and must learn which were finished elsewhere."""
        wanted = sorted(set(ids))
        finished: list[WorkOrder] = []
        async with self._read() as connection:
            for start in range(0, len(wanted), _CHUNK):
                query = (
                    select(_ORDERS)
                    .where(
                        _ORDERS.c.id.in_(wanted[start : start + _CHUNK]),
                        _ORDERS.c.state.in_(("done", "cancelled")),
                    )
                    .order_by(_ORDERS.c.id)
                )
                finished += [_work_order(row) for row in await connection.execute(query)]
        return finished

    async def _order_for_update(self, connection: AsyncConnection, work_order_id: int) -> WorkOrder:
        query = select(_ORDERS).where(_ORDERS.c.id == work_order_id).with_for_update()
        row = await self._one(connection, query)
        if row is None:
            raise NotFound(f"no work order {work_order_id}")
        return _work_order(row)

    async def _change_order(
        self,
        connection: AsyncConnection,
        old: WorkOrder,
        changes: dict[str, Any],
        actor: str,
        action: str,
    ) -> WorkOrder:
        changes["updated_at"] = self._clock.now()
        statement = (
            update(_ORDERS).where(_ORDERS.c.id == old.id).values(**changes).returning(*_ORDERS.c)
        )
        new = _work_order((await connection.execute(statement)).one())
        await self._audit(connection, [(actor, "work_order", str(old.id), action, old, new)])
        return new

    async def update_work_order(
        self,
        work_order_id: int,
        *,
        actor: str,
        state: str | None = None,
        assignee: str | Unset | None = UNSET,
        priority: str | Unset = UNSET,
        notes: str | Unset = UNSET,
        due_from: datetime | Unset | None = UNSET,
        due_to: datetime | Unset | None = UNSET,
        problem_code: str | Unset | None = UNSET,
        cause_code: str | Unset | None = UNSET,
        remedy_code: str | Unset | None = UNSET,
    ) -> WorkOrder:
        """Change a work order's state (along ``TRANSITIONS``) and fields; a field left UNSET
        stays as it is. A done or cancelled order cannot change any more."""
        if state is not None:
            _one_of("state", state, TRANSITIONS)
        if not isinstance(priority, Unset):
            _one_of("priority", priority, PRIORITIES)
        fields: dict[str, object] = {
            "assignee": assignee,
            "priority": priority,
            "notes": notes,
            "due_from": due_from,
            "due_to": due_to,
            "problem_code": problem_code,
            "cause_code": cause_code,
            "remedy_code": remedy_code,
        }
        async with self._write() as connection:
            old = await self._order_for_update(connection, work_order_id)
            changes: dict[str, Any] = {
                name: value
                for name, value in fields.items()
                if not isinstance(value, Unset) and value != getattr(old, name)
            }
            if state is not None and state != old.state:
                allowed = list(TRANSITIONS[old.state])
                if state not in allowed:
                    raise InvalidTransition(old.id, old.state, state, allowed)
                if state == "done":
                    raise InvalidRecord(
                        f"work order {old.id}: finish it with complete_work_order, which records "
                        "the completion time and the counters at service"
                    )
                changes["state"] = state
            if not changes:
                return old
            if not TRANSITIONS[old.state]:
                raise InvalidRecord(
                    f"work order {old.id} is {old.state}: a finished order cannot be changed"
                )
            window = {"due_from": old.due_from, "due_to": old.due_to, **changes}
            _window(window["due_from"], window["due_to"])
            action = str(changes.get("state", "updated"))
            return await self._change_order(connection, old, changes, actor, action)

    async def complete_work_order(
        self,
        work_order_id: int,
        *,
        actor: str,
        completed_at: datetime,
        counters: Mapping[str, float],
        problem_code: str | None = None,
        cause_code: str | None = None,
        remedy_code: str | None = None,
        notes: str | None = None,
    ) -> WorkOrder:
        """Finish a work order (from in_progress or on_hold), recording when and each
        counter's value at service (metric -> value). A PM order's due occurrence closes in
        the same transaction. Codes and notes given replace the order's."""
        _aware("completed_at", completed_at)
        for metric, value in counters.items():
            if not metric or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidRecord(f"counters: {metric!r}: {value!r} is not a finite number")
        changes: dict[str, Any] = {
            "state": "done",
            "completed_at": completed_at,
            "counters": {metric: float(value) for metric, value in counters.items()},
        }
        given = {
            "problem_code": problem_code,
            "cause_code": cause_code,
            "remedy_code": remedy_code,
            "notes": notes,
        }
        changes.update({name: value for name, value in given.items() if value is not None})
        async with self._write() as connection:
            old = await self._order_for_update(connection, work_order_id)
            allowed = list(TRANSITIONS[old.state])
            if "done" not in allowed:
                raise InvalidTransition(old.id, old.state, "done", allowed)
            new = await self._change_order(connection, old, changes, actor, "done")
            if new.kind == "pm" and new.plan_id is not None and new.cycle is not None:
                await self._close_due(
                    connection, new.plan_id, new.cycle, completed_at, actor, missing_ok=True
                )
            return new

    # --- alarms --------------------------------------------------------------------------

    async def raise_alarm(
        self,
        device_id: str,
        type: str,
        severity: str,
        message: str,
        at: datetime,
        *,
        actor: str = RULES,
    ) -> tuple[Alarm, bool]:
        """Raise an alarm, or count a repeat on the one active for (device, type): its count
        and last-seen time go up, its message follows, its severity never goes down. The flag
        says whether this call raised a new one."""
        _one_of("severity", severity, ALARM_SEVERITIES)
        _aware("at", at)
        active = (_ALARMS.c.device_id == device_id, _ALARMS.c.type == type, _ALARMS.c.active)
        insert = (
            self._insert(_ALARMS)
            .values(
                device_id=device_id,
                type=type,
                severity=severity,
                message=message,
                active=True,
                acknowledged=False,
                acknowledged_by=None,
                acknowledged_at=None,
                count=1,
                first_seen=at,
                last_seen=at,
                cleared_at=None,
                escalated_at=None,
            )
            .on_conflict_do_nothing(
                index_elements=[_ALARMS.c.device_id, _ALARMS.c.type],
                index_where=text(ACTIVE_ALARM),
            )
            .returning(*_ALARMS.c)
        )
        async with self._write() as connection:
            # PostgreSQL: an insert that lost a race to a concurrent one finds its row next time
            for _ in range(3):
                row = await self._one(connection, select(_ALARMS).where(*active).with_for_update())
                if row is not None:
                    old = _alarm(row)
                    changes = {
                        "count": old.count + 1,
                        "last_seen": max(old.last_seen, at),
                        "message": message,
                        "severity": max(old.severity, severity, key=_SEVERITY_RANK.__getitem__),
                    }
                    new = await self._change_alarm(connection, old, changes, actor, "repeated")
                    return new, False
                row = await self._one(connection, insert)
                if row is not None:
                    alarm = _alarm(row)
                    audit = (actor, "alarm", str(alarm.id), "raised", None, alarm)
                    await self._audit(connection, [audit])
                    return alarm, True
        raise StoreError(f"alarm {type} on {device_id} could not be raised nor found")

    async def _change_alarm(
        self,
        connection: AsyncConnection,
        old: Alarm,
        changes: dict[str, Any],
        actor: str,
        action: str,
    ) -> Alarm:
        statement = (
            update(_ALARMS).where(_ALARMS.c.id == old.id).values(**changes).returning(*_ALARMS.c)
        )
        new = _alarm((await connection.execute(statement)).one())
        await self._audit(connection, [(actor, "alarm", str(old.id), action, old, new)])
        return new

    async def _alarm_for_update(self, connection: AsyncConnection, alarm_id: int) -> Alarm:
        query = select(_ALARMS).where(_ALARMS.c.id == alarm_id).with_for_update()
        row = await self._one(connection, query)
        if row is None:
            raise NotFound(f"no alarm {alarm_id}")
        return _alarm(row)

    async def clear_alarm(
        self, device_id: str, type: str, at: datetime, *, actor: str = RULES
    ) -> Alarm | None:
        """The condition cleared: clear the active alarm of (device, type); None if none."""
        _aware("at", at)
        active = (_ALARMS.c.device_id == device_id, _ALARMS.c.type == type, _ALARMS.c.active)
        async with self._write() as connection:
            row = await self._one(connection, select(_ALARMS).where(*active).with_for_update())
            if row is None:
                return None
            changes = {"active": False, "cleared_at": at}
            return await self._change_alarm(connection, _alarm(row), changes, actor, "cleared")

    async def clear_alarm_by_id(self, alarm_id: int, actor: str, at: datetime) -> Alarm:
        """Clear an alarm by hand; clearing a cleared one changes nothing."""
        _aware("at", at)
        async with self._write() as connection:
            old = await self._alarm_for_update(connection, alarm_id)
            if not old.active:
                return old
            changes = {"active": False, "cleared_at": at}
            return await self._change_alarm(connection, old, changes, actor, "cleared")

    async def acknowledge_alarm(self, alarm_id: int, actor: str, at: datetime) -> Alarm:
        """``actor`` has seen the alarm; acknowledging twice keeps the first."""
        _aware("at", at)
        async with self._write() as connection:
            old = await self._alarm_for_update(connection, alarm_id)
            if old.acknowledged:
                return old
            changes = {"acknowledged": True, "acknowledged_by": actor, "acknowledged_at": at}
            return await self._change_alarm(connection, old, changes, actor, "acknowledged")

    async def mark_escalated(self, alarm_id: int, at: datetime, *, actor: str = RULES) -> Alarm:
        """The alarm was escalated at ``at``; marking twice keeps the first time."""
        _aware("at", at)
        async with self._write() as connection:
            old = await self._alarm_for_update(connection, alarm_id)
            if old.escalated_at is not None:
                return old
            changes = {"escalated_at": at}
            return await self._change_alarm(connection, old, changes, actor, "escalated")

    async def alarm(self, alarm_id: int) -> Alarm | None:
        async with self._read() as connection:
            row = await self._one(connection, select(_ALARMS).where(_ALARMS.c.id == alarm_id))
        return None if row is None else _alarm(row)

    async def alarms(
        self,
        *,
        active: bool | None = None,
        device_id: str | None = None,
        severity: str | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> Page[Alarm]:
        conditions: list[ColumnElement[bool]] = []
        if active is not None:
            conditions.append(_ALARMS.c.active.is_(active))
        if device_id is not None:
            conditions.append(_ALARMS.c.device_id == device_id)
        if severity is not None:
            _one_of("severity", severity, ALARM_SEVERITIES)
            conditions.append(_ALARMS.c.severity == severity)
        return await self._page(_ALARMS, conditions, after, limit, _alarm)

    async def unacknowledged_critical(self, older_than: datetime) -> list[Alarm]:
        """Active critical alarms raised at or before ``older_than``, neither acknowledged nor
        escalated yet: the ones to escalate now."""
        _aware("older_than", older_than)
        query = (
            select(_ALARMS)
            .where(
                _ALARMS.c.active,
                _ALARMS.c.acknowledged.is_(False),
                _ALARMS.c.severity == "critical",
                _ALARMS.c.escalated_at.is_(None),
                _ALARMS.c.first_seen <= older_than,
            )
            .order_by(_ALARMS.c.id)
        )
        async with self._read() as connection:
            return [_alarm(row) for row in await connection.execute(query)]

    # --- notifications (core.notices.NotificationLog) -------------------------------------

    async def claim(self, notice: NoticeRecord) -> bool:
        _aware("created_at", notice.created_at)
        statement = (
            self._insert(_NOTICES)
            .values(
                **{field: getattr(notice, field) for field in NoticeRecord.__dataclass_fields__},
                status="pending",
                attempts=0,
                last_error=None,
                sent_at=None,
            )
            .on_conflict_do_nothing(
                index_elements=[_NOTICES.c.event_key, _NOTICES.c.recipient, _NOTICES.c.channel]
            )
            .returning(_NOTICES.c.id)
        )
        async with self._write() as connection:
            return await self._one(connection, statement) is not None

    async def _mark(
        self, event_key: str, recipient: str, channel: str, changes: dict[str, Any]
    ) -> None:
        """Apply a delivery outcome, unless the notice was sent already (a late failure
        report never undoes a delivery)."""
        key = (
            _NOTICES.c.event_key == event_key,
            _NOTICES.c.recipient == recipient,
            _NOTICES.c.channel == channel,
        )
        statement = (
            update(_NOTICES)
            .where(*key, _NOTICES.c.status != "sent")
            .values(attempts=_NOTICES.c.attempts + 1, **changes)
        )
        async with self._write() as connection:
            if (await connection.execute(statement)).rowcount == 0:
                found = await self._one(connection, select(_NOTICES.c.id).where(*key))
                if found is None:
                    raise NotFound(
                        f"no notice {event_key!r} for {recipient!r} on {channel!r} was claimed"
                    )

    async def mark_sent(self, event_key: str, recipient: str, channel: str, at: datetime) -> None:
        _aware("at", at)
        changes = {"status": "sent", "sent_at": at, "last_error": None}
        await self._mark(event_key, recipient, channel, changes)

    async def mark_failed(
        self, event_key: str, recipient: str, channel: str, at: datetime, error: str
    ) -> None:
        _aware("at", at)
        await self._mark(event_key, recipient, channel, {"status": "failed", "last_error": error})

    async def unsent(self, limit: int = 100) -> list[NoticeRecord]:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRecord(f"limit: {limit} is not between 1 and {MAX_PAGE}")
        columns = [_NOTICES.c[field] for field in NoticeRecord.__dataclass_fields__]
        query = (
            select(*columns)
            .where(_NOTICES.c.status.in_(("pending", "failed")))
            .order_by(_NOTICES.c.created_at, _NOTICES.c.id)
            .limit(limit)
        )
        async with self._read() as connection:
            return [NoticeRecord(**_values(row)) for row in await connection.execute(query)]

    async def notifications(
        self, *, status: str | None = None, after: int | None = None, limit: int = 50
    ) -> Page[Notification]:
        conditions: list[ColumnElement[bool]] = []
        if status is not None:
            conditions.append(_NOTICES.c.status == status)
        return await self._page(_NOTICES, conditions, after, limit, _notification)

    # --- audit log -----------------------------------------------------------------------

    async def audit_log(
        self,
        *,
        entity: str | None = None,
        entity_id: str | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> Page[AuditEntry]:
        conditions: list[ColumnElement[bool]] = []
        if entity is not None:
            conditions.append(_AUDIT.c.entity == entity)
        if entity_id is not None:
            conditions.append(_AUDIT.c.entity_id == entity_id)
        return await self._page(_AUDIT, conditions, after, limit, _audit_entry)

    # --- cursors -------------------------------------------------------------------------

    async def cursor(self, name: str) -> int:
        """How far ``name`` has read; 0 before it first moved."""
        async with self._read() as connection:
            position = await connection.scalar(
                select(_CURSORS.c.position).where(_CURSORS.c.name == name)
            )
        return 0 if position is None else int(position)

    async def set_cursor(self, name: str, position: int) -> None:
        statement = self._insert(_CURSORS).values(name=name, position=position)
        statement = statement.on_conflict_do_update(
            index_elements=[_CURSORS.c.name], set_={"position": statement.excluded.position}
        )
        async with self._write() as connection:
            await connection.execute(statement)

    # --- API tokens ----------------------------------------------------------------------

    async def create_token(self, name: str, role: str, *, actor: str = "cli") -> tuple[int, str]:
        """Make a token for ``name`` in ``role``: its id and the token itself, which is shown
        here once and stored only as a hash. A name is taken once, also after revocation, so
        that the audit log's names stay unambiguous."""
        _text("name", name)
        _one_of("role", role, API_ROLES)
        lookup = secrets.token_hex(_LOOKUP_CHARS // 2)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        async with self._write() as connection:
            taken = await self._one(connection, select(_TOKENS.c.id).where(_TOKENS.c.name == name))
            if taken is not None:
                raise InvalidRecord(f"name: a token named {name!r} exists already (id {taken.id})")
            statement = (
                _TOKENS.insert()
                .values(
                    name=name,
                    role=role,
                    lookup=lookup,
                    secret_hash=_secret_hash(secret),
                    created_at=self._clock.now(),
                    revoked_at=None,
                )
                .returning(*_TOKENS.c)
            )
            token = _api_token((await connection.execute(statement)).one())
            await self._audit(
                connection, [(actor, "api_token", str(token.id), "created", None, token)]
            )
        return token.id, f"{TOKEN_PREFIX}{lookup}_{secret}"

    async def verify_token(self, token: str) -> Principal | None:
        """Who holds ``token``; None for a malformed, unknown or revoked one."""
        parts = _split_token(token)
        if parts is None:
            return None
        lookup, secret = parts
        query = select(_TOKENS).where(_TOKENS.c.lookup == lookup)
        async with self._read() as connection:
            row = await self._one(connection, query)
        # the lookup is public; the secret is compared in constant time, so that the answer's
        # timing tells nothing about how much of a guess was right
        if row is None or not hmac.compare_digest(row.secret_hash, _secret_hash(secret)):
            return None
        if row.revoked_at is not None:
            return None
        return Principal(row.name, row.role)

    async def revoke_token(
        self, *, token_id: int | None = None, name: str | None = None, actor: str = "cli"
    ) -> ApiToken:
        """Revoke the token with this id or this name; revoking twice keeps the first time."""
        if (token_id is None) == (name is None):
            raise InvalidRecord("revoke a token by its id or by its name, one of the two")
        where = _TOKENS.c.id == token_id if token_id is not None else _TOKENS.c.name == name
        async with self._write() as connection:
            row = await self._one(connection, select(_TOKENS).where(where).with_for_update())
            if row is None:
                raise NotFound(
                    f"no token {token_id}" if token_id is not None else f"no token named {name!r}"
                )
            old = _api_token(row)
            if old.revoked_at is not None:
                return old
            statement = (
                update(_TOKENS)
                .where(_TOKENS.c.id == old.id)
                .values(revoked_at=self._clock.now())
                .returning(*_TOKENS.c)
            )
            new = _api_token((await connection.execute(statement)).one())
            await self._audit(connection, [(actor, "api_token", str(old.id), "revoked", old, new)])
            return new

    async def tokens(self) -> list[ApiToken]:
        """Every token ever made, revoked ones included, in id order."""
        async with self._read() as connection:
            rows = await connection.execute(select(_TOKENS).order_by(_TOKENS.c.id))
            return [_api_token(row) for row in rows]


def _same(value: Any) -> Any:
    return value


def _as_row(record: object) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _field_names(type(record))}


def _check_draft(draft: WorkOrderDraft) -> None:
    _one_of("kind", draft.kind, WORK_ORDER_KINDS)
    _one_of("priority", draft.priority, PRIORITIES)
    _text("device_id", draft.device_id)
    _text("title", draft.title)
    if draft.kind == "pm":
        if draft.plan_id is None or draft.cycle is None:
            raise InvalidRecord("a pm work order names its plan occurrence: plan_id and cycle")
        if draft.fault_key is not None:
            raise InvalidRecord("fault_key: a pm work order is opened by a plan, not a fault")
    elif draft.cycle is not None:
        raise InvalidRecord("cycle: only a pm work order belongs to a plan occurrence")
    _window(draft.due_from, draft.due_to)
