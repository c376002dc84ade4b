"""Versioned store schema (Alembic). One migration per schema change in ``versions/``.

``upgrade(store)`` brings a store's database to head (``privnet db upgrade``; also at worker
and API start when ``PRIVNET_DB_AUTO_MIGRATE`` is on, default on for SQLite only).
``prepare_store(settings, store)`` is what processes call at start: migrate when
auto-migrate is on, else refuse to run on a database older than the code, naming the fix.

Concurrent upgrades (processes) are safe: on SQLite the migration runs inside one ``BEGIN IMMEDIATE``
transaction (the store's write lock), on PostgreSQL under a transaction-scoped advisory
lock, so a second process waits and then finds the database at head. A database created
before migrations existed (``Store.create_schema``) is adopted: the first migration creates
only the tables that are missing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

if TYPE_CHECKING:
    from settings import Settings

HERE = Path(__file__).resolve().parent
# Serialises concurrent migrations on PostgreSQL (same key as Store.create_schema).
ADVISORY_LOCK_KEY = 0x70726976
# Alembic's ``context`` is a module global: one migration at a time per process.
_LOCK = threading.Lock()


class SchemaOutOfDate(RuntimeError):
    """The database is older than this code and auto-migrate is off."""


def config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(config()).get_current_head()
    assert head is not None
    return head


def current_revision(store: Any) -> str | None:
    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(store: Any, revision: str = "head") -> str | None:
    """Migrate the store's database to ``revision``; returns the revision it is at."""
    cfg = config()
    engine = store.engine.execution_options(privnet_write=True)  # SQLite: BEGIN IMMEDIATE
    with _LOCK, engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(store)


def upgrade_url(database_url: str) -> str | None:
    """``upgrade`` on a store opened (and closed) for ``database_url``."""
    from activities.store import Store

    store = Store(database_url)
    try:
        return upgrade(store)
    finally:
        store.dispose()


def auto_migrate(settings: Settings) -> bool:
    if settings.db_auto_migrate is not None:
        return settings.db_auto_migrate
    return settings.database_url.startswith("sqlite")


def prepare_store(settings: Settings, store: Any) -> None:
    """At process start: migrate (auto-migrate on) or check the schema is current."""
    if auto_migrate(settings):
        upgrade(store)
        return
    current, head = current_revision(store), head_revision()
    if current == head:
        return
    known = {s.revision for s in ScriptDirectory.from_config(config()).walk_revisions()}
    if current in known or current is None:
        raise SchemaOutOfDate(
            f"the store's schema is at {current or 'no revision'}, this privnet needs {head}: "
            "run `privnet db upgrade` (or set PRIVNET_DB_AUTO_MIGRATE=true)"
        )
    # A newer schema than this code knows (a rolling deploy): keep running.
