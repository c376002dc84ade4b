"""Workflows only the benchmark runs.

``BaselineWorkflow`` is Temporal's own baseline on this machine: five no-op activities in a
row, nothing else, on the default sandboxed runner. ``SlotRequester`` stands in for a
connection workflow when the org guard is measured alone: it waits for the guard's
``slot_decision`` signal and completes with it.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import SIGNAL_SLOT_DECISION, SlotDecision

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


@workflow.defn(name="BenchSlotRequester")
class SlotRequester:
    @workflow.init
    def __init__(self, connection_id: str) -> None:
        self._connection_id = connection_id
        self._decision: SlotDecision | None = None

    @workflow.signal(name=SIGNAL_SLOT_DECISION)
    def slot_decision(self, decision: SlotDecision) -> None:
        if decision.connection_id == self._connection_id:
            self._decision = decision

    @workflow.query(name="decided")
    def decided(self) -> bool:
        return self._decision is not None

    @workflow.run
    async def run(self, connection_id: str) -> bool:
        await workflow.wait_condition(lambda: self._decision is not None)
        assert self._decision is not None
        return self._decision.granted
