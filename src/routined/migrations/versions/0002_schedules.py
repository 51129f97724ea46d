"""schedules: pause, catch-up and overlap policies, fire decisions, run cancellation

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fires",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("routine_id", sa.String(length=40), nullable=False),
        sa.Column("trigger_id", sa.String(length=40), nullable=True),
        sa.Column("trigger_type", sa.String(length=20), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["routine_id"],
            ["routines.id"],
            name=op.f("fk_fires_routine_id_routines"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_fires_run_id_runs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["trigger_id"],
            ["triggers.id"],
            name=op.f("fk_fires_trigger_id_triggers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fires")),
        sa.UniqueConstraint(
            "trigger_id", "scheduled_at", name=op.f("uq_fires_trigger_id_scheduled_at")
        ),
    )
    with op.batch_alter_table("fires", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_fires_routine_id_decided_at"), ["routine_id", "decided_at"], unique=False
        )

    with op.batch_alter_table("routines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("paused_at", sa.DateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("catch_up", sa.String(length=10), server_default="latest", nullable=False)
        )
        batch_op.add_column(
            sa.Column("catch_up_window", sa.Integer(), server_default="604800", nullable=False)
        )
        batch_op.add_column(
            sa.Column("overlap", sa.String(length=20), server_default="skip", nullable=False)
        )
        batch_op.add_column(sa.Column("stagger", sa.Integer(), server_default="0", nullable=False))

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("serial", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("cancel_requested_at", sa.DateTime(), nullable=True))

    with op.batch_alter_table("triggers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("due_at", sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f("ix_triggers_due_at"), ["due_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("triggers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_triggers_due_at"))
        batch_op.drop_column("due_at")
        batch_op.drop_column("next_at")

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("cancel_requested_at")
        batch_op.drop_column("serial")

    with op.batch_alter_table("routines", schema=None) as batch_op:
        batch_op.drop_column("stagger")
        batch_op.drop_column("overlap")
        batch_op.drop_column("catch_up_window")
        batch_op.drop_column("catch_up")
        batch_op.drop_column("paused_at")

    with op.batch_alter_table("fires", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fires_routine_id_decided_at"))

    op.drop_table("fires")
