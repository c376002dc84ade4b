"""PrivateConnectionWorkflow: one durable workflow per private connection.

``run`` owns the platform concerns: it runs the connection (``_run``), and whatever ends
it (a stop request, a terminal failure, Temporal cancellation, an unexpected exception) it
compensates, records the final status and waits for its handlers. ``_run`` only moves
forward: steps 0 acquire an org slot, 1 check the principal, 2 create the endpoint, 3 wait
for its IPs, 4 apply the Cilium policies, 5 mark Active, then serve the connection
(``serving.ActiveService``) until ``delete`` or ``cancel``. Each step registers its undo
with the saga before it runs (``saga.Saga``).

Deterministic code only: no I/O, clocks or randomness.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    # The workflow's parts: deterministic, stateless modules (constants and classes only),
    # so they are imported once and shared, not re-imported for every workflow run (about
    # half of a cached run's memory). Only this module is sandboxed per run.
    from workflows.cleanup import Cleanup
    from workflows.contracts import (
        ACT_ACQUIRE_SLOT,
        ACT_CHECK_PRINCIPAL,
        ACT_CREATE_ENDPOINT,
        ACT_REQUEST_SLOT,
        ADMISSION_STATUSES,
        QUERY_STATUS,
        SA_ENDPOINT_ID,
        SA_ORG_ID,
        SA_REGION,
        SA_STATUS,
        SIGNAL_CANCEL,
        SIGNAL_DELETE,
        SIGNAL_RETRY_NOW,
        SIGNAL_SLOT_DECISION,
        UPDATE_ADMITTED,
        CheckPrincipalInput,
        ConnectionInput,
        ConnectionState,
        ConnectionStatus,
        CreateEndpointInput,
        EndpointAddresses,
        EndpointRef,
        InvalidInput,
        Reason,
        ServiceInfo,
        SlotDecision,
        SlotRequest,
        parse_service_region,
    )
    from workflows.core import FOREVER_RETRY, StopRequested
    from workflows.errors import (
        ConnectionFailed,
        error_type,
        failure_of,
        is_application_failure,
        is_cancellation,
    )
    from workflows.polling import EndpointPoller
    from workflows.saga import Saga
    from workflows.serving import ActiveService

S = ConnectionStatus

# A create refused with these types created nothing: its undo is dropped. Any other outcome
# (a timeout, a lost response) may hide an endpoint, which the undo finds by its tags.
NOTHING_CREATED = frozenset(
    {
        Reason.ENDPOINT_CREATE_FAILED,
        Reason.PRINCIPAL_NOT_ALLOWED,
        Reason.AZ_NOT_SUPPORTED,
        Reason.REGION_NOT_SUPPORTED,
        Reason.CONFIGURATION_ERROR,
        Reason.AWS_ACCESS_DENIED,
        Reason.QUOTA_EXCEEDED,
        Reason.INVALID_SERVICE_NAME,
    }
)


@workflow.defn(name="PrivateConnectionWorkflow")
class PrivateConnectionWorkflow(EndpointPoller, ActiveService, Cleanup):
    @workflow.init
    def __init__(self, inp: ConnectionInput) -> None:
        self._inp = inp
        try:
            service_region = parse_service_region(inp.endpoint_service_name)
        except InvalidInput:
            service_region = ""
        self._state = ConnectionState(
            org_id=inp.org_id,
            connection_id=inp.connection_id,
            status=S.PENDING,
            endpoint_service_name=inp.endpoint_service_name,
            region=inp.region,
            service_region=service_region,
        )
        self._stop = None
        self._cancelled = False  # Temporal cancellation (UI/CLI), not the cancel signal
        self._retry_now = False
        self._slot: SlotDecision | None = None
        self._saga = Saga()
        self._in_flight = []
        self._deferred_search_attributes = []
        self._failure: ConnectionFailed | None = None
        self._rejected = False
        self._acceptance_required = False
        self._attempts = 0
        self._checks = 0
        self._not_found_since = None
        # Until then, a NotFound for our new endpoint is EC2 eventual consistency.
        self._visible_by: datetime | None = None
        if inp.resume is not None:
            r = inp.resume
            self._state.seq = r.seq
            self._state.status = r.status
            self._state.reason = r.reason
            self._state.message = r.message
            self._state.vpc_endpoint_id = r.vpc_endpoint_id
            self._state.ips = list(r.ips)
            self._state.dns_names = list(r.dns_names)
            self._acceptance_required = r.acceptance_required
            self._not_found_since = r.not_found_since
            self._stop = r.stop
            self._retry_now = r.retry_now
            self._register_slot_undo()
            self._register_endpoint_undo()
            self._register_policies_undo()

    # ------------------------------------------------------------------ handlers

    @workflow.signal(name=SIGNAL_DELETE)
    def delete(self) -> None:
        self._stop = "delete"
        self._state.delete_requested = True

    @workflow.signal(name=SIGNAL_CANCEL)
    def cancel(self) -> None:
        self._stop = "cancel"
        self._state.delete_requested = True

    @workflow.signal(name=SIGNAL_RETRY_NOW)
    def retry_now(self) -> None:
        self._retry_now = True

    @workflow.signal(name=SIGNAL_SLOT_DECISION)
    def slot_decision(self, decision: SlotDecision) -> None:
        if decision.connection_id == self._inp.connection_id:
            self._slot = decision

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> ConnectionState:
        return self._state

    @workflow.update(name=UPDATE_ADMITTED)
    async def admitted(self) -> ConnectionState:
        """The state once the connection has left admission: ``create`` sends it with the
        start and waits on it, one round trip where a status query every half second cost
        the Temporal server and the worker a share of each connection (issue 12)."""
        await workflow.wait_condition(lambda: self._state.status not in ADMISSION_STATUSES)
        return self._state

    @admitted.validator
    def _admitted_only_while_pending(self) -> None:
        # Past admission (a create sent again, a worker restarted) the status query answers
        # at once: refused here, the update leaves nothing in the history.
        if self._state.status not in ADMISSION_STATUSES:
            raise ValueError(f"already past admission: {self._state.status.value}")

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, inp: ConnectionInput) -> ConnectionState:
        # The starter sets these at start and continue-as-new carries them: written here
        # only when missing (e.g. a workflow started by hand).
        self._set_search_attributes(
            SA_ORG_ID.value_set(inp.org_id),
            SA_REGION.value_set(inp.region),
            SA_STATUS.value_set(self._state.status.value),
        )
        cancellation: BaseException | None = None
        try:
            await self._run()
        except StopRequested:
            pass
        except ConnectionFailed as err:
            self._failure = err
        except BaseException as err:  # noqa: BLE001 - cancellation is not an Exception
            if is_cancellation(err):
                cancellation = err
                self._cancelled = True
                self._stop = "cancel"
            elif is_application_failure(err):
                workflow.logger.exception("unexpected error; compensating")
                self._failure = ConnectionFailed(
                    Reason.INTERNAL_ERROR,
                    f"privnet hit an unexpected error ({type(err).__name__}: {err}); "
                    "everything created was cleaned up: report it, then create the "
                    "connection again",
                )
            else:
                raise  # continue-as-new, eviction, nondeterminism: not the connection's end

        # Compensation runs to completion even if the workflow is cancelled again.
        done = asyncio.ensure_future(self._finish())
        while not done.done():
            try:
                await asyncio.shield(done)
            except asyncio.CancelledError:
                self._cancelled = True
                self._stop = "cancel"
        done.result()
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._state.status == S.CANCELLED and self._cancelled and cancellation is not None:
            raise cancellation
        return self._state

    async def _run(self) -> None:
        if self._inp.resume is None:
            if not await self._provision():
                self._rejected = True
                return
        self._check_stop()
        await self._serve()

    # ------------------------------------------------------------------ provisioning

    async def _provision(self) -> bool:
        """Steps 0-5. False when the org guard denied a slot."""
        if not self._state.service_region:
            raise ConnectionFailed(
                Reason.INVALID_SERVICE_NAME,
                f"endpoint service name {self._inp.endpoint_service_name!r} is not valid",
            )
        await self._record(S.PENDING, "connection requested")
        if not await self._acquire_slot():
            return False
        self._check_stop()
        service = await self._check_principal()
        self._check_stop()
        ref = await self._create_endpoint(service)
        addresses = await self._wait_for_ips(ref)
        self._check_stop()
        await self._apply(addresses)
        self._check_stop()
        try:
            await self._record(S.ACTIVE, f"reachable at {', '.join(addresses.ips)}", strict=True)
        except (ActivityError, ApplicationError) as err:  # a local activity fails bare
            if is_cancellation(err):
                raise
            raise failure_of(err, Reason.ACTIVATION_FAILED, "marking the connection Active") from None
        return True

    async def _acquire_slot(self) -> bool:
        """Step 0: ask the org guard (idempotent per connection). False when denied."""
        inp, opts = self._inp, self._inp.options
        self._details("Waiting for the organization's connection slot", "org guard decision")
        slot_undo = self._register_slot_undo()  # a release is harmless if nothing was granted
        request = SlotRequest(
            org_id=inp.org_id,
            connection_id=inp.connection_id,
            workflow_id=workflow.info().workflow_id,
            default_limit=opts.default_org_limit,
        )
        if self._current():
            self._slot = await self._ask_guard(request)
        else:
            await self._ask_guard_legacy(request)
        if self._slot is None:  # stop requested before the guard answered
            raise StopRequested()
        if self._slot.granted:
            return True
        self._saga.forget(slot_undo)
        self._state.reason = Reason.LIMIT_REACHED.value
        self._state.message = (
            f"organization {inp.org_id} already uses {self._slot.usage} of its "
            f"{self._slot.limit} private connections: delete one, or raise the limit with "
            f"`privnet limits set --org {inp.org_id} N`"
        )
        return False

    async def _ask_guard(self, request: SlotRequest) -> SlotDecision:
        """One activity whose result is the decision (the guard's acquire update). Not a
        local activity: it waits on another workflow, and while a local activity runs the
        connection answers no query (``privnet status``, the API's admission wait) until
        its workflow task's next heartbeat, up to 8 s."""
        timeout = self._inp.options.slot_decision_timeout
        try:
            decision: SlotDecision = await self._interruptible(
                lambda: self._activity(
                    ACT_ACQUIRE_SLOT,
                    request,
                    SlotDecision,
                    summary="ask the org guard for a slot",
                    retry=RetryPolicy(maximum_interval=timedelta(seconds=10)),
                    start_to_close=min(timeout, timedelta(seconds=30)),
                    schedule_to_close=timeout,
                )
            )
        except ActivityError as err:
            if is_cancellation(err):
                raise
            raise self._slot_timeout(timeout) from None
        return decision

    async def _ask_guard_legacy(self, request: SlotRequest) -> None:
        """Histories from before the acquire update: a signal there, a signal back."""
        timeout = self._inp.options.slot_decision_timeout
        deadline = workflow.now() + timeout
        while self._slot is None:
            self._check_stop()
            left = deadline - workflow.now()
            if left <= timedelta(0):
                raise self._slot_timeout(timeout)
            await self._activity(
                ACT_REQUEST_SLOT,
                request,
                None,
                summary="ask the org guard for a slot",
                retry=FOREVER_RETRY,
            )
            try:
                await workflow.wait_condition(
                    lambda: self._slot is not None or self._stop is not None,
                    timeout=min(left, self._inp.options.slot_request_interval),
                    timeout_summary="slot decision",
                )
            except TimeoutError:
                pass

    @staticmethod
    def _slot_timeout(timeout: timedelta) -> ConnectionFailed:
        return ConnectionFailed(
            Reason.SLOT_TIMEOUT,
            f"the org guard did not answer within {timeout}: check that a privnet worker "
            "is polling the guards' task queue (PRIVNET_GUARD_TASK_QUEUE), then create the "
            "connection again",
        )

    async def _check_principal(self) -> ServiceInfo:
        """Step 1: our principal can see the service; its AZs and acceptance setting."""
        status = await self._pass_through(
            S.CHECKING_PRINCIPAL, "checking our principal can see the service"
        )
        self._details("DescribeVpcEndpointServices in the endpoints account", "AWS answer")
        service: ServiceInfo = await self._step(
            ACT_CHECK_PRINCIPAL,
            CheckPrincipalInput(
                org_id=self._inp.org_id,
                connection_id=self._inp.connection_id,
                service_name=self._inp.endpoint_service_name,
                region=self._inp.region,
                service_region=self._state.service_region,
                status=status,
            ),
            ServiceInfo,
            reason=Reason.PRINCIPAL_CHECK_FAILED,
            what="check the principal can see the endpoint service",
            local=self._inp.release >= 5,
        )
        self._acceptance_required = service.acceptance_required
        return service

    async def _create_endpoint(self, service: ServiceInfo) -> EndpointRef:
        """Step 2. The undo is registered first: a crash, a lost response or a cancellation
        mid-call may hide a created endpoint."""
        status = await self._pass_through(S.CREATING_ENDPOINT, "creating the interface VPC endpoint")
        self._details("CreateVpcEndpoint (idempotent by ClientToken)", "AWS answer")
        undo = self._register_endpoint_undo()
        # Release 7: the policies' undo too. The first apply is a local activity (release 6):
        # its policies can exist with no trace in the history, when its workflow task was
        # lost (a worker killed) and the next attempt saw a stop before reaching the apply.
        # Deleting policies that were never applied is a no-op; leaving one is a breach.
        policies_undo = self._register_policies_undo() if self._inp.release >= 7 else None
        arg = CreateEndpointInput(
            org_id=self._inp.org_id,
            connection_id=self._inp.connection_id,
            service_name=self._inp.endpoint_service_name,
            region=self._inp.region,
            service_region=self._state.service_region,
            service_az_ids=service.usable_az_ids or service.az_ids,
            status=status,
        )
        try:
            ref = await self._side_effect(self._create_and_remember(arg))
        except ActivityError as err:
            if is_cancellation(err):
                raise
            if error_type(err) in NOTHING_CREATED:
                self._saga.forget(undo)
                if policies_undo is not None:
                    self._saga.forget(policies_undo)
            raise failure_of(err, Reason.ENDPOINT_CREATE_FAILED, "creating the endpoint") from None
        self._set_search_attributes(SA_ENDPOINT_ID.value_set(ref.vpc_endpoint_id))
        return ref

    async def _create_and_remember(self, arg: CreateEndpointInput) -> EndpointRef:
        """The create, remembering its result even if the workflow is cancelled meanwhile:
        the undo then deletes exactly this endpoint (not only what a tag lookup finds)."""
        window = self._inp.options.visibility_window
        try:
            ref: EndpointRef = await self._activity(
                ACT_CREATE_ENDPOINT, arg, EndpointRef, summary="create the interface VPC endpoint"
            )
        except ActivityError:
            self._visible_by = workflow.now() + window  # it may exist all the same
            raise
        self._visible_by = workflow.now() + window
        self._state.vpc_endpoint_id = ref.vpc_endpoint_id
        return ref

    async def _apply(self, addresses: EndpointAddresses) -> None:
        """Step 4. Its undo also covers a partial apply (one namespace of several): a policy
        must never outlive the endpoint, or a reused IP would open another org's endpoint."""
        self._state.ips = addresses.ips
        self._state.dns_names = addresses.dns_names
        status = await self._pass_through(
            S.APPLYING_POLICY, f"allowing egress to {', '.join(addresses.ips)}"
        )
        self._details("Applying CiliumNetworkPolicy in the task namespaces", "Kubernetes API")
        if self._inp.release < 7:  # from release 7 registered with the endpoint's
            self._register_policies_undo()
        try:
            # Release 6: a local activity (a few Kubernetes calls whose result the Active
            # write needs): no task queue round trip, no workflow task of its own. Its
            # retries wait inside the task only up to LOCAL_RETRY_IN_TASK, then on a timer.
            await self._apply_policies(
                addresses.ips, status=status, local=self._inp.release >= 6
            )
        except (ActivityError, ApplicationError) as err:  # a local activity's error is bare
            if is_cancellation(err):
                raise
            raise failure_of(err, Reason.POLICY_APPLY_FAILED, "applying the policy") from None
