"""Workflows only the benchmark runs.

``BaselineWorkflow`` is Temporal's own baseline on this machine: five no-op activities in a
row, nothing else, on the default sandboxed runner.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

BASELINE_ACTIVITIES = 5
BASELINE_TASK_QUEUE = "bench-baseline"


@activity.defn(name="bench_noop")
async def noop() -> None:
    return None


@workflow.defn(name="BenchBaselineWorkflow")
class BaselineWorkflow:
    @workflow.run
    async def run(self) -> None:
        for _ in range(BASELINE_ACTIVITIES):
            await workflow.execute_activity(noop, start_to_close_timeout=timedelta(seconds=30))
