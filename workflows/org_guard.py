"""OrgGuardWorkflow: one long-lived workflow per organization that enforces its
connection limit.

Requests are queued and decided one at a time in the run loop, so N concurrent acquires
admit exactly ``limit``. An acquire comes as the ``acquire_slot`` update (its result is the
decision: one round trip) or, from connections started before it existed, as a signal whose
decision is signalled back (``slot_decision``). Holders whose workflow closed without releasing (an operator's
terminate skips compensation) are released by a periodic leak check. The history stays
bounded with continue-as-new, carrying holders, limit and unanswered requests.

Durability beyond Temporal: the holders are written to the store (a local activity) before
any decision is sent, and a guard started afresh (first use, terminate, reset) reads them and
the org's limit override back before it answers, so losing the guard never lifts a limit.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        ACT_CLOSED_WORKFLOWS,
        ACT_LOAD_ORG_SLOTS,
        ACT_SAVE_ORG_SLOTS,
        QUERY_USAGE,
        SIGNAL_ACQUIRE,
        SIGNAL_RELEASE,
        SIGNAL_SET_LIMIT,
        SIGNAL_SLOT_DECISION,
        UPDATE_ACQUIRE_SLOT,
        AcquireRequest,
        ClosedWorkflowsInput,
        ClosedWorkflowsResult,
        GuardRequest,
        GuardUsage,
        OrgGuardInput,
        OrgSlots,
        ReleaseRequest,
        SetLimitRequest,
        SlotDecision,
    )


# The leak check's own timer (``_serve``); guard runs recorded before it replay through
# ``_serve_legacy``. Each guard run records the marker once.
PATCH_LEAK_CHECK_BY_TIMER = "guard-leak-check-by-its-own-timer"


@workflow.defn(name="OrgGuardWorkflow")
class OrgGuardWorkflow:
    @workflow.init
    def __init__(self, inp: OrgGuardInput) -> None:
        self._org = inp.org_id
        self._limit = inp.limit
        self._holders: dict[str, str] = dict(inp.holders)
        self._queue: list[GuardRequest] = list(inp.pending)
        self._leak_check_interval = inp.leak_check_interval
        self._check_leaks_now = False
        self._ticker: asyncio.Future[None] | None = None
        self._max_history = inp.max_history_events
        self._saved: dict[str, str] | None = dict(inp.holders) if inp.restored else None
        # Decisions for acquire updates, by requester workflow id, in request order.
        self._answers: dict[str, list[SlotDecision]] = {}
        self._closing = False  # continuing as new: new acquire updates are refused

    @workflow.signal(name=SIGNAL_ACQUIRE)
    def acquire(self, req: AcquireRequest) -> None:
        self._queue.append(req)

    @workflow.update(name=UPDATE_ACQUIRE_SLOT)
    async def acquire_slot(self, req: AcquireRequest) -> SlotDecision:
        """Acquire a slot; the decision is the result. Idempotent per connection."""
        wid = req.workflow_id
        self._queue.append(req.model_copy(update={"by_update": True}))
        await workflow.wait_condition(lambda: bool(self._answers.get(wid)))
        answers = self._answers[wid]
        decision = answers.pop(0)
        if not answers:
            del self._answers[wid]
        return decision

    @acquire_slot.validator
    def _acquire_slot_open(self, req: AcquireRequest) -> None:
        if self._closing:
            raise ApplicationError(
                "the org guard is continuing as new; ask again", type="GUARD_CLOSING"
            )

    @workflow.signal(name=SIGNAL_RELEASE)
    def release(self, req: ReleaseRequest) -> None:
        self._queue.append(req)

    @workflow.signal(name=SIGNAL_SET_LIMIT)
    def set_limit(self, req: SetLimitRequest) -> None:
        self._queue.append(req)

    @workflow.signal(name="check_leaks")
    def check_leaks(self) -> None:
        """Run the leak check now instead of at the next interval (operators, tests)."""
        self._check_leaks_now = True

    @workflow.query(name=QUERY_USAGE)
    def usage(self) -> GuardUsage:
        return GuardUsage(
            org_id=self._org,
            limit=self._limit,
            usage=len(self._holders),
            holders=dict(self._holders),
        )

    @workflow.run
    async def run(self, inp: OrgGuardInput) -> None:
        ticks = workflow.patched(PATCH_LEAK_CHECK_BY_TIMER)
        if not inp.restored:
            await self._restore(inp)
        if ticks:
            await self._serve()
        else:
            await self._serve_legacy()

    async def _serve(self) -> None:
        """Decide requests as they come; a timer of its own asks for the leak check. No
        command depends on ``workflow.now()``: after a local activity (the restore, a save)
        it is not the same on replay as it was when the task ran (the soak, seed 4242: a
        request 24 ms before the check was due replayed as after it, scheduled the leak
        check where the history has a timer, and the guard's tasks failed from then on)."""
        self._ticker = asyncio.ensure_future(self._leak_ticks())  # ends with the run
        while True:
            await workflow.wait_condition(
                lambda: (
                    bool(self._queue)
                    or self._check_leaks_now
                    or workflow.info().is_continue_as_new_suggested()
                )
            )
            await self._drain()
            if self._check_leaks_now:
                self._check_leaks_now = False
                await self._release_leaked()
            if self._should_continue_as_new():
                await self._continue_as_new()

    async def _leak_ticks(self) -> None:
        while True:
            await workflow.sleep(self._leak_check_interval, summary="leak check")
            self._check_leaks_now = True

    async def _serve_legacy(self) -> None:
        """Histories from before the leak check's own timer: the wait's timeout is the time
        left until the check, which ``workflow.now()`` decides."""
        next_check = workflow.now() + self._leak_check_interval
        while True:
            wait = max(next_check - workflow.now(), timedelta(seconds=1))
            try:
                await workflow.wait_condition(
                    lambda: (
                        bool(self._queue)
                        or self._check_leaks_now
                        or workflow.info().is_continue_as_new_suggested()
                    ),
                    timeout=wait,
                    timeout_summary="leak check",
                )
            except TimeoutError:
                pass
            await self._drain()
            if self._check_leaks_now or workflow.now() >= next_check:
                self._check_leaks_now = False
                await self._release_leaked()
                next_check = workflow.now() + self._leak_check_interval
            if self._should_continue_as_new():
                await self._continue_as_new()

    async def _continue_as_new(self) -> None:
        # Acquire updates must finish in this run: refuse new ones (the asking activity
        # retries against the next run) and answer those accepted.
        self._closing = True
        while not workflow.all_handlers_finished():
            await self._drain()
            await workflow.wait_condition(
                lambda: workflow.all_handlers_finished() or bool(self._queue)
            )
        workflow.continue_as_new(
            OrgGuardInput(
                org_id=self._org,
                limit=self._limit,
                holders=self._holders,
                leak_check_interval=self._leak_check_interval,
                pending=list(self._queue),
                max_history_events=self._max_history,
                restored=True,
            )
        )

    async def _restore(self, inp: OrgGuardInput) -> None:
        """A fresh start: holders and limit come back from the store before any answer."""
        slots: OrgSlots = await workflow.execute_local_activity(
            ACT_LOAD_ORG_SLOTS,
            inp.org_id,
            result_type=OrgSlots,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
            summary="rebuild holders and limit from the store",
        )
        if slots.limit is not None:
            self._limit = slots.limit
        self._holders = {**slots.holders, **self._holders}
        self._saved = dict(slots.holders)

    async def _save(self) -> None:
        """Write the holders to the store when they changed (before answering anyone)."""
        if self._saved == self._holders:
            return
        holders = dict(self._holders)
        await workflow.execute_local_activity(
            ACT_SAVE_ORG_SLOTS,
            OrgSlots(org_id=self._org, holders=holders),
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
            summary="store the holders",
        )
        self._saved = holders

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._max_history
        )

    async def _drain(self) -> None:
        """Decide the queued requests in arrival order, then send the decisions. Requests
        arriving meanwhile wait for the next round, so the loop can continue as new."""
        batch, self._queue = self._queue, []
        replies: list[tuple[str, SlotDecision]] = []
        updates: list[tuple[str, SlotDecision]] = []
        for req in batch:
            if isinstance(req, SetLimitRequest):
                self._limit = req.limit
            elif isinstance(req, ReleaseRequest):
                self._holders.pop(req.connection_id, None)
            else:
                granted = req.connection_id in self._holders or len(self._holders) < self._limit
                if granted:
                    self._holders[req.connection_id] = req.workflow_id
                decision = SlotDecision(
                    connection_id=req.connection_id,
                    granted=granted,
                    usage=len(self._holders),
                    limit=self._limit,
                )
                (updates if req.by_update else replies).append((req.workflow_id, decision))
        await self._save()  # durable before anyone hears a decision
        for wid, decision in updates:
            self._answers.setdefault(wid, []).append(decision)
        if not replies:
            return
        results = await asyncio.gather(
            *(self._reply(wid, d) for wid, d in replies), return_exceptions=True
        )
        for (_wid, decision), res in zip(replies, results, strict=True):
            if isinstance(res, BaseException) and decision.granted:
                # The requester is gone (closed or never existed): free its slot.
                workflow.logger.warning(
                    "releasing %s: its workflow could not be signalled (%s)",
                    decision.connection_id,
                    res,
                )
                self._holders.pop(decision.connection_id, None)
        await self._save()

    async def _reply(self, workflow_id: str, decision: SlotDecision) -> None:
        handle = workflow.get_external_workflow_handle(workflow_id)
        await handle.signal(SIGNAL_SLOT_DECISION, decision)

    async def _release_leaked(self) -> None:
        if not self._holders:
            return
        try:
            result: ClosedWorkflowsResult = await workflow.execute_activity(
                ACT_CLOSED_WORKFLOWS,
                ClosedWorkflowsInput(workflow_ids=sorted(set(self._holders.values()))),
                result_type=ClosedWorkflowsResult,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=timedelta(minutes=2),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
                summary="find holders whose workflow closed",
            )
        except ActivityError as err:  # the next interval tries again
            workflow.logger.warning("leak check failed: %s", err.cause or err)
            return
        closed = set(result.closed)
        for conn, wid in list(self._holders.items()):
            if wid in closed:
                workflow.logger.info("releasing leaked slot of %s (%s closed)", conn, wid)
                del self._holders[conn]
        await self._save()
