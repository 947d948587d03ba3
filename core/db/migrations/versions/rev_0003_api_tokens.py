"""API tokens: who may call the API, in which role.

One new table, ``api_tokens``; nothing else changes. A token is ``ew_<lookup>_<secret>``: the
lookup finds the row, the secret is checked against ``secret_hash`` (see
``RecordStore.create_token``). The downgrade drops the table, and with it every token.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db.types import UTCDateTime

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("role", sa.String, nullable=False),
        sa.Column("lookup", sa.String, nullable=False),
        sa.Column("secret_hash", sa.String, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("lookup"),
        sa.CheckConstraint(
            "role IN ('technician', 'manager', 'integration', 'admin')", name="role"
        ),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
