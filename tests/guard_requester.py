"""A minimal workflow that stands in for a connection workflow when the org guard is
tested on its own: it only collects the ``slot_decision`` signals it receives."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import SIGNAL_SLOT_DECISION, SlotDecision


@workflow.defn(name="GuardRequester")
class GuardRequester:
    @workflow.init
    def __init__(self) -> None:
        self.decisions: list[SlotDecision] = []
        self.done = False

    @workflow.signal(name=SIGNAL_SLOT_DECISION)
    def slot_decision(self, decision: SlotDecision) -> None:
        self.decisions.append(decision)

    @workflow.signal
    def finish(self) -> None:
        self.done = True

    @workflow.query
    def received(self) -> list[SlotDecision]:
        return self.decisions

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.done)
        return len(self.decisions)
