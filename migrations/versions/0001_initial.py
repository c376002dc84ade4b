"""The initial schema: connections, connection_events, org_limits (as activities/store.py
defined them when migrations began). Creates only the tables that are missing, so a
database made earlier by ``Store.create_schema`` is adopted as is.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite only makes INTEGER PRIMARY KEY an autoincrementing rowid alias.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "connections" not in existing:
        op.create_table(
            "connections",
            sa.Column("org_id", sa.String(63), primary_key=True),
            sa.Column("connection_id", sa.String(64), primary_key=True),
            sa.Column("status", sa.String(32), nullable=False),
            sa.Column("reason", sa.String(64), nullable=True),
            sa.Column("message", sa.Text, nullable=False),
            sa.Column("endpoint_service_name", sa.String(255), nullable=False),
            sa.Column("region", sa.String(32), nullable=False),
            sa.Column("service_region", sa.String(32), nullable=False),
            sa.Column("display_name", sa.Text, nullable=True),
            sa.Column("workflow_id", sa.String(255), nullable=False),
            sa.Column("vpc_endpoint_id", sa.String(64), nullable=True),
            sa.Column("ips", sa.JSON, nullable=False),
            sa.Column("dns_names", sa.JSON, nullable=False),
            sa.Column("seq", sa.BigInteger, nullable=False),
            sa.Column("created_at", _TS, nullable=False),
            sa.Column("updated_at", _TS, nullable=False),
        )
        op.create_index("ix_connections_created_at", "connections", ["created_at"])
        op.create_index("ix_connections_org_created_at", "connections", ["org_id", "created_at"])
        op.create_index("ix_connections_status", "connections", ["status"])
    if "connection_events" not in existing:
        op.create_table(
            "connection_events",
            sa.Column("id", _ID, primary_key=True, autoincrement=True),
            sa.Column("org_id", sa.String(63), nullable=False),
            sa.Column("connection_id", sa.String(64), nullable=False),
            sa.Column("seq", sa.BigInteger, nullable=False),
            sa.Column("at", _TS, nullable=False),
            sa.Column("status", sa.String(32), nullable=False),
            sa.Column("detail", sa.Text, nullable=False),
            sa.UniqueConstraint("org_id", "connection_id", "seq", name="uq_connection_events_seq"),
        )
    if "org_limits" not in existing:
        op.create_table(
            "org_limits",
            sa.Column("org_id", sa.String(63), primary_key=True),
            sa.Column("connection_limit", sa.Integer, nullable=False),
            sa.Column("updated_at", _TS, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("org_limits")
    op.drop_table("connection_events")
    op.drop_index("ix_connections_status", table_name="connections")
    op.drop_index("ix_connections_org_created_at", table_name="connections")
    op.drop_index("ix_connections_created_at", table_name="connections")
    op.drop_table("connections")
