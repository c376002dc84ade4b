"""The real connection workflow with a bug in step 4: a stand-in for any unexpected
exception (its own module so the workflow sandbox imports only workflow code)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import ConnectionInput, ConnectionState, EndpointAddresses

from workflows.connection import PrivateConnectionWorkflow


@workflow.defn(name="PrivateConnectionWorkflow")
class ExplodingConnection(PrivateConnectionWorkflow):
    @workflow.init
    def __init__(self, inp: ConnectionInput) -> None:
        super().__init__(inp)

    @workflow.run
    async def run(self, inp: ConnectionInput) -> ConnectionState:
        return await super().run(inp)

    async def _apply(self, addresses: EndpointAddresses) -> None:
        raise RuntimeError("a bug")
