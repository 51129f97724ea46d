"""accounts: plans and limits, and idempotency keys for fires

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("plan", sa.String(length=40), nullable=False),
        sa.Column("extra_usage", sa.Boolean(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("name", name=op.f("uq_accounts_name")),
    )
    # A fresh install (and every routine there already is) belongs to `default`.
    accounts = sa.table(
        "accounts",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("plan", sa.String),
        sa.column("extra_usage", sa.Boolean),
        sa.column("created_at", sa.DateTime),
    )
    op.bulk_insert(
        accounts,
        [
            {
                "id": "acct_default",
                "name": "default",
                "plan": "unlimited",
                "extra_usage": False,
                "created_at": datetime.now(UTC).replace(tzinfo=None),
            }
        ],
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("trigger_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_idempotency_keys_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["trigger_id"],
            ["triggers.id"],
            name=op.f("fk_idempotency_keys_trigger_id_triggers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("trigger_id", "key", name=op.f("uq_idempotency_keys_trigger_id_key")),
    )
    with op.batch_alter_table("routines", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "account_id", sa.String(length=40), server_default="acct_default", nullable=False
            )
        )
        batch_op.create_index(batch_op.f("ix_routines_account_id"), ["account_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_routines_account_id_accounts"), "accounts", ["account_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("routines", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_routines_account_id_accounts"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_routines_account_id"))
        batch_op.drop_column("account_id")

    op.drop_table("idempotency_keys")
    op.drop_table("accounts")
