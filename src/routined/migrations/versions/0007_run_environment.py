"""run environment: a routine's environment, limits, agent and connectors; push rules per
repository; a run's results; encrypted secrets

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ROUTINE_SETTINGS = ("environment", "limits", "agent", "connectors")
_PUSH_RULES = ("allow_unrestricted_push", "allow_force_push", "allow_default_branch_push")
_RESULTS = ("diff_stat", "usage")


def upgrade() -> None:
    with op.batch_alter_table("routines", schema=None) as batch_op:
        for name in _ROUTINE_SETTINGS:
            batch_op.add_column(sa.Column(name, sa.JSON(), server_default="{}", nullable=False))
    # Before network levels every run reached the model API only; routines stored
    # then keep that until their file is applied again (which `apply` reports).
    op.execute(sa.text("""UPDATE routines SET environment = '{"network": "none"}'"""))
    with op.batch_alter_table("repositories", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "branch_prefix", sa.String(length=100), server_default="claude/", nullable=False
            )
        )
        for name in _PUSH_RULES:
            batch_op.add_column(
                sa.Column(name, sa.Boolean(), server_default=sa.false(), nullable=False)
            )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("summary", sa.Text(), nullable=True))
        for name in _RESULTS:
            batch_op.add_column(sa.Column(name, sa.JSON(), nullable=True))
    op.create_table(
        "secrets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_secrets_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets")),
        sa.UniqueConstraint("account_id", "name", name=op.f("uq_secrets_account_id_name")),
    )


def downgrade() -> None:
    op.drop_table("secrets")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        for name in ("summary", *_RESULTS):
            batch_op.drop_column(name)
    with op.batch_alter_table("repositories", schema=None) as batch_op:
        for name in ("branch_prefix", *_PUSH_RULES):
            batch_op.drop_column(name)
    with op.batch_alter_table("routines", schema=None) as batch_op:
        for name in _ROUTINE_SETTINGS:
            batch_op.drop_column(name)
