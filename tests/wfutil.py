"""Helpers for workflow tests: inputs with test-speed timings, starting connections the
way the starter does, waiting on statuses, and recording replay fixtures."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from workflows.connection import PrivateConnectionWorkflow
from workflows.contracts import (
    CURRENT_RELEASE,
    QUERY_STATUS,
    SA_ORG_ID,
    SA_REGION,
    SA_STATUS,
    ConnectionInput,
    ConnectionOptions,
    ConnectionState,
)

HISTORIES = Path(__file__).parent / "histories"

# How long the tests' sandbox AWS keeps a new endpoint pending, and the poll schedule shaped
# by it (as sandbox/stack.py shapes the dev stack's): production's waits 30 s for AWS.
SANDBOX_PENDING = 0.3
SANDBOX_POLL_SETTINGS = {
    "endpoint_first_poll_seconds": SANDBOX_PENDING,
    "endpoint_poll_interval_seconds": SANDBOX_PENDING,
}
SERVICE = "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def fast_options(**overrides: Any) -> ConnectionOptions:
    base: dict[str, Any] = {
        "step_timeout": timedelta(seconds=5),
        "poll_initial_interval": timedelta(milliseconds=200),
        "poll_max_interval": timedelta(seconds=1),
        "acceptance_poll_max_interval": timedelta(seconds=1),
        "pending_first_look": timedelta(milliseconds=200),
        "pending_poll_interval": timedelta(milliseconds=300),
        "acceptance_first_look": timedelta(milliseconds=200),
        "slot_decision_timeout": timedelta(seconds=20),
        "drift_check_interval": timedelta(hours=1),
    }
    base.update(overrides)
    return ConnectionOptions(**base)


def make_input(
    org: str, conn: str, service: str = SERVICE, region: str = "us-east-1", **opts: Any
) -> ConnectionInput:
    return ConnectionInput(
        org_id=org,
        connection_id=conn,
        endpoint_service_name=service,
        region=region,
        options=fast_options(**opts),
        release=CURRENT_RELEASE,
    )


async def start(client: Client, inp: ConnectionInput, task_queue: str) -> WorkflowHandle:
    return await client.start_workflow(
        PrivateConnectionWorkflow.run,
        inp,
        id=inp.workflow_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(SA_ORG_ID, inp.org_id),
                SearchAttributePair(SA_STATUS, "Pending"),
                SearchAttributePair(SA_REGION, inp.region),
            ]
        ),
        static_summary=f"privnet connection {inp.org_id}/{inp.connection_id}",
    )


async def query(handle: WorkflowHandle) -> ConnectionState:
    state: ConnectionState = await handle.query(QUERY_STATUS, result_type=ConnectionState)
    return state


async def wait_status(handle: WorkflowHandle, status: str, within: float = 30) -> ConnectionState:
    deadline = asyncio.get_running_loop().time() + within
    last = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            last = await query(handle)
            if last.status.value == status:
                return last
        except Exception:  # noqa: BLE001 - not started yet / worker restarting
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{handle.id} never reached {status}; last state: {last}")


async def save_history(handle: WorkflowHandle, name: str) -> None:
    """Record a replay fixture when PRIVNET_RECORD_HISTORIES=1 (tests/histories/)."""
    if os.environ.get("PRIVNET_RECORD_HISTORIES") != "1":
        return
    history = await handle.fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    # A suffix records a new generation beside the old ones (which must keep replaying).
    name += os.environ.get("PRIVNET_RECORD_SUFFIX", "")
    (HISTORIES / f"{name}.json").write_text(history.to_json())
