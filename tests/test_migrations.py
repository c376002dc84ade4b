"""Store migrations (Alembic) on an empty SQLite file and an empty PostgreSQL schema:
upgrade to head, the models match the migrated schema (autogenerate finds no difference),
concurrent upgrades, adoption of a database made by ``Store.create_schema``, the
auto-migrate switch, and ``privnet db upgrade``.

PostgreSQL runs in fresh schemas (dropped afterwards); unreachable, it fails under ``CI``
and skips otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from activities.store import Store, metadata
from migrations import (
    SchemaOutOfDate,
    auto_migrate,
    config,
    current_revision,
    head_revision,
    prepare_store,
    upgrade,
    upgrade_url,
)
from settings import Settings
from workflows.contracts import ConnectionStatus, StatusRecord

REPO = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get(
    "PRIVNET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TABLES = {"connections", "connection_events", "org_limits"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    counter = iter(range(1000))

    def make() -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path}/db{next(counter)}/privnet.db"
        factory: Callable[[str], str] = request.getfixturevalue("pg_schema_url")
        return factory("mig")

    return make


def _diff(store: Store) -> list[object]:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))


def _record(store: Store, org: str = "acme", cid: str = "db", seq: int = 1) -> None:
    store.record(
        StatusRecord(
            org_id=org, connection_id=cid, seq=seq, at=datetime.now(UTC),
            status=ConnectionStatus.ACTIVE,
            endpoint_service_name="com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0",
            region="us-east-1", service_region="us-east-1",
            workflow_id=f"privnet-conn:{org}:{cid}", ips=["10.0.0.5"],
        )
    )


def test_one_linear_history() -> None:
    script = ScriptDirectory.from_config(config())
    assert len(script.get_heads()) == 1
    revisions = list(script.walk_revisions())
    assert revisions[-1].down_revision is None
    assert head_revision() == revisions[0].revision


def test_empty_database_upgrades_to_head_and_matches_the_models(
    empty_url: Callable[[], str],
) -> None:
    store = Store(empty_url())
    try:
        assert current_revision(store) is None
        assert upgrade(store) == head_revision()
        assert TABLES <= set(inspect(store.engine).get_table_names())
        assert _diff(store) == []
        # The migrated schema works for the store: writes and reads.
        _record(store)
        store.set_org_limit("acme", 4)
        assert store.org_limit("acme") == 4
        assert [v.connection_id for v in store.live_connections("acme")] == ["db"]
        # Upgrading again changes nothing.
        assert upgrade(store) == head_revision()
        assert store.get("acme", "db") is not None
    finally:
        store.dispose()


def test_the_models_differ_from_an_older_schema(empty_url: Callable[[], str]) -> None:
    """The comparison can fail: a schema missing a model's table shows a difference."""
    store = Store(empty_url())
    try:
        upgrade(store)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE org_limits")
        assert any("org_limits" in str(d) for d in _diff(store))
    finally:
        store.dispose()


def test_concurrent_upgrades_from_several_processes_agree(empty_url: Callable[[], str]) -> None:
    """What a worker and an API starting together do; threads of one process too."""
    url = empty_url()
    with ProcessPoolExecutor(3, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(upgrade_url, [url] * 3))
    with ThreadPoolExecutor(2) as threads:
        results += list(threads.map(upgrade_url, [url] * 2))
    assert results == [head_revision()] * 5
    store = Store(url)
    try:
        assert _diff(store) == []
    finally:
        store.dispose()


def test_a_database_made_before_migrations_is_adopted(empty_url: Callable[[], str]) -> None:
    store = Store(empty_url())
    try:
        store.create_schema()
        _record(store)
        assert current_revision(store) is None
        assert upgrade(store) == head_revision()
        assert store.get("acme", "db") is not None  # data kept
        assert _diff(store) == []
    finally:
        store.dispose()


def test_prepare_store_migrates_or_names_the_fix(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    assert auto_migrate(Settings(database_url=url)) is True  # type: ignore[call-arg]
    assert auto_migrate(Settings(database_url=POSTGRES_URL)) is False  # type: ignore[call-arg]
    off = Settings(database_url=url, db_auto_migrate=False)  # type: ignore[call-arg]
    store = Store(url)
    try:
        with pytest.raises(SchemaOutOfDate, match="privnet db upgrade"):
            prepare_store(off, store)
        assert current_revision(store) is None  # nothing was changed
        prepare_store(Settings(database_url=url), store)  # type: ignore[call-arg]
        assert current_revision(store) == head_revision()
        prepare_store(off, store)  # current now: no complaint
    finally:
        store.dispose()


def test_privnet_db_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVNET_")}
    env.update(PYTHONPATH=str(REPO), PRIVNET_DATABASE_URL=url)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "starter.cli", *args], cwd=str(tmp_path), env=env,
            capture_output=True, text=True, timeout=60,
        )

    r = cli("db", "current", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["current"] is None
    r = cli("db", "upgrade")
    assert r.returncode == 0, r.stderr
    assert f"upgraded from empty to {head_revision()}" in r.stdout
    r = cli("db", "upgrade", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["current"] == head_revision()
    store = Store(url)
    try:
        assert _diff(store) == []
    finally:
        store.dispose()
