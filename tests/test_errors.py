"""The workflow's failure classification (pure): a step's deadline reads the same whether
it ran as an activity (a TimeoutError inside ActivityError) or as a local activity (the
worker's LocalActivityDeadline error, which arrives bare)."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError, TimeoutError, TimeoutType

from workflows.contracts import LOCAL_ACTIVITY_DEADLINE, Reason
from workflows.errors import failure_of


def test_a_local_activitys_deadline_reads_as_the_steps_timeout() -> None:
    local = failure_of(
        ApplicationError("check_principal did not succeed within its 0:15:00 deadline",
                         type=LOCAL_ACTIVITY_DEADLINE, non_retryable=True),
        Reason.PRINCIPAL_CHECK_FAILED, "check the principal",
    )
    timed_out = failure_of(
        TimeoutError("timeout", type=TimeoutType.SCHEDULE_TO_CLOSE, last_heartbeat_details=[]),
        Reason.PRINCIPAL_CHECK_FAILED, "check the principal",
    )
    assert local.reason == timed_out.reason == Reason.PRINCIPAL_CHECK_FAILED
    assert local.message == timed_out.message
    assert "did not succeed before its deadline" in local.message


def test_a_typed_failure_keeps_its_reason() -> None:
    err = ApplicationError("not allowed", type=Reason.PRINCIPAL_NOT_ALLOWED, non_retryable=True)
    failed = failure_of(err, Reason.PRINCIPAL_CHECK_FAILED, "check the principal")
    assert failed.reason == Reason.PRINCIPAL_NOT_ALLOWED and failed.message == "not allowed"
