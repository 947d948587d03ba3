"""The record tables as the SQLite store kept them: plan_state, maintenance_due, alarms, notices,
cursors.

Column for column what ``core.store.sqlite`` created next to the readings (times as integer
milliseconds since the epoch, flags as integers), so that a store file written before the
records moved to SQLAlchemy *is* a database at this revision: ``core.db.migrate`` recognises
those tables without a revision stamp, stamps them 0001 and upgrades them, data included.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# The SQLite store's partial index: one active alarm per (device, type).
ACTIVE = sa.text("active = 1")


def upgrade() -> None:
    op.create_table(
        "plan_state",
        sa.Column("plan_id", sa.String, primary_key=True),
        sa.Column("device_id", sa.String, nullable=False),
        sa.Column("started_ms", sa.BigInteger, nullable=False),
        sa.Column("cycle", sa.Integer, nullable=False),
        sa.Column("usage", sa.Float, nullable=False),
        sa.Column("first_value", sa.Float),
        sa.Column("last_raw", sa.Float),
        sa.Column("last_ts_ms", sa.BigInteger),
        sa.Column("last_completed_ms", sa.BigInteger),
    )
    op.create_table(
        "maintenance_due",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("plan_id", sa.String, nullable=False),
        sa.Column("device_id", sa.String, nullable=False),
        sa.Column("cycle", sa.Integer, nullable=False),
        sa.Column("basis", sa.String, nullable=False),
        sa.Column("detail", sa.String, nullable=False),
        sa.Column("due_at_ms", sa.BigInteger),
        sa.Column("due_value", sa.Float),
        sa.Column("detected_ms", sa.BigInteger, nullable=False),
        sa.Column("done", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint("plan_id", "cycle"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "alarms",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_id", sa.String, nullable=False),
        sa.Column("type", sa.String, nullable=False),
        sa.Column("severity", sa.String, nullable=False),
        sa.Column("message", sa.String, nullable=False),
        sa.Column("active", sa.Integer, nullable=False),
        sa.Column("acknowledged", sa.Integer, nullable=False, server_default="0"),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("first_seen_ms", sa.BigInteger, nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "alarms_one_active",
        "alarms",
        ["device_id", "type"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )
    op.create_table(
        "notices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("device_id", sa.String, nullable=False),
        sa.Column("event_key", sa.String, nullable=False, unique=True),
        sa.Column("subject", sa.String, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "cursors",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cursors")
    op.drop_table("notices")
    op.drop_index("alarms_one_active", table_name="alarms")
    op.drop_table("alarms")
    op.drop_table("maintenance_due")
    op.drop_table("plan_state")
