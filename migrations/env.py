"""Alembic environment: migrations run on the connection ``migrations.upgrade`` passes
(``config.attributes["connection"]``), or on ``sqlalchemy.url`` for plain ``alembic``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from activities.store import metadata
from migrations import ADVISORY_LOCK_KEY


def run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        compare_type=True,
        render_as_batch=True,  # SQLite cannot ALTER most things: batch mode copies tables
    )
    with context.begin_transaction():
        if context.get_context().dialect.name == "postgresql":
            context.execute(text(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})"))
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url, or use `privnet db upgrade`")
    with create_engine(url).begin() as conn:
        run(conn)
