"""github: webhook deliveries, app installations, and what triggers and runs need of them

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=60), nullable=False),
        sa.Column("action", sa.String(length=60), nullable=True),
        sa.Column("repository", sa.String(length=200), nullable=True),
        sa.Column("installation_id", sa.BigInteger(), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_received_at", sa.DateTime(), nullable=False),
        sa.Column("processed_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
    )
    op.create_index(
        op.f("ix_deliveries_processed_at"), "deliveries", ["processed_at"], unique=False
    )
    op.create_table(
        "installations",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("account_login", sa.String(length=200), nullable=False),
        sa.Column("repository_selection", sa.String(length=20), nullable=False),
        sa.Column("suspended_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installations")),
    )
    op.create_table(
        "installation_repositories",
        sa.Column("installation_id", sa.BigInteger(), nullable=False),
        sa.Column("repository", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["installation_id"],
            ["installations.id"],
            name=op.f("fk_installation_repositories_installation_id_installations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "installation_id", "repository", name=op.f("pk_installation_repositories")
        ),
    )
    op.create_index(
        op.f("ix_installation_repositories_repository"),
        "installation_repositories",
        ["repository"],
        unique=False,
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.String(length=60), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_counters")),
    )
    with op.batch_alter_table("routines", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("pull_requests", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column("comment", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("triggers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("repository", sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f("ix_triggers_repository"), ["repository"], unique=False)
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("context", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("concurrency_key", sa.String(length=200), nullable=True))
    with op.batch_alter_table("fires", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery_id", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_fires_delivery_id_trigger_id"), ["delivery_id", "trigger_id"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_fires_delivery_id_deliveries"),
            "deliveries",
            ["delivery_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("fires", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_fires_delivery_id_deliveries"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("uq_fires_delivery_id_trigger_id"), type_="unique")
        batch_op.drop_column("delivery_id")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("concurrency_key")
        batch_op.drop_column("context")
    with op.batch_alter_table("triggers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_triggers_repository"))
        batch_op.drop_column("repository")
    with op.batch_alter_table("routines", schema=None) as batch_op:
        batch_op.drop_column("comment")
        batch_op.drop_column("pull_requests")
    op.drop_table("counters")
    op.drop_index(
        op.f("ix_installation_repositories_repository"), table_name="installation_repositories"
    )
    op.drop_table("installation_repositories")
    op.drop_table("installations")
    op.drop_index(op.f("ix_deliveries_processed_at"), table_name="deliveries")
    op.drop_table("deliveries")
