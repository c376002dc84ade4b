"""org_slots: the org guard's holders, written before each answer and read back by a guard
started afresh (so terminating the guard never lifts a limit).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "org_slots" in set(sa.inspect(op.get_bind()).get_table_names()):
        return  # made earlier by Store.create_schema: adopted as is
    op.create_table(
        "org_slots",
        sa.Column("org_id", sa.String(63), primary_key=True),
        sa.Column("connection_id", sa.String(64), primary_key=True),
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("org_slots")
