"""Error classification for the connection workflow: pure functions, no I/O.

Forward steps turn an activity failure into ``ConnectionFailed`` (a stable reason code and a
message that names the fix). Cancellation is never a failure: ``is_cancellation`` lets every
``except`` pass it through so a cancelled connection ends ``Cancelled``. Compensation never
gives up: ``blocked_reason`` says what an operator must fix while it keeps retrying.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    TimeoutError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        ENDPOINT_NOT_FOUND,
        LOCAL_ACTIVITY_DEADLINE,
        NON_RETRYABLE_TYPES,
        Reason,
    )

# Endpoint states AWS reports that end a connection (compared lower-case). ``deleting`` is
# not among them: it is followed by ``deleted`` or NotFound, which are.
TERMINAL_AWS_STATES: dict[str, Reason] = {
    "rejected": Reason.ENDPOINT_REJECTED,
    "failed": Reason.ENDPOINT_FAILED,
    "expired": Reason.ENDPOINT_EXPIRED,
    "deleted": Reason.ENDPOINT_DELETED,
}
TERMINAL_STATE_FIX = {
    "rejected": "the service owner rejected the connection: ask them to accept it, then create "
    "the connection again",
    "failed": "AWS could not create the endpoint: check the customer's endpoint service and "
    "NLB are healthy, then create the connection again",
    "expired": "the connection request expired before the service owner accepted it: create "
    "the connection again and ask them to accept it",
    "deleted": "the endpoint was deleted outside privnet: create the connection again",
}

# Failures of a compensation step that only an operator can fix; the message names the fix.
OPERATOR_FIXES: dict[str, str] = {
    Reason.AWS_ACCESS_DENIED: "grant the missing IAM action to privnet's endpoints role",
    Reason.KUBERNETES_FORBIDDEN: "grant the missing RBAC verb to privnet's worker "
    "(deploy/rbac.yaml)",
    Reason.CONFIGURATION_ERROR: "fix privnet's configuration",
}


class ConnectionFailed(Exception):
    """A terminal failure of a forward step: reason code + a message that names the fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def terminal_state_failure(state: str, endpoint_id: str) -> ConnectionFailed | None:
    """The failure an authoritative AWS endpoint state means, None for a live state."""
    s = state.lower()
    reason = TERMINAL_AWS_STATES.get(s)
    if reason is None:
        return None
    return ConnectionFailed(reason, f"endpoint {endpoint_id} is {state}: {TERMINAL_STATE_FIX[s]}")


def is_cancellation(err: BaseException) -> bool:
    """Workflow cancellation, as a timer/condition sees it or as an activity reports it."""
    return is_cancelled_exception(err)


def is_application_failure(err: BaseException) -> bool:
    """An exception the workflow itself should end with (compensate, then ``Failed``).

    Not cancellation (that ends ``Cancelled``), not the SDK's control flow (continue-as-new,
    eviction: they must propagate) and not a nondeterminism error (a bad deploy: the
    workflow task must fail and retry, not tear the customer's connection down)."""
    if is_cancellation(err) or isinstance(err, asyncio.CancelledError):
        return False
    if isinstance(err, workflow.NondeterminismError | workflow.ContinueAsNewError):
        return False
    return isinstance(err, Exception)


def error_type(err: BaseException) -> str | None:
    """The ``ApplicationError.type`` of an activity failure, if it has one."""
    cause = err.cause if isinstance(err, ActivityError) else err
    return cause.type if isinstance(cause, ApplicationError) else None


def is_not_found(err: BaseException) -> bool:
    """AWS answered InvalidVpcEndpointId.NotFound (after any eventual-consistency window)."""
    return error_type(err) == ENDPOINT_NOT_FOUND


def failure_of(err: BaseException, default_reason: str, step: str) -> ConnectionFailed:
    """Classify a forward step's failure into a stable reason code and a message naming the
    fix. Callers pass cancellation through before calling this (``is_cancellation``)."""
    if isinstance(err, ConnectionFailed):
        return err
    cause: BaseException | None = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, ApplicationError) and cause.type != LOCAL_ACTIVITY_DEADLINE:
        if cause.type == ENDPOINT_NOT_FOUND:
            return ConnectionFailed(
                Reason.ENDPOINT_DELETED,
                f"{cause.message}: the endpoint was deleted outside privnet; create the "
                "connection again",
            )
        if cause.type in NON_RETRYABLE_TYPES:
            return ConnectionFailed(cause.type or default_reason, cause.message)
        return ConnectionFailed(default_reason, f"{step} failed: {cause.message}")
    if isinstance(cause, TimeoutError) or (
        isinstance(cause, ApplicationError) and cause.type == LOCAL_ACTIVITY_DEADLINE
    ):
        return ConnectionFailed(
            default_reason,
            f"{step} did not succeed before its deadline (AWS or Kubernetes kept failing "
            "transiently): check the worker logs and the endpoints account, then create the "
            "connection again",
        )
    return ConnectionFailed(default_reason, f"{step} failed: {err}")


def blocked_reason(err: BaseException, what: str) -> str:
    """Why a compensation step cannot finish yet, naming what an operator must fix."""
    cause = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, ApplicationError):
        fix = OPERATOR_FIXES.get(cause.type or "", "check the worker logs and fix the cause")
        return f"cannot {what} ({cause.type}: {cause.message}); {fix}: privnet keeps retrying"
    if isinstance(cause, TimeoutError):
        return f"cannot {what}: it keeps timing out; check the worker and AWS/Kubernetes"
    return f"cannot {what}: {err}; privnet keeps retrying"
