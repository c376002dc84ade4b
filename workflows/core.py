"""State and helpers shared by the connection workflow's parts (provisioning, the Active
service loop, compensation): activity calls, status records, UI details, stop requests.

Deterministic code only; it runs inside the Temporal workflow sandbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        ACT_APPLY_POLICIES,
        ACT_RECORD_STATUS,
        NON_RETRYABLE_TYPES,
        PASSING_STATUSES,
        SA_STATUS,
        ApplyPoliciesInput,
        ApplyPoliciesResult,
        ConnectionInput,
        ConnectionState,
        ConnectionStatus,
        StatusRecord,
    )

from workflows.errors import failure_of, is_cancellation
from workflows.saga import Saga

T = TypeVar("T")
E = TypeVar("E", bound=BaseModel)
Stop = Literal["delete", "cancel"]

# Forward steps stop on the non-retryable types; compensation and status writes never stop.
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=NON_RETRYABLE_TYPES,
)
FOREVER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=0,
)
# Compensation: transient errors retry in the activity; the typed ones an operator must fix
# come back to the workflow, which shows CleanupBlocked and retries after a backoff.
UNDO_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=0,
    non_retryable_error_types=NON_RETRYABLE_TYPES,
)
STEP_DEADLINE = timedelta(minutes=15)  # all attempts of a forward step
# A local activity's retry backoff longer than this waits on a workflow timer, not inside
# the workflow task (where queries and signals wait for it).
LOCAL_RETRY_IN_TASK = timedelta(seconds=2)

# One workflow.patched marker for this release's changes of the command sequence (each
# marker is a history event of its own): status writes as local activities, the poll
# schedule shaped by AWS, search attributes written only when they change, the slot asked
# by update. Histories recorded before it replay through the ``legacy`` branches.
PATCH_FEWER_EVENTS = "fewer-events-per-connection"
# A status write's sequence number is at least the history length of the workflow task
# that makes it: a local activity's write survives its workflow task being discarded
# (a signal arriving, a worker dying), and the next attempt, which may record another
# status (a stop request wins), must not reuse the discarded write's number.
PATCH_SEQ_BY_HISTORY = "status-seq-floored-by-history-length"


class StopRequested(Exception):
    """``delete`` or ``cancel`` arrived: leave the forward path for compensation."""


class ConnectionCore:
    """The connection's state and the helpers every part of the workflow uses."""

    _inp: ConnectionInput
    _state: ConnectionState
    _stop: Stop | None
    _retry_now: bool
    _saga: Saga
    _in_flight: list[asyncio.Future[Any]]
    _attempts: int
    _deferred_search_attributes: list[SearchAttributeUpdate[Any]]

    # ------------------------------------------------------------------ stop requests

    def _check_stop(self) -> None:
        if self._stop is not None:
            raise StopRequested()

    async def _wait_for_wake(self, interval: timedelta, summary: str) -> None:
        """Sleep until the timeout, a stop request or ``retry_now``; clears ``retry_now``."""
        try:
            await workflow.wait_condition(
                lambda: self._stop is not None or self._retry_now,
                timeout=interval,
                timeout_summary=summary,
            )
        except TimeoutError:
            pass
        self._retry_now = False

    # ------------------------------------------------------------------ activities

    async def _activity(
        self,
        name: str,
        arg: Any,
        result_type: type | None,
        *,
        summary: str,
        retry: RetryPolicy = STEP_RETRY,
        start_to_close: timedelta | None = None,
        schedule_to_close: timedelta | None = None,
        local: bool = False,
    ) -> Any:
        """An activity; ``local`` runs it as a local activity (release 5: one AWS call whose
        result the next command needs, run inside the workflow task: no task queue round
        trip, no workflow task of its own, one marker event instead of three). Its retries
        wait in the workflow task only up to ``LOCAL_RETRY_IN_TASK``, then on a timer, so a
        throttled call does not keep queries waiting through every backoff."""
        if start_to_close is None:
            start_to_close = self._inp.options.step_timeout
        if schedule_to_close is None and retry is STEP_RETRY:
            schedule_to_close = STEP_DEADLINE
        options: dict[str, Any] = {
            "result_type": result_type,
            "start_to_close_timeout": start_to_close,
            "schedule_to_close_timeout": schedule_to_close,
            "retry_policy": retry,
            "summary": summary,
        }
        if local:
            return await workflow.execute_local_activity(
                name, arg, local_retry_threshold=LOCAL_RETRY_IN_TASK, **options
            )
        return await workflow.execute_activity(name, arg, **options)

    async def _step(
        self, name: str, arg: Any, result_type: type | None, *, reason: str, what: str,
        **kwargs: Any,
    ) -> Any:
        """A forward step: its failure becomes ``ConnectionFailed(reason)``; cancellation
        passes through untouched (a cancelled connection ends Cancelled, never Failed)."""
        try:
            return await self._activity(name, arg, result_type, summary=what, **kwargs)
        except (ActivityError, ApplicationError) as err:  # a local activity's error is bare
            if is_cancellation(err):
                raise
            raise failure_of(err, reason, what) from None

    async def _side_effect(self, work: Awaitable[T]) -> T:
        """Await a step that creates something. If the workflow is cancelled meanwhile, the
        step is not abandoned: compensation first waits for it (``_settle_in_flight``), so
        what it creates is known and undone (an abandoned call could create after the undo)."""
        task = asyncio.ensure_future(work)
        self._in_flight.append(task)
        return await asyncio.shield(task)

    async def _settle_in_flight(self) -> None:
        for task in self._in_flight:
            if not task.done():
                self._details("Waiting for an in-flight step to finish", "its activity")
                try:
                    await task
                except BaseException:  # noqa: BLE001 - compensation undoes it either way
                    pass
        self._in_flight.clear()

    async def _apply_policies(
        self, ips: list[str], *, status: StatusRecord | None = None, **kwargs: Any
    ) -> ApplyPoliciesResult:
        result: ApplyPoliciesResult = await self._side_effect(
            self._activity(
                ACT_APPLY_POLICIES,
                ApplyPoliciesInput(
                    org_id=self._inp.org_id,
                    connection_id=self._inp.connection_id,
                    ips=ips,
                    ports=self._inp.ports,
                    status=status,
                ),
                ApplyPoliciesResult,
                summary="apply the CiliumNetworkPolicy",
                **kwargs,
            )
        )
        return result

    async def _interruptible(
        self, make: Callable[[], Awaitable[T]], *, restart_on_retry_now: bool = False
    ) -> T:
        """Run ``make()``. A stop request cancels it and raises ``StopRequested`` (a wait
        must never hold a delete back); with ``restart_on_retry_now``, ``retry_now`` cancels
        it and runs it again at once (a poll skipping its backoff)."""
        while True:
            if restart_on_retry_now:
                self._retry_now = False
            task = asyncio.ensure_future(make())
            wake = asyncio.ensure_future(
                workflow.wait_condition(
                    lambda: self._stop is not None or (restart_on_retry_now and self._retry_now)
                )
            )
            try:
                await workflow.wait([task, wake], return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                task.cancel()
                wake.cancel()
                raise
            if task.done():
                wake.cancel()
                return task.result()
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001 - the interrupted work's outcome is moot
                pass
            if self._stop is not None:
                raise StopRequested()

    def _endpoint_input(self, cls: type[E], endpoint_id: str, **fields: Any) -> E:
        """An activity input about our endpoint (whose it is travels along, for logs)."""
        return cls(
            org_id=self._inp.org_id,
            connection_id=self._inp.connection_id,
            region=self._inp.region,
            vpc_endpoint_id=endpoint_id,
            **fields,
        )

    # ------------------------------------------------------------------ status and UI

    async def _record(self, status: ConnectionStatus, detail: str, *, strict: bool = False) -> None:
        """Record a status: store row + timeline event, then query state and search
        attribute, so all three agree. ``strict`` lets a non-retryable store error surface
        (marking Active must succeed); other writes retry forever: a flaky database never
        loses a transition."""
        rec = self._status_record(status, detail)
        retry = STEP_RETRY if strict else FOREVER_RETRY
        summary = f"record status {status.value}"
        if self._current():
            # A local activity: one store write needs no task queue round trip and no
            # workflow task of its own (half of a connection's activities are these).
            await workflow.execute_local_activity(
                ACT_RECORD_STATUS,
                rec,
                start_to_close_timeout=timedelta(seconds=10),
                schedule_to_close_timeout=STEP_DEADLINE if strict else None,
                retry_policy=retry,
                summary=summary,
            )
        else:  # histories recorded before the patch
            await self._activity(ACT_RECORD_STATUS, rec, None, summary=summary, retry=retry)
        self._show(status, detail)

    async def _pass_through(self, status: ConnectionStatus, detail: str) -> StatusRecord | None:
        """A status the next step passes through (``PASSING_STATUSES``). From release 4 the
        step's activity writes it before it acts: the record is returned to travel in the
        activity's input, and the step's retry policy retries the write with the step (a
        store down past the step's deadline fails the step, as it fails marking Active).
        Before release 4: a write of its own, as ``_record``."""
        if self._inp.release < 4:
            await self._record(status, detail)
            return None
        rec = self._status_record(status, detail)
        self._show(status, detail)
        return rec

    def _status_record(self, status: ConnectionStatus, detail: str) -> StatusRecord:
        """The next status write; its seq is consumed even if the write fails, so a later
        write always wins."""
        seq = self._state.seq + 1
        if self._since(PATCH_SEQ_BY_HISTORY):
            seq = max(seq, workflow.info().get_current_history_length())
        self._state.seq = seq
        return StatusRecord(
            org_id=self._inp.org_id,
            connection_id=self._inp.connection_id,
            seq=seq,
            at=workflow.now(),
            status=status,
            reason=self._state.reason,
            message=self._state.message,
            detail=detail,
            endpoint_service_name=self._inp.endpoint_service_name,
            region=self._inp.region,
            service_region=self._state.service_region,
            display_name=self._inp.display_name,
            workflow_id=workflow.info().workflow_id,
            vpc_endpoint_id=self._state.vpc_endpoint_id,
            ips=self._state.ips,
            dns_names=self._state.dns_names,
        )

    def _show(self, status: ConnectionStatus, detail: str) -> None:
        """The query state and, for a resting status, the search attribute."""
        self._state.status = status
        self._state.step = detail
        if self._inp.release < 3 or status not in PASSING_STATUSES:
            self._set_search_attributes(SA_STATUS.value_set(status.value))

    def _current(self) -> bool:
        """This release's command sequence (False: replaying a history from before it)."""
        return self._since(PATCH_FEWER_EVENTS)

    def _since(self, patch: str) -> bool:
        """Whether a change once introduced by ``patch`` applies: always from release 3 on
        (no marker), else as the history's markers say."""
        return self._inp.release >= 3 or workflow.patched(patch)

    def _set_search_attributes(self, *updates: SearchAttributeUpdate[Any]) -> None:
        """Upsert search attributes, skipping what already holds (each upsert is a history
        event and a visibility write); an endpoint id waits for the next status change."""
        if not self._current():
            workflow.upsert_search_attributes(list(updates))
            return
        changed = [
            u for u in updates if workflow.info().typed_search_attributes.get(u.key) != u.value
        ]
        if any(u.key == SA_STATUS for u in changed):
            changed = [*changed, *self._deferred_search_attributes]
            self._deferred_search_attributes = []
        elif changed:  # not a status: ride along with the next status change
            self._deferred_search_attributes.extend(changed)
            return
        if changed:
            workflow.upsert_search_attributes(changed)

    def _details(self, doing: str, waiting_for: str, *, fix: str | None = None) -> None:
        """What the Temporal UI shows for this workflow right now."""
        lines = [
            f"**{self._state.status.value}** · {self._inp.org_id}/{self._inp.connection_id}",
            f"Step: {doing}",
            f"Waiting for: {waiting_for}",
        ]
        if self._state.aws_state:
            lines.append(f"AWS state: {self._state.aws_state}")
        if self._attempts:
            lines.append(f"Poll attempts: {self._attempts}")
        if fix:
            lines.append(f"To unblock: {fix}")
        workflow.set_current_details("\n\n".join(lines))
