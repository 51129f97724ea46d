"""public only: whether a routine was applied with an account's key, whose runs reach
public addresses only

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Who applied a routine stored before was never recorded: such routines keep
    # the reach they had (false) until their file is applied again.
    with op.batch_alter_table("routines", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("public_only", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("routines", schema=None) as batch_op:
        batch_op.drop_column("public_only")
