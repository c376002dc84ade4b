"""ConnectionsClient: what the dashboard backend, the HTTP API and the CLI use.

It starts, signals and queries the connection workflows (by name, so the starter never
imports workflow code) and reads connection rows and their timelines from the store.

    client = await ConnectionsClient.connect(settings)
    view = await client.create("acme", "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0")
    async for view in client.watch("acme", view.connection_id):
        print(view.status)
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import secrets
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from settings import Settings
from starter import validation
from workflows.contracts import (
    ADMISSION_STATUSES,
    CURRENT_RELEASE,
    PREFLIGHT_WORKFLOW,
    PROVISIONING_STATUSES,
    QUERY_STATUS,
    QUERY_USAGE,
    SA_ORG_ID,
    SA_REGION,
    SA_STATUS,
    SETUP_FACTS_WORKFLOW,
    SIGNAL_CANCEL,
    SIGNAL_DELETE,
    SIGNAL_RETRY_NOW,
    SIGNAL_SET_LIMIT,
    SWEEP_SCHEDULE_ID,
    SWEEP_WORKFLOW,
    UPDATE_ADMITTED,
    ConnectionInput,
    ConnectionOptions,
    ConnectionState,
    ConnectionStatus,
    ConnectionView,
    GuardUsage,
    InvalidInput,
    OrgGuardInput,
    PreflightInput,
    PreflightResult,
    SetLimitRequest,
    SetupFacts,
    SetupInput,
    SweepInput,
    SweepReport,
    connection_workflow_id,
    org_guard_workflow_id,
)

CONNECTION_WORKFLOW = "PrivateConnectionWorkflow"
ORG_GUARD_WORKFLOW = "OrgGuardWorkflow"

# How often ``create`` asks a new connection whether it left admission when the workflow
# refused its ``admitted`` update (already past admission, or a worker from before it). Each
# look is a status query: a round trip through the Temporal server to a worker, which runs it
# in the workflow's sandbox. With looks every 0.1 s, 200 creates at once cost the bench's
# worker 113 and its dev server 150 ms of CPU per connection; with paced looks 98 and 136;
# with the update, no looks, 60-72 and 92-116 (issue 12). Quick looks first, then at most
# every 0.5 s, so a create still returns within half a second of its admission.
ADMISSION_FIRST_PAUSE = 0.1
ADMISSION_MAX_PAUSE = 0.5
DELETE_ACK_WAIT = 1.0  # how long ``delete`` waits for the workflow to show Deleting


def _start_answer(start: WithStartWorkflowOperation[Any, Any]) -> asyncio.Future[Any] | None:
    """The with-start operation's future for the server's answer to the start (the SDK sets
    it on the first response): done once the start is known to have happened or failed.
    Private to the SDK, so read defensively (None: unknown, treat as unanswered)."""
    fut = getattr(start, "_workflow_handle", None)
    return fut if isinstance(fut, asyncio.Future) else None


def paced(first: float, cap: float, factor: float = 1.5) -> Iterator[float]:
    """Pauses between looks at something expected to change soon: ``first``, growing by
    ``factor`` up to ``cap``."""
    pause = first
    while True:
        yield pause
        pause = min(pause * factor, cap)


class NotFound(LookupError):
    """The connection (or org) does not exist."""

    code = "NOT_FOUND"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Conflict(Exception):
    """The request conflicts with existing state (e.g. a connection id reused for another
    service)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Unavailable(Exception):
    """The worker could not answer (AWS kept failing, no worker polling): try again."""

    code = "UNAVAILABLE"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PendingActivity(BaseModel):
    activity_type: str
    state: str
    attempt: int
    last_failure: str | None = None
    next_attempt_at: datetime | None = None


class StuckConnection(BaseModel):
    """A connection provisioning for longer than expected, with what to do about it."""

    org_id: str
    connection_id: str
    workflow_id: str
    status: str
    started_at: datetime | None = None
    age_seconds: float = 0
    step: str = ""
    aws_state: str | None = None
    message: str = ""  # what the customer (or operator) must fix
    endpoint_service_name: str | None = None
    vpc_endpoint_id: str | None = None
    pending_activities: list[PendingActivity] = Field(default_factory=list)
    details: str = ""  # the workflow's current details, as the Temporal UI shows them
    ui_url: str | None = None


_FIX_PREFIX = "To unblock:"


def customer_fix(state: ConnectionState, details: str = "") -> str:
    """What must happen for a provisioning connection to move on, in one sentence."""
    for block in details.split("\n"):
        block = block.strip()
        if block.startswith(_FIX_PREFIX):
            return block[len(_FIX_PREFIX) :].strip()
    if state.message:
        return state.message
    ep = state.vpc_endpoint_id or "the endpoint"
    if state.status == ConnectionStatus.WAITING_FOR_ACCEPTANCE:
        return (
            f"The customer must accept the connection request of {ep} on their endpoint "
            f"service {state.endpoint_service_name} (VPC console → Endpoint services → "
            "Endpoint connections → Accept)."
        )
    if state.status == ConnectionStatus.WAITING_FOR_IP:
        return f"AWS has not made {ep} available yet (state {state.aws_state or 'pending'})."
    if state.status == ConnectionStatus.PENDING:
        return "Waiting for the org guard's slot decision: check that a worker is running."
    return f"{state.step or state.status}: check the workflow in the Temporal UI."


def new_connection_id() -> str:
    return "c-" + secrets.token_hex(5)


def connection_options(settings: Settings) -> ConnectionOptions:
    return ConnectionOptions(
        acceptance_timeout=timedelta(seconds=settings.acceptance_timeout_seconds),
        drift_check_interval=timedelta(seconds=settings.drift_check_interval_seconds),
        pending_first_look=timedelta(seconds=settings.endpoint_first_poll_seconds),
        pending_poll_interval=timedelta(seconds=settings.endpoint_poll_interval_seconds),
        acceptance_first_look=timedelta(seconds=settings.acceptance_first_poll_seconds),
        acceptance_poll_max_interval=timedelta(
            seconds=settings.acceptance_poll_max_interval_seconds
        ),
        not_found_grace=timedelta(seconds=settings.drift_not_found_grace_seconds),
        visibility_window=timedelta(seconds=settings.endpoint_visibility_window_seconds),
        cleanup_max_backoff=timedelta(seconds=settings.cleanup_max_backoff_seconds),
        slot_decision_timeout=timedelta(seconds=settings.slot_decision_timeout_seconds),
        default_org_limit=settings.default_org_limit,
        step_timeout=timedelta(seconds=settings.step_timeout_seconds),
    )


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a store method whether it is sync (run in a thread) or async."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    result = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


def _is_not_found(err: BaseException) -> bool:
    return isinstance(err, RPCError) and err.status == RPCStatusCode.NOT_FOUND


def view_from_state(
    state: ConnectionState, *, workflow_id: str | None = None, created_at: datetime | None = None
) -> ConnectionView:
    return ConnectionView(
        org_id=state.org_id,
        connection_id=state.connection_id,
        status=str(state.status),
        reason=state.reason,
        message=state.message,
        endpoint_service_name=state.endpoint_service_name,
        region=state.region,
        service_region=state.service_region,
        vpc_endpoint_id=state.vpc_endpoint_id,
        ips=list(state.ips),
        dns_names=list(state.dns_names),
        created_at=created_at,
        updated_at=datetime.now(UTC),
        workflow_id=workflow_id,
    )


def validate_create(
    settings: Settings,
    org_id: Any,
    endpoint_service_name: Any,
    region: Any = None,
    connection_id: Any = None,
    ports: Any = (),
    display_name: Any = None,
) -> validation.CreateRequest:
    """Every rule of a create (``starter.validation``) with this deployment's default and
    offered regions. Raises ``InvalidInput`` whose message names the fix."""
    return validation.create_request(
        org=org_id,
        endpoint_service_name=endpoint_service_name,
        region_name=region,
        connection=connection_id,
        name=display_name,
        port_list=ports,
        default_region=settings.aws_region,
        offered_regions=settings.endpoint_networks,
    )


class ConnectionsClient:
    def __init__(self, temporal_client: Client, store: Any, settings: Settings) -> None:
        self.temporal = temporal_client
        self.store = store
        self.settings = settings

    # ------------------------------------------------------------------ construction

    @classmethod
    async def connect(cls, settings: Settings, *, store: Any = None) -> ConnectionsClient:
        client = await connect_temporal(settings)
        if store is None:
            store = open_store(settings)
        return cls(client, store, settings)

    # ------------------------------------------------------------------ helpers

    def workflow_url(self, workflow_id: str) -> str:
        base = self.settings.temporal_ui_url.rstrip("/")
        return f"{base}/namespaces/{self.settings.temporal_namespace}/workflows/{workflow_id}"

    def _handle(self, org_id: str, connection_id: str) -> WorkflowHandle[Any, Any]:
        return self.temporal.get_workflow_handle(connection_workflow_id(org_id, connection_id))

    async def _query_state(self, handle: WorkflowHandle[Any, Any]) -> ConnectionState | None:
        try:
            return await handle.query(
                QUERY_STATUS, result_type=ConnectionState, rpc_timeout=timedelta(seconds=10)
            )
        except (RPCError, WorkflowQueryFailedError):
            return None

    async def _store_get(
        self, org_id: str, connection_id: str, with_timeline: bool = True
    ) -> ConnectionView | None:
        if self.store is None:
            return None
        return await _call(self.store.get, org_id, connection_id, with_timeline=with_timeline)

    # ------------------------------------------------------------------ commands

    async def create(
        self,
        org_id: str,
        endpoint_service_name: str,
        region: str | None = None,
        connection_id: str | None = None,
        display_name: str | None = None,
        ports: Iterable[int] = (),
        wait_admission: timedelta = timedelta(seconds=5),
    ) -> ConnectionView:
        req = validate_create(
            self.settings, org_id, endpoint_service_name, region, connection_id, ports,
            display_name,
        )
        cid = req.connection_id or new_connection_id()
        service_name, service_region, region = (
            req.endpoint_service_name, req.service_region, req.region
        )
        port_list = req.ports
        inp = ConnectionInput(
            org_id=org_id,
            connection_id=cid,
            endpoint_service_name=service_name,
            region=region,
            display_name=display_name,
            ports=port_list,
            options=connection_options(self.settings),
            release=CURRENT_RELEASE,
        )
        wid = inp.workflow_id
        summary = f"{org_id}: {display_name or cid} → {service_name} ({region})"
        start_args: dict[str, Any] = {
            "id": wid,
            "task_queue": self.settings.task_queue,
            "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
            "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
            "search_attributes": TypedSearchAttributes(
                [
                    SearchAttributePair(SA_ORG_ID, org_id),
                    SearchAttributePair(SA_STATUS, ConnectionStatus.PENDING.value),
                    SearchAttributePair(SA_REGION, region),
                ]
            ),
            "static_summary": summary[:200],
        }
        try:
            handle, state = await self._start_admitted(inp, start_args, wait_admission)
        except WorkflowAlreadyStartedError:
            # Closed workflow with this id: the create already happened.
            existing = await self.get(org_id, cid)
            self._check_same(existing, service_name)
            return existing
        if state is not None:
            self._check_same(state, service_name)
        view = await self._store_get(org_id, cid, with_timeline=False)
        if state is None:
            # No worker answered: the store, else the started workflow's own input, tells
            # whether this id already names another service (the start above was then a
            # no-op on the existing workflow).
            known: ConnectionView | ConnectionInput | None = view or await self._started_input(handle)
            if known is not None:
                self._check_same(known, service_name)
        if state is not None:
            fresh = view_from_state(
                state, workflow_id=wid, created_at=view.created_at if view else None
            )
            if view is not None:
                fresh.display_name = view.display_name
                fresh.updated_at = view.updated_at
            else:
                fresh.display_name = display_name
            return fresh
        if view is not None:
            return view
        # No worker answered yet: report what we know.
        return ConnectionView(
            org_id=org_id,
            connection_id=cid,
            status=ConnectionStatus.PENDING.value,
            endpoint_service_name=service_name,
            region=region,
            service_region=service_region,
            display_name=display_name,
            workflow_id=wid,
            created_at=datetime.now(UTC),
            updated_at=datetime.now(UTC),
        )

    async def _start_admitted(
        self, inp: ConnectionInput, start_args: dict[str, Any], wait: timedelta
    ) -> tuple[WorkflowHandle[Any, Any], ConnectionState | None]:
        """Start the connection's workflow (or find it running) and wait up to ``wait`` for
        it to leave admission; its state then, or None if it has not yet.

        The wait is one ``admitted`` update sent with the start: a status query every half
        second cost the Temporal server and the worker a share of every connection, more the
        busier they were (issue 12). The start is durable before this returns: a wait cut
        short before the server answered starts the workflow again (``USE_EXISTING`` makes
        that a no-op if the first start went through). A refused update (the workflow is
        already past admission, or a worker from before the update runs it) or one the
        server aborts (the workflow ended) falls back to status queries for the time left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait.total_seconds()
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            CONNECTION_WORKFLOW, inp, **start_args
        )
        try:
            async with asyncio.timeout(wait.total_seconds()):
                state: ConnectionState = await self.temporal.execute_update_with_start_workflow(
                    UPDATE_ADMITTED,
                    start_workflow_operation=start,
                    id=f"admitted-{secrets.token_hex(8)}",
                    result_type=ConnectionState,
                )
            return await start.workflow_handle(), state
        except WorkflowUpdateFailedError:
            handle = await start.workflow_handle()
        except RPCError:
            # E.g. "update aborted by closing workflow" (it ended while we waited; more than
            # the server's 10 updates in flight is asked again by the SDK until the wait
            # ends): the start alone is idempotent, and a status query still answers.
            handle = await self._started(inp, start, start_args)
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None  # the caller's cancel, not the wait's end
            return await self._started(inp, start, start_args), None
        finally:
            fut = _start_answer(start)
            if fut is not None and fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: asyncio would log an unread start error
        return handle, await self._query_until_admitted(handle, deadline)

    async def _started(
        self,
        inp: ConnectionInput,
        start: WithStartWorkflowOperation[Any, Any],
        start_args: dict[str, Any],
    ) -> WorkflowHandle[Any, Any]:
        """The workflow's handle after a wait cut short: the start's if the server answered
        it, else from a plain start (idempotent: ``USE_EXISTING``)."""
        fut = _start_answer(start)
        if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
            handle: WorkflowHandle[Any, Any] = fut.result()
            return handle
        return await self.temporal.start_workflow(CONNECTION_WORKFLOW, inp, **start_args)

    async def _query_until_admitted(
        self, handle: WorkflowHandle[Any, Any], deadline: float
    ) -> ConnectionState | None:
        loop = asyncio.get_running_loop()
        pauses = paced(ADMISSION_FIRST_PAUSE, ADMISSION_MAX_PAUSE)
        while True:
            state = await self._query_state(handle)
            if state is not None and state.status not in ADMISSION_STATUSES:
                return state
            left = deadline - loop.time()
            if left <= 0:
                return state
            await asyncio.sleep(min(next(pauses), left))

    async def _started_input(self, handle: WorkflowHandle[Any, Any]) -> ConnectionInput | None:
        """The input the workflow was started with (its first history event)."""
        try:
            async for event in handle.fetch_history_events():
                payloads = event.workflow_execution_started_event_attributes.input.payloads
                decoded = await self.temporal.data_converter.decode(
                    payloads, [ConnectionInput]
                )
                return decoded[0] if decoded and isinstance(decoded[0], ConnectionInput) else None
        except (RPCError, ValueError, TypeError):
            return None
        return None

    @staticmethod
    def _check_same(
        existing: ConnectionView | ConnectionState | ConnectionInput, service_name: str
    ) -> None:
        """A reused connection id must name the same service (idempotent create)."""
        if existing.endpoint_service_name != service_name:
            raise Conflict(
                "CONNECTION_EXISTS",
                f"connection {existing.connection_id!r} already exists for "
                f"{existing.endpoint_service_name}; choose another connection id",
            )

    async def get(self, org_id: str, connection_id: str) -> ConnectionView:
        validation.org_id(org_id)
        validation.connection_id(connection_id)
        view = await self._store_get(org_id, connection_id, with_timeline=True)
        if view is not None:
            if view.workflow_id is None:
                view.workflow_id = connection_workflow_id(org_id, connection_id)
            if view.timeline is None:
                view.timeline = []
            return view
        handle = self._handle(org_id, connection_id)
        try:
            desc = await handle.describe()
        except RPCError as err:
            if _is_not_found(err):
                raise NotFound(
                    f"connection {connection_id!r} of org {org_id!r} does not exist"
                ) from None
            raise
        state = await self._query_state(handle)
        if state is None:
            raise NotFound(
                f"connection {connection_id!r} of org {org_id!r} has no status yet "
                "(is a worker running?)"
            )
        out = view_from_state(state, workflow_id=handle.id, created_at=desc.start_time)
        out.timeline = []
        return out

    async def current(self, org_id: str, connection_id: str) -> ConnectionView:
        """The freshest view: the workflow's own state when it answers, else the store."""
        handle = self._handle(org_id, connection_id)
        state = await self._query_state(handle)
        if state is None:
            return await self.get(org_id, connection_id)
        row = await self._store_get(org_id, connection_id, with_timeline=False)
        view = view_from_state(
            state, workflow_id=handle.id, created_at=row.created_at if row else None
        )
        if row is not None:
            view.display_name = row.display_name
            # A terminal row is final even if the query lags behind.
            if ConnectionStatus(row.status).terminal and not state.status.terminal:
                return row
        return view

    async def list(self, org_id: str | None = None) -> list[ConnectionView]:
        if org_id is not None:
            validation.org_id(org_id)
        if self.store is None:
            return []
        rows = await _call(self.store.list, org_id=org_id)
        return list(rows)

    async def _signal(self, org_id: str, connection_id: str, signal: str) -> ConnectionView:
        view = await self.get(org_id, connection_id)
        handle = self._handle(org_id, connection_id)
        try:
            await handle.signal(signal)
        except RPCError as err:
            if not _is_not_found(err):
                raise
            # The workflow has already closed: nothing left to do, report the final view.
            return await self.get(org_id, connection_id)
        return view

    async def delete(self, org_id: str, connection_id: str) -> ConnectionView:
        view = await self._signal(org_id, connection_id, SIGNAL_DELETE)
        if ConnectionStatus(view.status).terminal:
            return view
        # Give the workflow a moment to acknowledge, so callers see Deleting.
        deadline = asyncio.get_running_loop().time() + DELETE_ACK_WAIT
        pauses = paced(0.05, 0.25)
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            cur = await self.current(org_id, connection_id)
            if cur.status != view.status or ConnectionStatus(cur.status).terminal:
                return cur
            await asyncio.sleep(min(next(pauses), left))
        return await self.current(org_id, connection_id)

    async def cancel(self, org_id: str, connection_id: str) -> ConnectionView:
        await self._signal(org_id, connection_id, SIGNAL_CANCEL)
        return await self.current(org_id, connection_id)

    async def retry(self, org_id: str, connection_id: str) -> ConnectionView:
        await self._signal(org_id, connection_id, SIGNAL_RETRY_NOW)
        return await self.current(org_id, connection_id)

    async def watch(
        self,
        org_id: str,
        connection_id: str,
        *,
        until: Iterable[str] = (),
        interval: float = 0.25,
        max_wait: timedelta | None = None,
        replay: bool = True,
    ) -> AsyncIterator[ConnectionView]:
        """Yield the connection each time its status (or AWS state/message) changes, until
        it is terminal or reaches one of ``until``."""
        stop = {str(s) for s in until}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait.total_seconds() if max_wait else None
        last_status: str | None = None
        last_key: tuple[Any, ...] | None = None
        seen: int | None = 0 if replay else None  # timeline entries already handled
        replayed: set[str] = set()
        while True:
            view = await self.current(org_id, connection_id)
            # Statuses that came and went between two polls are in the store's timeline:
            # replay them so a watcher sees every transition, in order.
            row = await self._store_get(org_id, connection_id, with_timeline=True)
            entries = (row.timeline or []) if row is not None else []
            if seen is None:  # replay=False: from the latest recorded status on
                seen = max(len(entries) - 1, 0)
                replayed.update(e.status for e in entries[:seen])
            for entry in entries[seen:]:
                replayed.add(entry.status)
                if entry.status != last_status:
                    last_status, last_key = entry.status, None
                    yield view.model_copy(update={"status": entry.status, "updated_at": entry.at})
            seen = len(entries)
            key = (view.status, view.reason, view.message, view.vpc_endpoint_id, tuple(view.ips))
            if view.status == last_status:
                if last_key is not None and key != last_key:
                    yield view  # same status, new details (message, IPs)
                last_key = key
            elif view.status not in replayed:  # the query is ahead of the store
                last_status, last_key = view.status, key
                yield view
            # else: the query lags the store (it moves once the write returned): skip
            latest = entries[-1].status if entries else view.status
            if any(ConnectionStatus(x).terminal or x in stop for x in (view.status, latest)):
                return
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(
                    f"connection {connection_id!r} still {view.status} after {max_wait}"
                )
            await asyncio.sleep(interval)

    async def wait_for(
        self,
        org_id: str,
        connection_id: str,
        statuses: Iterable[str],
        max_wait: timedelta = timedelta(seconds=60),
    ) -> ConnectionView:
        last: ConnectionView | None = None
        async for view in self.watch(org_id, connection_id, until=statuses, max_wait=max_wait):
            last = view
        assert last is not None
        return last

    # ------------------------------------------------------------------ customers

    async def _run_short(
        self, workflow: str, arg: Any, result_type: type[Any], wid: str, summary: str
    ) -> Any:
        """Run a short workflow (one activity in the worker) and return its result."""
        timeout = timedelta(seconds=self.settings.edge_timeout_seconds)
        try:
            return await self.temporal.execute_workflow(
                workflow,
                arg,
                id=wid,
                task_queue=self.settings.task_queue,
                result_type=result_type,
                execution_timeout=timeout,
                static_summary=summary[:200],
            )
        except WorkflowFailureError as err:
            cause: BaseException | None = err.cause
            while getattr(cause, "cause", None) is not None:
                cause = getattr(cause, "cause", None)
            raise Unavailable(
                f"{summary} did not complete: {cause or err}; check that a worker runs on "
                f"task queue {self.settings.task_queue!r} and try again"
            ) from None

    async def check(
        self, org_id: str, endpoint_service_name: str, region: str | None = None
    ) -> PreflightResult:
        """Pre-flight: what creating this connection would find. Creates nothing, takes no
        slot; runs as a short workflow whose one activity runs in the worker."""
        req = validation.check_request(
            org=org_id,
            endpoint_service_name=endpoint_service_name,
            region_name=region,
            default_region=self.settings.aws_region,
        )
        inp = PreflightInput(
            org_id=req.org_id,
            endpoint_service_name=req.endpoint_service_name,
            region=req.region,
            service_region=req.service_region,
            default_org_limit=self.settings.default_org_limit,
        )
        result: PreflightResult = await self._run_short(
            PREFLIGHT_WORKFLOW,
            inp,
            PreflightResult,
            f"privnet-check:{req.org_id}:{secrets.token_hex(6)}",
            f"pre-flight check of {req.endpoint_service_name} ({req.region}) for {req.org_id}",
        )
        return result

    async def setup(self, region: str | None = None, org_id: str | None = None) -> SetupFacts:
        """What a customer must configure: the principal to allow, the regions and AZ ids
        privnet offers, cross-region; with ``org_id`` also its limit and usage."""
        if org_id is not None:
            validation.org_id(org_id)
        if region is not None:
            validation.region(region, self.settings.endpoint_networks)
        facts: SetupFacts = await self._run_short(
            SETUP_FACTS_WORKFLOW,
            SetupInput(
                region=region, org_id=org_id, default_org_limit=self.settings.default_org_limit
            ),
            SetupFacts,
            f"privnet-setup:{secrets.token_hex(6)}",
            "setup facts" + (f" for {org_id}" if org_id else ""),
        )
        return facts

    # ------------------------------------------------------------------ operators

    async def stuck(
        self, older_than: timedelta = timedelta(minutes=15)
    ) -> builtins.list[StuckConnection]:
        """Running connections that need attention: still provisioning, or CleanupBlocked
        (an operator fix), after ``older_than``."""
        cutoff = datetime.now(UTC) - older_than
        wanted = {*PROVISIONING_STATUSES, ConnectionStatus.CLEANUP_BLOCKED}
        statuses = ", ".join(f'"{s.value}"' for s in sorted(wanted))
        query = (
            f'ExecutionStatus="Running" AND WorkflowType="{CONNECTION_WORKFLOW}" '
            f"AND PrivnetStatus IN ({statuses}) "
            f'AND StartTime < "{cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}"'
        )
        out: builtins.list[StuckConnection] = []
        async for wf in self.temporal.list_workflows(query):
            if wf.status != WorkflowExecutionStatus.RUNNING:
                continue
            handle = self.temporal.get_workflow_handle(wf.id, run_id=wf.run_id)
            org_id = wf.typed_search_attributes.get(SA_ORG_ID) or ""
            status = wf.typed_search_attributes.get(SA_STATUS) or ""
            item = StuckConnection(
                org_id=org_id,
                connection_id=wf.id.rsplit(":", 1)[-1],
                workflow_id=wf.id,
                status=status,
                started_at=wf.start_time,
                age_seconds=(datetime.now(UTC) - wf.start_time).total_seconds(),
                ui_url=self.workflow_url(wf.id),
            )
            try:
                desc = await handle.describe()
                for pa in desc.raw_description.pending_activities:
                    failure = pa.last_failure.message if pa.HasField("last_failure") else None
                    nxt = (
                        pa.next_attempt_schedule_time.ToDatetime(tzinfo=UTC)
                        if pa.HasField("next_attempt_schedule_time")
                        else None
                    )
                    item.pending_activities.append(
                        PendingActivity(
                            activity_type=pa.activity_type.name,
                            state=PendingActivityState.Name(pa.state).removeprefix(
                                "PENDING_ACTIVITY_STATE_"
                            ),
                            attempt=pa.attempt,
                            last_failure=failure or None,
                            next_attempt_at=nxt,
                        )
                    )
            except RPCError:
                pass
            state = await self._query_state(handle)
            details = await self._current_details(handle)
            item.details = details
            if state is not None:
                item.org_id = state.org_id
                item.connection_id = state.connection_id
                item.status = str(state.status)
                item.step = state.step
                item.aws_state = state.aws_state
                item.endpoint_service_name = state.endpoint_service_name
                item.vpc_endpoint_id = state.vpc_endpoint_id
                item.message = customer_fix(state, details)
            out.append(item)
        out.sort(key=lambda s: s.started_at or datetime.now(UTC))
        return out

    async def _current_details(self, handle: WorkflowHandle[Any, Any]) -> str:
        """What the workflow shows in the UI (``workflow.set_current_details``)."""
        try:
            md = await handle.query(
                "__temporal_workflow_metadata",
                result_type=WorkflowMetadata,
                rpc_timeout=timedelta(seconds=10),
            )
        except Exception:  # noqa: BLE001 - optional information
            return ""
        return str(getattr(md, "current_details", "") or "")

    async def sweep(
        self, *, dry_run: bool = False, grace: timedelta | None = None
    ) -> SweepReport:
        """Run one sweep now (what the hourly schedule runs) and return its report:
        the orphans found and, unless ``dry_run``, those deleted."""
        if grace is None:
            grace = timedelta(seconds=self.settings.sweep_grace_seconds)
        if grace < timedelta(0):
            raise InvalidInput("INVALID_GRACE", f"grace {grace} must not be negative")
        report: SweepReport = await self.temporal.execute_workflow(
            SWEEP_WORKFLOW,
            SweepInput(dry_run=dry_run, grace=grace),
            id=f"privnet-sweep:manual:{secrets.token_hex(6)}",
            task_queue=self.settings.task_queue,
            result_type=SweepReport,
            execution_timeout=timedelta(minutes=30),
            static_summary=f"privnet sweep{' (dry run)' if dry_run else ''}",
        )
        return report

    def sweep_schedule(self) -> Schedule:
        interval = timedelta(seconds=self.settings.sweep_interval_seconds)
        return Schedule(
            action=ScheduleActionStartWorkflow(
                SWEEP_WORKFLOW,
                SweepInput(grace=timedelta(seconds=self.settings.sweep_grace_seconds)),
                id="privnet-sweep",
                task_queue=self.settings.task_queue,
                execution_timeout=timedelta(minutes=30),
            ),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=interval)]),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            state=ScheduleState(note="privnet: delete endpoints and policies no connection owns"),
        )

    async def ensure_sweep_schedule(self) -> bool:
        """Create the hourly sweep schedule, or bring it up to date; True when created."""
        schedule = self.sweep_schedule()
        try:
            await self.temporal.create_schedule(SWEEP_SCHEDULE_ID, schedule)
            return True
        except ScheduleAlreadyRunningError:
            pass
        handle = self.temporal.get_schedule_handle(SWEEP_SCHEDULE_ID)

        def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await handle.update(update)
        return False

    async def set_limit(self, org_id: str, limit: int) -> GuardUsage:
        """Store the override first (it survives the guard being terminated or reset), then
        tell the guard."""
        validation.org_id(org_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidInput("INVALID_LIMIT", f"limit {limit!r} must be an integer >= 0")
        if self.store is not None:
            await _call(self.store.set_org_limit, org_id, limit)
        await self.temporal.start_workflow(
            ORG_GUARD_WORKFLOW,
            OrgGuardInput(
                org_id=org_id,
                limit=self.settings.default_org_limit,
                leak_check_interval=timedelta(
                    seconds=self.settings.guard_leak_check_interval_seconds
                ),
            ),
            id=org_guard_workflow_id(org_id),
            task_queue=self.settings.guard_queue,
            start_signal=SIGNAL_SET_LIMIT,
            start_signal_args=[SetLimitRequest(limit=limit)],
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"privnet org guard for {org_id}",
        )
        # The signal is processed asynchronously; wait briefly until it shows.
        usage = await self.get_limit(org_id)
        for _ in range(50):
            if usage.limit == limit:
                break
            await asyncio.sleep(0.1)
            usage = await self.get_limit(org_id)
        return usage

    async def get_limit(self, org_id: str) -> GuardUsage:
        validation.org_id(org_id)
        handle = self.temporal.get_workflow_handle(org_guard_workflow_id(org_id))
        try:
            return await handle.query(
                QUERY_USAGE, result_type=GuardUsage, rpc_timeout=timedelta(seconds=10)
            )
        except (RPCError, WorkflowQueryFailedError, WorkflowFailureError) as err:
            if isinstance(err, RPCError) and not _is_not_found(err):
                raise
            stored = await _call(self.store.org_limit, org_id) if self.store is not None else None
            return GuardUsage(
                org_id=org_id,
                limit=self.settings.default_org_limit if stored is None else stored,
                usage=0,
                holders={},
            )


# ---------------------------------------------------------------------- wiring


async def connect_temporal(settings: Settings) -> Client:
    """The Temporal client, configured like the worker's (pydantic converter, TLS, key)."""
    from worker import connect  # the single source of client configuration

    return await connect(settings)


def open_store(settings: Settings) -> Any:
    """The store, migrated to head when ``PRIVNET_DB_AUTO_MIGRATE`` is on (default for
    SQLite), else checked to be current (``privnet db upgrade`` names the fix)."""
    from activities.store import Store
    from migrations import prepare_store

    store = Store(settings.database_url)
    prepare_store(settings, store)
    return store
