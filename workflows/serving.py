"""The Active-service loop: an Active connection waits for ``delete``/``cancel`` and checks
its endpoint and policies periodically, repairing drift.

What a drift check may conclude:
- everything matches → nothing is written;
- the policy was deleted or the IPs changed → repair, record ``Active`` with what changed;
- AWS or Kubernetes cannot be seen (throttling, 5xx, timeouts, AccessDenied, a worker
  backlog) → ``Degraded``, look again sooner; nothing is ever torn down for this, and the
  connection returns to ``Active`` by itself;
- AWS answers authoritatively that the endpoint is over (``deleted``/``rejected``/
  ``expired``/``failed``, or NotFound on consecutive looks spanning the grace period) →
  ``ConnectionFailed``, and the saga cleans up.

The loop continues as new after a fixed number of checks or when the server suggests it,
never with a stop request unhandled, and only once every handler has finished.
"""

from __future__ import annotations

from datetime import datetime
from typing import NoReturn

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        ACT_GET_ENDPOINT_ADDRESSES,
        NON_RETRYABLE_TYPES,
        ConnectionStatus,
        EndpointAddresses,
        EndpointAddressesInput,
        Reason,
        ResumeState,
    )

from workflows.core import ConnectionCore
from workflows.errors import (
    ConnectionFailed,
    error_type,
    is_cancellation,
    is_not_found,
    terminal_state_failure,
)

S = ConnectionStatus


def _short(err: ActivityError) -> tuple[str, str]:
    """(code, text) of a drift-check failure, for the Degraded reason and message."""
    cause = err.cause
    code = error_type(err) or type(cause).__name__.upper()
    text = getattr(cause, "message", None) or str(cause or err)
    return code, text


class ActiveService(ConnectionCore):
    _not_found_since: datetime | None
    _checks: int
    _acceptance_required: bool

    async def _serve(self) -> None:
        """Serve until a stop request (returns). Raises ``ConnectionFailed`` when AWS says
        the endpoint is over; continues as new to keep the history bounded."""
        opts = self._inp.options
        while True:
            troubled = self._state.status == S.DEGRADED
            interval = opts.degraded_check_interval if troubled else opts.drift_check_interval
            self._details(
                f"{self._state.status.value}: reachable at {', '.join(self._state.ips)}",
                f"a delete or cancel; next check in {interval}",
                fix=self._state.message if troubled else None,
            )
            await self._wait_for_wake(interval, "drift check")
            if self._stop is not None:
                return
            await self._interruptible(self._drift_check)
            self._checks += 1
            if self._stop is not None:
                return
            if self._checks >= opts.drift_checks_per_run or (
                workflow.info().is_continue_as_new_suggested()
            ):
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._stop is not None:
                    return
                self._continue_as_new()

    async def _drift_check(self) -> None:
        """One look at the endpoint and the policies; repairs drift, never tears down on a
        transient answer."""
        opts = self._inp.options
        endpoint_id = self._state.vpc_endpoint_id
        assert endpoint_id is not None
        self._details("Drift check: reading the endpoint", "AWS answer")
        look = RetryPolicy(
            initial_interval=opts.poll_initial_interval,
            maximum_interval=opts.poll_max_interval,
            non_retryable_error_types=NON_RETRYABLE_TYPES,
        )
        try:
            addresses: EndpointAddresses = await self._activity(
                ACT_GET_ENDPOINT_ADDRESSES,
                self._endpoint_input(EndpointAddressesInput, endpoint_id),
                EndpointAddresses,
                summary="drift check: endpoint",
                retry=look,
                schedule_to_close=opts.drift_check_timeout,
            )
        except ActivityError as err:
            if is_cancellation(err):
                raise
            if is_not_found(err):
                await self._not_found(endpoint_id)
                return
            code, text = _short(err)
            await self._degrade(code, f"the drift check cannot read endpoint {endpoint_id} "
                                f"from AWS ({text}); nothing is torn down, retrying")
            return
        self._not_found_since = None
        failure = terminal_state_failure(addresses.state, endpoint_id)
        if failure is not None:
            raise failure
        state = addresses.state.lower()
        self._state.aws_state = addresses.state
        ips_changed = bool(addresses.ips) and sorted(addresses.ips) != sorted(self._state.ips)
        if ips_changed:
            self._state.ips = addresses.ips
            self._state.dns_names = addresses.dns_names
        self._details("Drift check: re-applying the policies", "Kubernetes API")
        try:
            result = await self._apply_policies(
                self._state.ips, retry=look, schedule_to_close=opts.drift_check_timeout
            )
        except ActivityError as err:
            if is_cancellation(err):
                raise
            code, text = _short(err)
            await self._degrade(code, f"the drift check cannot apply the policies ({text}); "
                                "the last applied policies stay in place, retrying")
            return
        if state != "available":
            await self._degrade(
                "ENDPOINT_" + state.upper(),
                f"AWS reports endpoint {endpoint_id} as {addresses.state}: the policies allow "
                f"its current IPs {', '.join(self._state.ips) or '(none)'}; checking again",
            )
            return
        what = []
        if ips_changed:
            what.append(f"endpoint IPs changed to {', '.join(self._state.ips)}")
        if result.changed:
            what.append(f"policy repaired in {', '.join(result.changed)}")
        if self._state.status == S.DEGRADED:
            what.insert(0, "AWS and Kubernetes answer again")
        if what:
            self._state.reason = None
            self._state.message = ""
            await self._record(S.ACTIVE, "drift repaired: " + "; ".join(what))

    async def _not_found(self, endpoint_id: str) -> None:
        """NotFound is authoritative only when seen on consecutive looks spanning the grace
        period: one eventually-consistent answer never kills a connection."""
        grace = self._inp.options.not_found_grace
        now = workflow.now()
        if self._not_found_since is None:
            self._not_found_since = now
        elif now - self._not_found_since >= grace:
            raise ConnectionFailed(
                Reason.ENDPOINT_DELETED,
                f"endpoint {endpoint_id} has not been found by AWS since "
                f"{self._not_found_since.isoformat()}: it was deleted outside privnet; "
                "create the connection again",
            )
        await self._degrade(
            "ENDPOINT_NOT_FOUND",
            f"AWS does not find endpoint {endpoint_id} (since "
            f"{self._not_found_since.isoformat()}); confirming for {grace} before ending the "
            "connection",
        )

    async def _degrade(self, code: str, message: str) -> None:
        """Show Degraded (store, search attribute, timeline) once per distinct cause."""
        if self._state.status == S.DEGRADED and self._state.reason == code:
            self._state.message = message
            return
        self._state.reason = code
        self._state.message = message
        await self._record(S.DEGRADED, message)

    def _continue_as_new(self) -> NoReturn:
        """Carry everything the next run needs, pending signals included."""
        assert self._state.vpc_endpoint_id is not None
        resume = ResumeState(
            seq=self._state.seq,
            vpc_endpoint_id=self._state.vpc_endpoint_id,
            ips=self._state.ips,
            dns_names=self._state.dns_names,
            acceptance_required=self._acceptance_required,
            status=self._state.status,
            reason=self._state.reason,
            message=self._state.message,
            not_found_since=self._not_found_since,
            stop=self._stop,
            retry_now=self._retry_now,
        )
        workflow.continue_as_new(self._inp.model_copy(update={"resume": resume}))
