"""PrivateConnectionWorkflow: one durable workflow per private connection.

Steps (each an activity, see DESIGN.md): 0 acquire an org slot, 1 check the principal,
2 create the endpoint, 3 wait for its IPs, 4 apply the Cilium policies, 5 mark Active.
Then it serves the connection (periodic drift repair) until ``delete`` or ``cancel``.
Compensation (the saga) undoes in reverse what ran, on delete, cancel, terminal failure
and Temporal cancellation. Deterministic code only: no I/O, clocks or randomness.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    RetryState,
    TimeoutError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        ACT_APPLY_POLICIES,
        ACT_CHECK_PRINCIPAL,
        ACT_CREATE_ENDPOINT,
        ACT_DELETE_ENDPOINT,
        ACT_DELETE_POLICIES,
        ACT_GET_ENDPOINT_ADDRESSES,
        ACT_RECORD_STATUS,
        ACT_RELEASE_SLOT,
        ACT_REQUEST_SLOT,
        ACT_WAIT_ENDPOINT_DELETED,
        ACT_WAIT_FOR_STATE_CHANGE,
        NON_RETRYABLE_TYPES,
        QUERY_STATUS,
        SA_ENDPOINT_ID,
        SA_ORG_ID,
        SA_REGION,
        SA_STATUS,
        SIGNAL_CANCEL,
        SIGNAL_DELETE,
        SIGNAL_RETRY_NOW,
        SIGNAL_SLOT_DECISION,
        STATE_UNCHANGED,
        ApplyPoliciesInput,
        ApplyPoliciesResult,
        CheckPrincipalInput,
        ConnectionInput,
        ConnectionState,
        ConnectionStatus,
        CreateEndpointInput,
        DeleteEndpointInput,
        DeleteEndpointResult,
        DeletePoliciesInput,
        EndpointAddresses,
        EndpointAddressesInput,
        EndpointRef,
        EndpointState,
        InvalidInput,
        Reason,
        ResumeState,
        ServiceInfo,
        SlotDecision,
        SlotRelease,
        SlotRequest,
        StatusRecord,
        WaitStateInput,
        parse_service_region,
    )

T = TypeVar("T")
S = ConnectionStatus

# Retry policies. Forward steps stop on the non-retryable types; compensation never stops.
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
STEP_DEADLINE = timedelta(minutes=15)  # all attempts of a forward step
PENDING_DEADLINE = timedelta(minutes=30)  # AWS normally makes an endpoint available in ~2 min

TERMINAL_AWS_STATES = {
    "rejected": Reason.ENDPOINT_REJECTED,
    "failed": Reason.ENDPOINT_FAILED,
    "expired": Reason.ENDPOINT_EXPIRED,
    "deleted": Reason.ENDPOINT_DELETED,
    "deleting": Reason.ENDPOINT_DELETED,
}
TERMINAL_STATE_FIX = {
    "rejected": "the service owner rejected the connection: ask them to accept it, then create "
    "the connection again",
    "failed": "AWS could not create the endpoint: check the customer's endpoint service and "
    "NLB are healthy, then create the connection again",
    "expired": "the connection request expired before the service owner accepted it: create "
    "the connection again and ask them to accept it",
    "deleted": "the endpoint was deleted outside privnet: create the connection again",
    "deleting": "the endpoint is being deleted outside privnet: create the connection again",
}


class ConnectionFailed(Exception):
    """A terminal failure of a forward step: reason code + a message that names the fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class StopRequested(Exception):
    """``delete`` or ``cancel`` arrived while a wait was in progress."""


def failure_of(err: BaseException, default_reason: str, step: str) -> ConnectionFailed:
    """Classify an activity failure into a stable reason code and a message naming the fix."""
    if isinstance(err, ConnectionFailed):
        return err
    cause: BaseException | None = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, ApplicationError):
        if cause.type in NON_RETRYABLE_TYPES:
            return ConnectionFailed(cause.type or default_reason, cause.message)
        return ConnectionFailed(default_reason, f"{step} failed: {cause.message}")
    if isinstance(cause, TimeoutError):
        return ConnectionFailed(
            default_reason,
            f"{step} did not succeed before its deadline (AWS or Kubernetes kept failing "
            "transiently): check the worker logs and the endpoints account, then create the "
            "connection again",
        )
    return ConnectionFailed(default_reason, f"{step} failed: {err}")


@workflow.defn(name="PrivateConnectionWorkflow")
class PrivateConnectionWorkflow:
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
        self._delete = False
        self._cancel = False
        self._retry_now = False
        self._slot: SlotDecision | None = None
        # Compensations for the steps that ran, in order; run in reverse.
        self._undo: list[str] = []
        self._in_flight: list[asyncio.Future[Any]] = []
        self._acceptance_required = False
        self._attempts = 0
        if inp.resume is not None:
            r = inp.resume
            self._state.seq = r.seq
            self._state.status = S.ACTIVE
            self._state.vpc_endpoint_id = r.vpc_endpoint_id
            self._state.ips = list(r.ips)
            self._state.dns_names = list(r.dns_names)
            self._acceptance_required = r.acceptance_required
            self._undo = ["slot", "endpoint", "policies"]

    # ------------------------------------------------------------------ handlers

    @workflow.signal(name=SIGNAL_DELETE)
    def delete(self) -> None:
        self._delete = True
        self._state.delete_requested = True

    @workflow.signal(name=SIGNAL_CANCEL)
    def cancel(self) -> None:
        self._cancel = True
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

    @property
    def _stopping(self) -> bool:
        return self._delete or self._cancel

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, inp: ConnectionInput) -> ConnectionState:
        workflow.upsert_search_attributes(
            [
                SA_ORG_ID.value_set(inp.org_id),
                SA_REGION.value_set(inp.region),
                SA_STATUS.value_set(self._state.status.value),
            ]
        )
        failure: ConnectionFailed | None = None
        cancelled: BaseException | None = None
        rejected = False
        try:
            if inp.resume is None:
                rejected = not await self._provision()
            if not rejected and not self._stopping:
                if await self._serve():
                    return self._continue_as_new()
        except ConnectionFailed as err:
            failure = err
        except StopRequested:
            pass
        except BaseException as err:  # noqa: BLE001 - cancellation arrives as many types
            if is_cancelled_exception(err):
                cancelled = err
            else:
                raise

        # Compensation runs to completion even if the workflow is cancelled again.
        comp = asyncio.ensure_future(self._compensate(failure, cancelled is not None, rejected))
        while not comp.done():
            try:
                await asyncio.shield(comp)
            except asyncio.CancelledError:
                continue
        comp.result()
        await workflow.wait_condition(workflow.all_handlers_finished)
        if cancelled is not None:
            raise cancelled
        return self._state

    # ------------------------------------------------------------------ provisioning

    async def _provision(self) -> bool:
        """Steps 0-5. Returns False when the org guard denied a slot."""
        inp = self._inp
        if not self._state.service_region:
            try:
                parse_service_region(inp.endpoint_service_name)
            except InvalidInput as err:
                raise ConnectionFailed(Reason.INVALID_SERVICE_NAME, err.message) from None
        await self._record(S.PENDING, "connection requested")

        # 0. acquire a slot from the org guard
        self._details("Waiting for the organization's connection slot", "org guard decision")
        self._undo.append("slot")  # release is harmless if nothing was granted
        await self._activity(
            ACT_REQUEST_SLOT,
            SlotRequest(
                org_id=inp.org_id,
                connection_id=inp.connection_id,
                workflow_id=workflow.info().workflow_id,
                default_limit=inp.options.default_org_limit,
            ),
            None,
            summary="ask the org guard for a slot",
            retry=FOREVER_RETRY,
        )
        timeout = inp.options.slot_decision_timeout
        try:
            await workflow.wait_condition(
                lambda: self._slot is not None or self._stopping,
                timeout=timeout,
                timeout_summary="slot decision timeout",
            )
        except builtins.TimeoutError:
            raise ConnectionFailed(
                Reason.SLOT_TIMEOUT,
                f"the org guard did not answer within {timeout}: check that a privnet worker "
                "is polling the task queue, then create the connection again",
            ) from None
        if self._stopping:
            raise StopRequested()
        assert self._slot is not None
        if not self._slot.granted:
            self._undo.remove("slot")
            self._state.reason = Reason.LIMIT_REACHED.value
            self._state.message = (
                f"organization {inp.org_id} already uses {self._slot.usage} of its "
                f"{self._slot.limit} private connections: delete one, or raise the limit with "
                f"`privnet limits set --org {inp.org_id} N`"
            )
            return False

        # 1. check the principal
        await self._record(S.CHECKING_PRINCIPAL, "checking our principal can see the service")
        self._details("DescribeVpcEndpointServices in the endpoints account", "AWS answer")
        try:
            service: ServiceInfo = await self._activity(
                ACT_CHECK_PRINCIPAL,
                CheckPrincipalInput(
                    org_id=inp.org_id,
                    connection_id=inp.connection_id,
                    service_name=inp.endpoint_service_name,
                    region=inp.region,
                    service_region=self._state.service_region,
                ),
                ServiceInfo,
                summary="check the principal can see the endpoint service",
            )
        except ActivityError as err:
            raise failure_of(err, Reason.PRINCIPAL_CHECK_FAILED, "checking the principal") from None
        self._acceptance_required = service.acceptance_required

        # 2. create the endpoint
        if self._stopping:
            raise StopRequested()
        await self._record(S.CREATING_ENDPOINT, "creating the interface VPC endpoint")
        self._details("CreateVpcEndpoint (or find ours by tag)", "AWS answer")
        # Registered before the call: a worker crash, a lost response or a cancellation
        # mid-call may hide a created endpoint, which compensation finds by its tags.
        self._undo.append("endpoint")
        try:
            ref: EndpointRef = await self._side_effect(
                ACT_CREATE_ENDPOINT,
                CreateEndpointInput(
                    org_id=inp.org_id,
                    connection_id=inp.connection_id,
                    service_name=inp.endpoint_service_name,
                    region=inp.region,
                    service_region=self._state.service_region,
                    service_az_ids=service.usable_az_ids or service.az_ids,
                ),
                EndpointRef,
                summary="create the interface VPC endpoint",
            )
        except ActivityError as err:
            if isinstance(err.cause, ApplicationError) and err.cause.type in NON_RETRYABLE_TYPES:
                self._undo.remove("endpoint")  # AWS refused the request: nothing exists
            raise failure_of(err, Reason.ENDPOINT_CREATE_FAILED, "creating the endpoint") from None
        self._state.vpc_endpoint_id = ref.vpc_endpoint_id
        workflow.upsert_search_attributes([SA_ENDPOINT_ID.value_set(ref.vpc_endpoint_id)])

        # 3. wait for the endpoint to be available and read its ENI IPs
        addresses = await self._wait_for_ips(ref)

        # 4. apply the network policies
        if self._stopping:
            raise StopRequested()
        self._state.ips = addresses.ips
        self._state.dns_names = addresses.dns_names
        await self._record(S.APPLYING_POLICY, f"allowing egress to {', '.join(addresses.ips)}")
        self._details("Applying CiliumNetworkPolicy in the task namespaces", "Kubernetes API")
        # Registered before the call: a partial apply (one namespace of several) must never
        # outlive the endpoint, or a reused IP would open another org's endpoint.
        self._undo.append("policies")
        try:
            await self._apply_policies(addresses.ips)
        except ActivityError as err:
            raise failure_of(err, Reason.POLICY_APPLY_FAILED, "applying the policy") from None

        # 5. mark Active
        if self._stopping:
            raise StopRequested()
        try:
            await self._record(S.ACTIVE, f"reachable at {', '.join(addresses.ips)}", strict=True)
        except ActivityError as err:
            raise failure_of(
                err, Reason.ACTIVATION_FAILED, "marking the connection Active"
            ) from None
        return True

    async def _wait_for_ips(self, ref: EndpointRef) -> EndpointAddresses:
        """Step 3: the activity's retry policy is the poll loop; this loops on states."""
        inp = self._inp
        state = ref.state
        acceptance_deadline = None
        pending_deadline = workflow.now() + PENDING_DEADLINE
        entered_wait_for_ip = False
        while True:
            s = state.lower()
            self._state.aws_state = state
            if s == "available":
                break
            if s in TERMINAL_AWS_STATES:
                raise ConnectionFailed(
                    TERMINAL_AWS_STATES[s],
                    f"endpoint {ref.vpc_endpoint_id} is {state}: {TERMINAL_STATE_FIX[s]}",
                )
            if s == "pendingacceptance":
                if acceptance_deadline is None:
                    acceptance_deadline = workflow.now() + inp.options.acceptance_timeout
                    await self._record(
                        S.WAITING_FOR_ACCEPTANCE,
                        f"endpoint {ref.vpc_endpoint_id} awaits the service owner's acceptance",
                    )
                deadline = acceptance_deadline
                self._details(
                    f"Endpoint {ref.vpc_endpoint_id} is pendingAcceptance",
                    "the customer to accept the endpoint connection",
                    fix="The customer must accept the connection request: VPC console → "
                    "Endpoint services → their service → Endpoint connections → Accept "
                    f"({ref.vpc_endpoint_id}).",
                )
            else:
                if not entered_wait_for_ip:
                    entered_wait_for_ip = True
                    await self._record(
                        S.WAITING_FOR_IP, f"endpoint {ref.vpc_endpoint_id} is {state}"
                    )
                deadline = pending_deadline
                self._details(
                    f"Endpoint {ref.vpc_endpoint_id} is {state}", "AWS to make it available"
                )
            remaining = deadline - workflow.now()
            if remaining <= timedelta(0):
                raise self._wait_timeout(s, ref.vpc_endpoint_id)
            try:
                result = await self._interruptible(
                    functools.partial(self._poll_state, ref.vpc_endpoint_id, state, remaining)
                )
            except ActivityError as err:
                if not (
                    isinstance(err.cause, TimeoutError) or err.retry_state == RetryState.TIMEOUT
                ):
                    raise failure_of(
                        err, Reason.ENDPOINT_FAILED, "waiting for the endpoint"
                    ) from None
                # Temporal gives up when the next retry would pass the deadline: wait for
                # the deadline itself and take one last look before failing.
                result = await self._last_look(ref.vpc_endpoint_id, state, s, deadline)
            state = result.state
            self._attempts = result.attempt

        if not entered_wait_for_ip:
            await self._record(S.WAITING_FOR_IP, f"endpoint {ref.vpc_endpoint_id} is available")
        self._details("Reading the endpoint's ENI private IPs", "AWS answer")
        try:
            addresses: EndpointAddresses = await self._activity(
                ACT_GET_ENDPOINT_ADDRESSES,
                EndpointAddressesInput(region=inp.region, vpc_endpoint_id=ref.vpc_endpoint_id),
                EndpointAddresses,
                summary="read the endpoint's ENI IPs",
            )
        except ActivityError as err:
            raise failure_of(err, Reason.ENDPOINT_FAILED, "reading the endpoint IPs") from None
        if not addresses.ips:
            raise ConnectionFailed(
                Reason.ENDPOINT_FAILED,
                f"endpoint {ref.vpc_endpoint_id} is available but has no network interface IPs: "
                "check the endpoints account's subnets, then create the connection again",
            )
        return addresses

    async def _last_look(
        self, endpoint_id: str, last: str, s: str, deadline: datetime
    ) -> EndpointState:
        left = deadline - workflow.now()
        if left > timedelta(0):
            try:
                await workflow.wait_condition(
                    lambda: self._stopping or self._retry_now,
                    timeout=left,
                    timeout_summary="deadline of the wait",
                )
            except builtins.TimeoutError:
                pass
            if self._stopping:
                raise StopRequested()
        try:
            return await self._poll_state(endpoint_id, last, None)
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == STATE_UNCHANGED:
                raise self._wait_timeout(s, endpoint_id) from None
            raise failure_of(err, Reason.ENDPOINT_FAILED, "waiting for the endpoint") from None

    async def _poll_state(
        self, endpoint_id: str, last: str, budget: timedelta | None
    ) -> EndpointState:
        """One poll loop: retries (with capped backoff) until the state differs from last."""
        opts = self._inp.options
        state: EndpointState = await self._activity(
            ACT_WAIT_FOR_STATE_CHANGE,
            WaitStateInput(region=self._inp.region, vpc_endpoint_id=endpoint_id, last_state=last),
            EndpointState,
            summary=f"poll endpoint state (was {last})",
            retry=RetryPolicy(
                initial_interval=opts.poll_initial_interval,
                backoff_coefficient=1.5,
                maximum_interval=(
                    opts.acceptance_poll_max_interval
                    if last.lower() == "pendingacceptance"
                    else opts.poll_max_interval
                ),
                non_retryable_error_types=NON_RETRYABLE_TYPES,
                maximum_attempts=0 if budget is not None else 1,  # None: a single look
            ),
            schedule_to_close=budget,
        )
        return state

    def _wait_timeout(self, state: str, endpoint_id: str) -> ConnectionFailed:
        if state == "pendingacceptance":
            return ConnectionFailed(
                Reason.ACCEPTANCE_TIMEOUT,
                f"the service owner did not accept endpoint {endpoint_id} within "
                f"{self._inp.options.acceptance_timeout}: ask them to accept it (or to turn off "
                "acceptance), then create the connection again",
            )
        return ConnectionFailed(
            Reason.ENDPOINT_FAILED,
            f"endpoint {endpoint_id} stayed {state} for {PENDING_DEADLINE}: check the endpoint "
            "in the endpoints account, then create the connection again",
        )

    # ------------------------------------------------------------------ active

    async def _serve(self) -> bool:
        """Wait for delete/cancel; repair drift periodically. True = continue as new."""
        interval = self._inp.options.drift_check_interval
        while not self._stopping:
            self._details(
                f"Active: reachable at {', '.join(self._state.ips)}",
                "a delete or cancel; drift check every " + str(interval),
            )
            try:
                await workflow.wait_condition(
                    lambda: self._stopping or self._retry_now,
                    timeout=interval,
                    timeout_summary="drift check",
                )
            except builtins.TimeoutError:
                pass
            if self._stopping:
                break
            self._retry_now = False
            await self._repair_drift()
            if workflow.info().is_continue_as_new_suggested():
                return True
        return False

    async def _repair_drift(self) -> None:
        """Re-read the endpoint and re-apply the policy; record what changed."""
        assert self._state.vpc_endpoint_id is not None
        try:
            addresses: EndpointAddresses = await self._activity(
                ACT_GET_ENDPOINT_ADDRESSES,
                EndpointAddressesInput(
                    region=self._inp.region, vpc_endpoint_id=self._state.vpc_endpoint_id
                ),
                EndpointAddresses,
                summary="drift check: endpoint",
            )
        except ActivityError as err:
            failed = failure_of(err, Reason.ENDPOINT_DELETED, "checking the endpoint")
            if failed.reason in (Reason.ENDPOINT_DELETED, Reason.ENDPOINT_FAILED):
                raise failed from None
            workflow.logger.warning("drift check failed, will retry: %s", failed.message)
            return
        s = addresses.state.lower()
        if s in TERMINAL_AWS_STATES:
            raise ConnectionFailed(
                TERMINAL_AWS_STATES[s],
                f"endpoint {addresses.vpc_endpoint_id} is {addresses.state}: {TERMINAL_STATE_FIX[s]}",
            )
        ips_changed = addresses.ips and sorted(addresses.ips) != sorted(self._state.ips)
        if ips_changed:
            self._state.ips = addresses.ips
            self._state.dns_names = addresses.dns_names
        try:
            result = await self._apply_policies(self._state.ips)
        except ActivityError as err:
            workflow.logger.warning(
                "drift repair of the policy failed, will retry: %s",
                failure_of(err, Reason.POLICY_APPLY_FAILED, "applying the policy").message,
            )
            return
        if ips_changed or result.changed:
            what = []
            if ips_changed:
                what.append(f"endpoint IPs changed to {', '.join(self._state.ips)}")
            if result.changed:
                what.append(f"policy repaired in {', '.join(result.changed)}")
            await self._record(S.ACTIVE, "drift repaired: " + "; ".join(what))

    def _continue_as_new(self) -> NoReturn:
        assert self._state.vpc_endpoint_id is not None
        nxt = self._inp.model_copy(
            update={
                "resume": ResumeState(
                    seq=self._state.seq,
                    vpc_endpoint_id=self._state.vpc_endpoint_id,
                    ips=self._state.ips,
                    dns_names=self._state.dns_names,
                    acceptance_required=self._acceptance_required,
                )
            }
        )
        workflow.continue_as_new(nxt)

    # ------------------------------------------------------------------ compensation

    async def _compensate(
        self, failure: ConnectionFailed | None, cancelled: bool, rejected: bool
    ) -> None:
        inp = self._inp
        reason: str | None
        if failure is not None:
            final, reason, message = S.FAILED, failure.reason, failure.message
        elif rejected:
            final, reason, message = S.REJECTED, self._state.reason, self._state.message
        elif self._delete:
            final, reason, message = S.DELETED, None, "deleted"
        else:
            final, reason, message = S.CANCELLED, None, "cancelled"
            if cancelled:
                message = "cancelled from Temporal"
        self._state.reason = reason
        self._state.message = message

        await self._settle_in_flight()
        if self._undo:
            why = {S.FAILED: f"cleaning up after {reason}", S.DELETED: "delete requested"}
            await self._record(S.DELETING, why.get(final, "cleaning up: " + message))
        for step in reversed(self._undo):
            if step == "policies":
                self._details("Deleting the CiliumNetworkPolicies", "Kubernetes API")
                await self._activity(
                    ACT_DELETE_POLICIES,
                    DeletePoliciesInput(org_id=inp.org_id, connection_id=inp.connection_id),
                    None,
                    summary="compensate: delete policies",
                    retry=FOREVER_RETRY,
                )
            elif step == "endpoint":
                self._details("Deleting the VPC endpoint", "AWS to finish deleting it")
                target = DeleteEndpointInput(
                    region=inp.region,
                    connection_id=inp.connection_id,
                    org_id=inp.org_id,
                    vpc_endpoint_id=self._state.vpc_endpoint_id,
                )
                deleted: DeleteEndpointResult = await self._activity(
                    ACT_DELETE_ENDPOINT,
                    target,
                    DeleteEndpointResult,
                    summary="compensate: delete the endpoint",
                    retry=FOREVER_RETRY,
                )
                if deleted.vpc_endpoint_ids:
                    await self._activity(
                        ACT_WAIT_ENDPOINT_DELETED,
                        target,
                        None,
                        summary="compensate: wait until the endpoint is gone",
                        retry=RetryPolicy(
                            initial_interval=inp.options.poll_initial_interval,
                            backoff_coefficient=1.5,
                            maximum_interval=inp.options.poll_max_interval,
                            maximum_attempts=0,
                        ),
                    )
            elif step == "slot":
                self._details("Releasing the organization's slot", "org guard")
                await self._activity(
                    ACT_RELEASE_SLOT,
                    SlotRelease(
                        org_id=inp.org_id,
                        connection_id=inp.connection_id,
                        default_limit=inp.options.default_org_limit,
                    ),
                    None,
                    summary="compensate: release the org slot",
                    retry=FOREVER_RETRY,
                )
        if "endpoint" in self._undo:
            self._state.ips = []
            self._state.dns_names = []
        cleaned = bool(self._undo)
        self._undo.clear()
        await self._record(final, message + ("; cleaned up" if cleaned else ""))
        self._details(f"{final.value}" + (f": {message}" if reason else ""), "nothing (finished)")

    # ------------------------------------------------------------------ helpers

    async def _side_effect(self, name: str, arg: Any, result_type: type, *, summary: str) -> Any:
        """An activity that creates something. If the workflow is cancelled meanwhile, the
        activity is not abandoned: compensation first waits for it to finish, so what it
        creates is seen and undone (an abandoned attempt could create after the undo)."""
        task = asyncio.ensure_future(self._activity(name, arg, result_type, summary=summary))
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

    async def _apply_policies(self, ips: list[str]) -> ApplyPoliciesResult:
        result: ApplyPoliciesResult = await self._side_effect(
            ACT_APPLY_POLICIES,
            ApplyPoliciesInput(
                org_id=self._inp.org_id,
                connection_id=self._inp.connection_id,
                ips=ips,
                ports=self._inp.ports,
            ),
            ApplyPoliciesResult,
            summary="apply the CiliumNetworkPolicy",
        )
        return result

    async def _interruptible(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run a wait, restarting it on ``retry_now`` and abandoning it on delete/cancel."""
        while True:
            self._retry_now = False
            task = asyncio.ensure_future(make())
            interrupt = asyncio.ensure_future(
                workflow.wait_condition(lambda: self._stopping or self._retry_now)
            )
            try:
                done, _ = await workflow.wait(
                    [task, interrupt], return_when=asyncio.FIRST_COMPLETED
                )
            except BaseException:
                task.cancel()
                interrupt.cancel()
                raise
            if task in done:
                interrupt.cancel()
                return task.result()
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001 - the cancelled poll's outcome is moot
                pass
            if self._stopping:
                raise StopRequested()

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
    ) -> Any:
        if start_to_close is None:
            start_to_close = self._inp.options.step_timeout
        if schedule_to_close is None and retry is STEP_RETRY:
            schedule_to_close = STEP_DEADLINE
        return await workflow.execute_activity(
            name,
            arg,
            result_type=result_type,
            start_to_close_timeout=start_to_close,
            schedule_to_close_timeout=schedule_to_close,
            retry_policy=retry,
            summary=summary,
        )

    async def _record(self, status: ConnectionStatus, detail: str, *, strict: bool = False) -> None:
        """Record a status: workflow state, search attribute, store row + timeline event.

        ``strict`` lets a non-retryable store error surface (marking Active must succeed);
        other writes retry forever so a flaky database never loses a transition.
        """
        seq = self._state.seq + 1
        rec = StatusRecord(
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
        # The seq is consumed even if the write fails, so a later write always wins.
        self._state.seq = seq
        await self._activity(
            ACT_RECORD_STATUS,
            rec,
            None,
            summary=f"record status {status.value}",
            retry=STEP_RETRY if strict else FOREVER_RETRY,
        )
        # Query, search attribute and store agree: all move once the write succeeded.
        self._state.status = status
        self._state.step = detail
        workflow.upsert_search_attributes([SA_STATUS.value_set(status.value)])

    def _details(self, doing: str, waiting_for: str, *, fix: str | None = None) -> None:
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
