"""A local activity's schedule-to-close deadline, on the real dev server.

The SDK (1.35) enforces it while an attempt runs and across retries on a workflow timer,
not across the retries that wait inside the workflow task (backoffs up to the local retry
threshold, 1 min by default): when it passes during one of those, the local activity is
retried forever. The worker's ``LocalActivityDeadline`` interceptor fails the first such
retry that starts past it, so a local activity keeps its deadline (the "marking Active"
write: 15 minutes; release 5's principal check)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import Interceptor, UnsandboxedWorkflowRunner, Worker

from tests.wfutil import uid
from worker import LocalActivityDeadline
from workflows.contracts import LOCAL_ACTIVITY_DEADLINE

pytestmark = pytest.mark.timeout(60)
DEADLINE = timedelta(seconds=3)


@activity.defn
async def always_transient() -> None:
    raise RuntimeError("transient")  # retryable


@activity.defn
async def fine() -> str:
    return "ok"


@workflow.defn(sandboxed=False)
class LocalStep:
    @workflow.run
    async def run(self, name: str) -> str:
        result: str = await workflow.execute_local_activity(
            name,
            start_to_close_timeout=timedelta(seconds=1),
            schedule_to_close_timeout=DEADLINE,
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=1)),
            result_type=str,
        )
        return result


async def _run(
    client: Client, name: str, interceptors: list[Interceptor], within: float
) -> str | None:
    """The workflow's result, or None if it has none within ``within`` seconds (then it is
    terminated, so the worker can shut down)."""
    tq = uid("tq")
    async with Worker(
        client,
        task_queue=tq,
        workflows=[LocalStep],
        activities=[always_transient, fine],
        interceptors=interceptors,
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await client.start_workflow(LocalStep.run, name, id=uid("wf"), task_queue=tq)
        try:
            async with asyncio.timeout(within):
                return await handle.result()
        except TimeoutError:
            await handle.terminate("still retrying")
            return None


async def test_without_the_interceptor_the_sdk_retries_past_the_deadline(
    temporal_client: Client,
) -> None:
    """The defect the interceptor works around: still retrying at four times the deadline.
    When an SDK upgrade fixes it this test fails: drop the interceptor then."""
    within = 4 * DEADLINE.total_seconds()
    assert await _run(temporal_client, "always_transient", [], within) is None


async def test_the_interceptor_ends_the_retries_at_the_deadline(temporal_client: Client) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(WorkflowFailureError) as info:
        await _run(
            temporal_client, "always_transient", [LocalActivityDeadline()], 4 * DEADLINE.total_seconds()
        )
    took = loop.time() - started
    cause = info.value.cause
    assert isinstance(cause, ApplicationError), cause  # a local activity's error is bare
    assert cause.type == LOCAL_ACTIVITY_DEADLINE
    assert "within its 0:00:03 deadline" in cause.message
    assert took >= DEADLINE.total_seconds()
    # A step that succeeds is untouched.
    assert await _run(temporal_client, "fine", [LocalActivityDeadline()], 30) == "ok"
