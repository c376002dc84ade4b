"""Step 3 of provisioning: wait until the endpoint is available, then read its ENI IPs.

The activity ``wait_for_state_change`` looks once per attempt and raises a retryable, benign
error while the state is unchanged, so Temporal's retry policy is the poll loop (capped
backoff, no history growth, the attempt count visible in the UI). This module loops on the
states it returns: ``pendingAcceptance`` waits for the customer (bounded by the acceptance
timeout), other live states wait for AWS (bounded by ``PENDING_DEADLINE``), the terminal
ones fail. ``retry_now`` restarts the poll at once; a stop request abandons it.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, RetryState, TimeoutError

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        ACT_GET_ENDPOINT_ADDRESSES,
        ACT_WAIT_FOR_STATE_CHANGE,
        ENDPOINT_NOT_VISIBLE_YET,
        NON_RETRYABLE_TYPES,
        STATE_UNCHANGED,
        ConnectionStatus,
        EndpointAddresses,
        EndpointAddressesInput,
        EndpointRef,
        EndpointState,
        Reason,
        WaitStateInput,
    )

from workflows.core import ConnectionCore
from workflows.errors import (
    ConnectionFailed,
    error_type,
    failure_of,
    is_cancellation,
    terminal_state_failure,
)

LOOK_ONCE_TRANSIENT = "look-once-transient-is-no-answer"
T = TypeVar("T")
S = ConnectionStatus
PENDING_DEADLINE = timedelta(minutes=30)  # AWS normally makes an endpoint available in ~2 min


class EndpointPoller(ConnectionCore):
    _visible_by: datetime | None

    async def _wait_for_ips(self, ref: EndpointRef) -> EndpointAddresses:
        endpoint_id = ref.vpc_endpoint_id
        state = ref.state
        acceptance_deadline: datetime | None = None
        pending_deadline = workflow.now() + PENDING_DEADLINE
        announced = False
        read: EndpointAddresses | None = None
        # Release 7: the create's own answer is a look, so a look right after it finds the
        # same state; the first waits until AWS could have finished (``pending_first_look``).
        after_create = ref.created and self._inp.release >= 7
        while (s := state.lower()) != "available":
            self._state.aws_state = state
            failure = terminal_state_failure(state, endpoint_id)
            if failure is not None:
                raise failure
            if s == "pendingacceptance":
                if acceptance_deadline is None:
                    acceptance_deadline = workflow.now() + self._inp.options.acceptance_timeout
                    await self._record(
                        S.WAITING_FOR_ACCEPTANCE,
                        f"endpoint {endpoint_id} awaits the service owner's acceptance",
                    )
                deadline = acceptance_deadline
                self._details(
                    f"Endpoint {endpoint_id} is pendingAcceptance",
                    "the customer to accept the endpoint connection",
                    fix="The customer must accept the connection request: VPC console → "
                    "Endpoint services → their service → Endpoint connections → Accept "
                    f"({endpoint_id}).",
                )
            else:
                if not announced:
                    announced = True
                    await self._record(S.WAITING_FOR_IP, f"endpoint {endpoint_id} is {state}")
                deadline = pending_deadline
                self._details(f"Endpoint {endpoint_id} is {state}", "AWS to make it available")
            if deadline - workflow.now() <= timedelta(0):
                raise self._wait_timeout(s, endpoint_id)
            result = await self._poll_until(endpoint_id, state, deadline, after_create)
            after_create = False
            state = result.state
            self._attempts = result.attempt
            read = result.addresses  # the poll that saw it available read the IPs too
        self._state.aws_state = state
        if not announced:
            await self._record(S.WAITING_FOR_IP, f"endpoint {endpoint_id} is available")
        addresses = read or await self._read_addresses(endpoint_id)
        if not addresses.ips:
            raise ConnectionFailed(
                Reason.ENDPOINT_FAILED,
                f"endpoint {endpoint_id} is available but has no network interface IPs: "
                "check the endpoints account's subnets, then create the connection again",
            )
        return addresses

    async def _read_addresses(self, endpoint_id: str) -> EndpointAddresses:
        self._details("Reading the endpoint's ENI private IPs", "AWS answer")
        addresses: EndpointAddresses = await self._step(
            ACT_GET_ENDPOINT_ADDRESSES,
            self._endpoint_input(
                EndpointAddressesInput, endpoint_id, not_found_retry_until=self._visible_by
            ),
            EndpointAddresses,
            reason=Reason.ENDPOINT_FAILED,
            what="read the endpoint's ENI IPs",
        )
        return addresses

    async def _poll_until(
        self, endpoint_id: str, last: str, deadline: datetime, after_create: bool = False
    ) -> EndpointState:
        """Poll until the state differs from ``last``, or fail at the deadline.

        ``last`` pending: one look (a local activity) at once, an endpoint may already be
        available; then the first wait and the poll loop. ``after_create`` (release 7, the
        state is the create's own answer): the first wait comes before that one look, and
        the poll loop one interval after it: AWS takes at least 30 s, and the look at once
        cost every connection a DescribeVpcEndpoints that found ``pending``."""
        schedule = self._schedule(last)
        if self._current():
            pending = last.lower() != "pendingacceptance"
            if pending and not after_create:
                seen = await self._look_once(endpoint_id, last)
                if seen is not None:
                    return seen
            opts = self._inp.options
            first = opts.pending_first_look if pending else opts.acceptance_first_look
            await self._pause(first, deadline, "first look")
            if pending and after_create:
                seen = await self._look_once(endpoint_id, last)
                if seen is not None:
                    return seen
                await self._pause(opts.pending_poll_interval, deadline, "next look")
        else:  # histories recorded before the schedule was shaped
            schedule = self._legacy_schedule(last)
        try:
            return await self._interruptible(
                functools.partial(
                    self._poll, endpoint_id, last, deadline - workflow.now(), schedule
                ),
                restart_on_retry_now=True,
            )
        except ActivityError as err:
            if is_cancellation(err):
                raise
            if not (isinstance(err.cause, TimeoutError) or err.retry_state == RetryState.TIMEOUT):
                raise failure_of(err, Reason.ENDPOINT_FAILED, "waiting for the endpoint") from None
        # Temporal gives up when the next retry would pass the deadline: wait for the
        # deadline itself and take one last look before failing.
        left = deadline - workflow.now()
        if left > timedelta(0):
            await self._wait_for_wake(left, "deadline of the wait")
            self._check_stop()
        seen = await self._look_once(endpoint_id, last)
        if seen is None:
            raise self._wait_timeout(last.lower(), endpoint_id)
        return seen

    async def _pause(self, interval: timedelta, deadline: datetime, summary: str) -> None:
        """Wait ``interval`` (no longer than the deadline); a stop or ``retry_now`` ends it."""
        pause = min(interval, deadline - workflow.now())
        if pause > timedelta(0):
            await self._wait_for_wake(pause, summary)
            self._check_stop()

    async def _look_once(self, endpoint_id: str, last: str) -> EndpointState | None:
        """One DescribeVpcEndpoints: the new state, or None while it is still ``last``."""
        try:
            return await self._poll(endpoint_id, last, None, self._schedule(last))
        except (ActivityError, ApplicationError) as err:  # a local activity's error is bare
            if is_cancellation(err):
                raise
            if error_type(err) in (STATE_UNCHANGED, ENDPOINT_NOT_VISIBLE_YET):
                return None  # nothing new yet
            if not _definite(err) and self._since(LOOK_ONCE_TRANSIENT):
                # Throttled, a 5xx, a worker lost mid-look: no answer is not an answer;
                # the poll looks again on its schedule (the soak found connections failed
                # by one RequestLimitExceeded here).
                return None
            raise failure_of(err, Reason.ENDPOINT_FAILED, "waiting for the endpoint") from None

    def _schedule(self, last: str) -> RetryPolicy:
        """The poll loop's retry policy for a state: constant while AWS provisions, growing
        while the customer has not accepted."""
        opts = self._inp.options
        if last.lower() == "pendingacceptance":
            return RetryPolicy(
                initial_interval=opts.acceptance_first_look,
                backoff_coefficient=2.0,
                maximum_interval=max(opts.acceptance_poll_max_interval, opts.acceptance_first_look),
                non_retryable_error_types=NON_RETRYABLE_TYPES,
            )
        return RetryPolicy(
            initial_interval=opts.pending_poll_interval,
            backoff_coefficient=1.0,
            maximum_interval=opts.pending_poll_interval,
            non_retryable_error_types=NON_RETRYABLE_TYPES,
        )

    def _legacy_schedule(self, last: str) -> RetryPolicy:
        opts = self._inp.options
        return RetryPolicy(
            initial_interval=opts.poll_initial_interval,
            backoff_coefficient=1.5,
            maximum_interval=(
                opts.acceptance_poll_max_interval
                if last.lower() == "pendingacceptance"
                else opts.poll_max_interval
            ),
            non_retryable_error_types=NON_RETRYABLE_TYPES,
        )

    async def _poll(
        self, endpoint_id: str, last: str, budget: timedelta | None, schedule: RetryPolicy
    ) -> EndpointState:
        """One poll loop: retries on ``schedule`` until the state differs from ``last``;
        ``budget`` None means a single look (a local activity from release 5: the first
        look, which often finds the endpoint available, needs no task queue round trip)."""
        state: EndpointState = await self._activity(
            ACT_WAIT_FOR_STATE_CHANGE,
            self._endpoint_input(
                WaitStateInput, endpoint_id, last_state=last, not_found_retry_until=self._visible_by
            ),
            EndpointState,
            summary=f"poll endpoint state (was {last})",
            retry=RetryPolicy(
                initial_interval=schedule.initial_interval,
                backoff_coefficient=schedule.backoff_coefficient,
                maximum_interval=schedule.maximum_interval,
                non_retryable_error_types=schedule.non_retryable_error_types,
                maximum_attempts=0 if budget is not None else 1,
            ),
            schedule_to_close=budget,
            local=budget is None and self._inp.release >= 5,
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


def _definite(err: BaseException) -> bool:
    """A failure that is an answer (non-retryable: bad input, a terminal AWS state), not a
    transient error or a timeout."""
    cause = err.cause if isinstance(err, ActivityError) else err
    return isinstance(cause, ApplicationError) and (
        cause.non_retryable or (cause.type or "") in NON_RETRYABLE_TYPES
    )
