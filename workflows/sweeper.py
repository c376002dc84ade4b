"""SweepWorkflow: one reconcile pass over privnet's endpoints and policies.

Started every hour by the Temporal Schedule ``privnet-sweeper`` (``privnet bootstrap``
creates it) and on demand by ``privnet sweep``. One activity lists the orphans (objects no
live connection owns, see ``activities/sweeper.py``); unless it is a dry run, one activity
per orphan whose grace period has passed deletes it after re-checking it. The result is the
report; the UI shows a summary in the current details.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        ACT_SWEEP_DELETE,
        ACT_SWEEP_FIND,
        SWEEP_WORKFLOW,
        SweepDeleteInput,
        SweepDeleteResult,
        SweepInput,
        SweepReport,
    )

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=["KUBERNETES_FORBIDDEN", "AWS_ACCESS_DENIED"],
)


@workflow.defn(name=SWEEP_WORKFLOW)
class SweepWorkflow:
    @workflow.run
    async def run(self, inp: SweepInput) -> SweepReport:
        report = await workflow.execute_activity(
            ACT_SWEEP_FIND,
            inp,
            result_type=SweepReport,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=RETRY,
            summary="list privnet's endpoints and policies; find those no connection owns",
        )
        due = [o for o in report.orphans if o.due]
        workflow.set_current_details(
            f"{len(report.orphans)} orphan(s), {len(due)} past the grace period "
            f"({'dry run' if inp.dry_run else 'deleting them'})"
        )
        if inp.dry_run:
            return report
        for orphan in due:
            result = await workflow.execute_activity(
                ACT_SWEEP_DELETE,
                SweepDeleteInput(orphan=orphan, grace=inp.grace),
                result_type=SweepDeleteResult,
                start_to_close_timeout=timedelta(minutes=1),
                retry_policy=RETRY,
                summary=f"delete orphan {orphan.kind} {orphan.id}",
            )
            (report.deleted if result.deleted else report.skipped).append(orphan.id)
        workflow.set_current_details(
            f"{len(report.orphans)} orphan(s): deleted {len(report.deleted)}, kept "
            f"{len(report.orphans) - len(report.deleted)}"
        )
        return report
