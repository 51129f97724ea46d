"""undecided deliveries: a partial index in the order they came

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_UNDECIDED = sa.text("processed_at IS NULL")


def upgrade() -> None:
    op.drop_index(op.f("ix_deliveries_processed_at"), table_name="deliveries")
    op.create_index(
        "ix_deliveries_undecided",
        "deliveries",
        ["received_at", "id"],
        unique=False,
        sqlite_where=_UNDECIDED,
        postgresql_where=_UNDECIDED,
    )


def downgrade() -> None:
    op.drop_index(
        "ix_deliveries_undecided",
        table_name="deliveries",
        sqlite_where=_UNDECIDED,
        postgresql_where=_UNDECIDED,
    )
    op.create_index(
        op.f("ix_deliveries_processed_at"), "deliveries", ["processed_at"], unique=False
    )
