"""The statuses a step passes through, written by the step's own activity (release 4).

The connection workflow hands the step's activity the ``StatusRecord`` of the status it
passes through (CheckingPrincipal, CreatingEndpoint, ApplyingPolicy); the activity writes
it before it acts, instead of the workflow writing it with a local activity of its own
(three fewer local activities, markers and activations per connection). The writer is the
store's ``record_checked``, injected by ``worker.real_activities``.
"""

from __future__ import annotations

from collections.abc import Callable

from temporalio.exceptions import ApplicationError

from workflows.contracts import StatusRecord

StatusWriter = Callable[[StatusRecord], object]


def write_passing_status(writer: StatusWriter | None, rec: StatusRecord | None) -> None:
    """Write the status a step passes through before the step acts (release 4 hands it to
    the step's activity instead of a local activity of its own). A write that fails fails
    this attempt: the step retries, the write first again (a seq is written once)."""
    if rec is None:
        return
    if writer is None:
        raise ApplicationError(
            f"this worker cannot record status {rec.status.value} of "
            f"{rec.org_id}/{rec.connection_id}: its activities were built without the store "
            "(build them with worker.real_activities)",
            type="NO_STATUS_WRITER",
        )
    writer(rec)
