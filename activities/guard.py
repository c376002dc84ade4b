"""Org guard adapters: talk to the per-org guard workflow through the Temporal client.

Signal-with-start makes every call idempotent and creates the guard on first use. The
guard workflow is addressed by name so activities never import workflow code.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from temporalio import activity
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from workflows.contracts import (
    ACT_ACQUIRE_SLOT,
    ACT_CLOSED_WORKFLOWS,
    ACT_RELEASE_SLOT,
    ACT_REQUEST_SLOT,
    SIGNAL_ACQUIRE,
    SIGNAL_RELEASE,
    UPDATE_ACQUIRE_SLOT,
    AcquireRequest,
    ClosedWorkflowsInput,
    ClosedWorkflowsResult,
    OrgGuardInput,
    ReleaseRequest,
    SlotDecision,
    SlotRelease,
    SlotRequest,
    org_guard_workflow_id,
)

GUARD_WORKFLOW = "OrgGuardWorkflow"
# The server takes at most 10 updates in flight per workflow (history.maxInFlightUpdates):
# a burst of creates for one org is asked again shortly, inside the attempt, before the
# activity's own retry (1 s and up) is used.
IN_FLIGHT_RETRY_SECONDS = 20.0
# RESOURCE_EXHAUSTED: too many updates in flight, or the guard is closing to continue as
# new; UNAVAILABLE: "workflow update was aborted" by that continue-as-new. Both are
# asked again under the same update id (a decision already made is returned as is).
ASK_AGAIN = frozenset({RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.UNAVAILABLE})
# Updates one worker process keeps in flight per guard: under the server's 10, so a burst
# of one org's creates queues here instead of being refused and retried with backoff by
# the client (several workers together may still pass 10: ASK_AGAIN covers that).
IN_FLIGHT_PER_ORG = 8


class GuardActivities:
    def __init__(self, client: Client, task_queue: str, leak_check_interval_seconds: float = 300):
        self._client = client
        self._task_queue = task_queue
        self._leak_interval = leak_check_interval_seconds
        self._gates: dict[str, asyncio.Semaphore] = {}

    async def _signal_with_start(self, org_id: str, limit: int, signal: str, arg: object) -> None:
        await self._client.start_workflow(
            GUARD_WORKFLOW,
            OrgGuardInput(org_id=org_id, limit=limit, leak_check_interval=self._leak_interval),
            id=org_guard_workflow_id(org_id),
            task_queue=self._task_queue,
            start_signal=signal,
            start_signal_args=[arg],
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"privnet org guard for {org_id}",
        )

    @activity.defn(name=ACT_REQUEST_SLOT)
    async def request_slot(self, req: SlotRequest) -> None:
        await self._signal_with_start(
            req.org_id,
            req.default_limit,
            SIGNAL_ACQUIRE,
            AcquireRequest(connection_id=req.connection_id, workflow_id=req.workflow_id),
        )

    @activity.defn(name=ACT_ACQUIRE_SLOT)
    async def acquire_slot(self, req: SlotRequest) -> SlotDecision:
        """Ask the org guard for a slot and return its decision, in one round trip
        (update-with-start creates the guard on first use). The update id is the
        requester's, so a retried attempt gets the first attempt's answer."""
        gate = self._gates.setdefault(req.org_id, asyncio.Semaphore(IN_FLIGHT_PER_ORG))
        async with gate:
            return await self._ask(req)

    async def _ask(self, req: SlotRequest) -> SlotDecision:
        deadline = time.monotonic() + IN_FLIGHT_RETRY_SECONDS
        while True:
            try:
                return await self._update_with_start(req)
            except RPCError as err:
                if err.status not in ASK_AGAIN:
                    raise
                if time.monotonic() > deadline:
                    raise ApplicationError(
                        f"the org guard of {req.org_id} is busy "
                        f"({err.message}); asking again",
                        type="GUARD_BUSY",
                    ) from err
                await asyncio.sleep(random.uniform(0.02, 0.2))  # noqa: S311 - jitter only

    async def _update_with_start(self, req: SlotRequest) -> SlotDecision:
        # A with-start operation is used once: a new one for every try.
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            GUARD_WORKFLOW,
            OrgGuardInput(
                org_id=req.org_id, limit=req.default_limit, leak_check_interval=self._leak_interval
            ),
            id=org_guard_workflow_id(req.org_id),
            task_queue=self._task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"privnet org guard for {req.org_id}",
        )
        try:
            return await self._execute(req, start)
        finally:
            # A failed operation leaves its error in the start's handle future too; read
            # it so asyncio does not log "Future exception was never retrieved".
            fut = getattr(start, "_workflow_handle", None)
            if fut is not None and fut.done() and not fut.cancelled():
                fut.exception()

    async def _execute(
        self, req: SlotRequest, start: WithStartWorkflowOperation[Any, Any]
    ) -> SlotDecision:
        try:
            decision: SlotDecision = await self._client.execute_update_with_start_workflow(
                UPDATE_ACQUIRE_SLOT,
                AcquireRequest(connection_id=req.connection_id, workflow_id=req.workflow_id),
                start_workflow_operation=start,
                id=f"acquire:{req.workflow_id}",
                result_type=SlotDecision,
            )
        except WorkflowUpdateFailedError as err:  # e.g. the guard is continuing as new
            raise ApplicationError(
                f"the org guard of {req.org_id} did not take the request ({err.cause}); "
                "asking again",
                type="GUARD_BUSY",
            ) from err
        except WorkflowUpdateRPCTimeoutOrCancelledError as err:  # a busy worker: same id again
            raise ApplicationError(
                f"the org guard of {req.org_id} has not answered yet; asking again",
                type="GUARD_BUSY",
            ) from err
        return decision

    @activity.defn(name=ACT_RELEASE_SLOT)
    async def release_slot(self, req: SlotRelease) -> None:
        await self._signal_with_start(
            req.org_id,
            req.default_limit,
            SIGNAL_RELEASE,
            ReleaseRequest(connection_id=req.connection_id),
        )

    @activity.defn(name=ACT_CLOSED_WORKFLOWS)
    async def closed_workflows(self, inp: ClosedWorkflowsInput) -> ClosedWorkflowsResult:
        closed: list[str] = []
        for wid in inp.workflow_ids:
            try:
                desc = await self._client.get_workflow_handle(wid).describe()
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    closed.append(wid)
                    continue
                raise
            if desc.status != WorkflowExecutionStatus.RUNNING:
                closed.append(wid)
        return ClosedWorkflowsResult(closed=closed)
