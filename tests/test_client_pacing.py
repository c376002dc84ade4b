"""How hard ``ConnectionsClient.create`` leans on Temporal while it waits for admission.

A status query every 0.1 s, then paced ones, were a measured share of the bench's CPU with
200 creates at once (issue 12); create now sends one ``admitted`` update with the start and
queries only when the workflow refuses it (already past admission). Counted here by a
client interceptor on the real dev server, not by the code under test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import client as tc
from temporalio import workflow
from temporalio.worker import Worker

from settings import Settings
from starter.client import ConnectionsClient
from tests.fakes import FakeActivities, FakeEnv, FakeWorld, fake_worker
from tests.wfutil import save_history, uid
from workflows.contracts import (
    QUERY_STATUS,
    ConnectionInput,
    ConnectionState,
    ConnectionStatus,
    connection_workflow_id,
    org_guard_workflow_id,
)

SERVICE = "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0"


class CountQueries(tc.Interceptor):
    """Counts the client's calls to the server that a create makes while it waits."""

    def __init__(self) -> None:
        self.queries = 0
        self.updates_with_start = 0
        self.starts = 0

    @property
    def calls(self) -> int:
        return self.queries + self.updates_with_start + self.starts

    def intercept_client(self, next: tc.OutboundInterceptor) -> tc.OutboundInterceptor:
        counter = self

        class Counting(tc.OutboundInterceptor):
            async def query_workflow(self, input: tc.QueryWorkflowInput) -> Any:
                counter.queries += 1
                return await super().query_workflow(input)

            async def start_update_with_start_workflow(
                self, input: tc.StartWorkflowUpdateWithStartInput
            ) -> tc.WorkflowUpdateHandle[Any]:
                counter.updates_with_start += 1
                return await super().start_update_with_start_workflow(input)

            async def start_workflow(
                self, input: tc.StartWorkflowInput
            ) -> tc.WorkflowHandle[Any, Any]:
                counter.starts += 1
                return await super().start_workflow(input)

        return Counting(next)


@dataclass
class Counted:
    client: ConnectionsClient
    counter: CountQueries
    temporal: tc.Client


def counted(temporal: tc.Client, task_queue: str) -> Counted:
    counter = CountQueries()
    config = temporal.config()
    config["interceptors"] = [counter]
    counting = tc.Client(**config)
    return Counted(
        ConnectionsClient(counting, None, Settings(task_queue=task_queue)), counter, counting
    )


@pytest.fixture
async def unanswered_guard(temporal_client: tc.Client, tmp_path: Path) -> AsyncIterator[Counted]:
    """A worker whose org guards are never polled: its connections stay Pending."""
    from activities.guard import GuardActivities
    from worker import build_worker

    world = FakeWorld(tmp_path / "world.db")
    tq = uid("tq")
    worker = build_worker(
        temporal_client,
        Settings(),
        task_queue=tq,
        activities=[FakeActivities(world), GuardActivities(temporal_client, uid("nobody"))],
    )
    async with worker:
        yield counted(temporal_client, tq)


async def test_create_waits_for_admission_without_polling(unanswered_guard: Counted) -> None:
    cc, counter = unanswered_guard.client, unanswered_guard.counter
    org = uid("pace")
    began = time.monotonic()
    view = await cc.create(org, SERVICE, connection_id="db", wait_admission=timedelta(seconds=5))
    took = time.monotonic() - began
    try:
        assert view.status == "Pending"
        assert 4.9 <= took < 8, took  # it waited the whole admission time, and no longer
        # Looks every 0.1 s made about 50 queries here, paced ones 10; now the one update
        # sent with the start waits, and a plain start confirms the workflow exists.
        assert counter.queries == 0, counter.queries
        assert counter.updates_with_start == 1, counter.updates_with_start
        assert counter.calls <= 2, vars(counter)
        desc = await unanswered_guard.temporal.get_workflow_handle(view.workflow_id).describe()
        assert desc.status == tc.WorkflowExecutionStatus.RUNNING
    finally:
        for wid in (view.workflow_id, org_guard_workflow_id(org)):
            try:
                await unanswered_guard.temporal.get_workflow_handle(wid).terminate("test over")
            except Exception:  # noqa: BLE001 - the guard may never have started
                pass


async def test_create_returns_soon_after_admission(
    temporal_client: tc.Client, tmp_path: Path
) -> None:
    async with fake_worker(temporal_client, tmp_path / "world.db", FakeEnv) as env:
        c = counted(temporal_client, env.task_queue)
        org = uid("pace")
        began = time.monotonic()
        view = await c.client.create(
            org, SERVICE, connection_id="db", wait_admission=timedelta(seconds=5)
        )
        took = time.monotonic() - began
        assert view.status != "Pending"
        assert took < 4.5, took  # admitted within a second or so: not the full 5 s wait
        assert (c.counter.queries, c.counter.updates_with_start, c.counter.starts) == (0, 1, 0)

        # The same create again, past admission: the workflow refuses the update (nothing
        # in its history) and one status query answers.
        again = await c.client.create(
            org, SERVICE, connection_id="db", wait_admission=timedelta(seconds=5)
        )
        assert again.status != "Pending"
        assert again.workflow_id == view.workflow_id
        assert (c.counter.queries, c.counter.updates_with_start, c.counter.starts) == (1, 2, 0)
        history = await temporal_client.get_workflow_handle(view.workflow_id).fetch_history()
        accepted = [
            e
            for e in history.events
            if e.HasField("workflow_execution_update_accepted_event_attributes")
        ]
        assert len(accepted) == 1, len(accepted)
        await c.client.delete(org, "db")
        handle = temporal_client.get_workflow_handle(view.workflow_id)
        await asyncio.wait_for(handle.result(), 30)
        await save_history(handle, "connection_admitted_by_update")


async def test_create_without_any_worker_returns_a_started_workflow(
    temporal_client: tc.Client,
) -> None:
    """No worker polls the queue: the update sent with the start never gets an answer. The
    create returns Pending at the end of its wait, and the workflow exists (a wait cut
    short before the server answered is followed by a plain, idempotent start)."""
    c = counted(temporal_client, uid("nobody-home"))
    org = uid("pace")
    began = time.monotonic()
    view = await c.client.create(
        org, SERVICE, connection_id="db", wait_admission=timedelta(seconds=2)
    )
    took = time.monotonic() - began
    handle = temporal_client.get_workflow_handle(view.workflow_id)
    try:
        assert view.status == "Pending"
        assert 1.9 <= took < 5, took
        assert c.counter.queries == 0, vars(c.counter)
        desc = await handle.describe()
        assert desc.status == tc.WorkflowExecutionStatus.RUNNING
        assert desc.workflow_type == "PrivateConnectionWorkflow"
    finally:
        await handle.terminate("test over")


async def test_one_create_sent_many_times_at_once(unanswered_guard: Counted) -> None:
    """More creates of one connection at once than the server keeps updates in flight for
    one workflow (10): it refuses the rest with RESOURCE_EXHAUSTED, which the SDK asks
    again until the wait ends. Every create returns the same Pending connection at the end
    of its wait, none fails, none polls."""
    cc, counter = unanswered_guard.client, unanswered_guard.counter
    org = uid("pace")

    async def timed_create() -> tuple[float, Any]:
        began = time.monotonic()
        view = await cc.create(org, SERVICE, connection_id="db", wait_admission=timedelta(seconds=3))
        return time.monotonic() - began, view

    results = await asyncio.gather(*(timed_create() for _ in range(14)))
    views = [v for _, v in results]
    try:
        assert {v.workflow_id for v in views} == {views[0].workflow_id}
        assert {v.status for v in views} == {"Pending"}
        assert all(2.9 <= took < 6 for took, _ in results), [t for t, _ in results]
        assert counter.updates_with_start == 14
        assert counter.queries == 0, vars(counter)
    finally:
        for wid in (views[0].workflow_id, org_guard_workflow_id(org)):
            try:
                await unanswered_guard.temporal.get_workflow_handle(wid).terminate("test over")
            except Exception:  # noqa: BLE001 - the guard may never have started
                pass


async def test_create_whose_workflow_closes_while_it_waits(unanswered_guard: Counted) -> None:
    """The workflow ends (terminated here) while create waits on its update: the server
    aborts the update with an error; create still answers from the workflow (a status
    query) instead of failing."""
    cc, counter = unanswered_guard.client, unanswered_guard.counter
    org = uid("pace")
    creating = asyncio.create_task(
        cc.create(org, SERVICE, connection_id="db", wait_admission=timedelta(seconds=5))
    )
    try:
        wid = connection_workflow_id(org, "db")
        handle = unanswered_guard.temporal.get_workflow_handle(wid)
        for _ in range(50):  # until the workflow exists
            try:
                await handle.describe()
                break
            except Exception:  # noqa: BLE001 - not started yet
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        await handle.terminate("closed while create waits")
        view = await asyncio.wait_for(creating, 15)
        assert view.workflow_id == wid
        assert counter.updates_with_start == 1, vars(counter)
        assert counter.queries >= 1, vars(counter)  # answered by the fallback
    finally:
        creating.cancel()
        try:
            await unanswered_guard.temporal.get_workflow_handle(
                org_guard_workflow_id(org)
            ).terminate("test over")
        except Exception:  # noqa: BLE001 - the guard may never have started
            pass


@workflow.defn(name="PrivateConnectionWorkflow", sandboxed=False)
class ConnectionWithoutTheUpdate:
    """What a worker from before the ``admitted`` update runs (the API deployed first): the
    status query only; it leaves admission half a second after it starts."""

    @workflow.init
    def __init__(self, inp: ConnectionInput) -> None:
        self._state = ConnectionState(
            org_id=inp.org_id,
            connection_id=inp.connection_id,
            status=ConnectionStatus.PENDING,
            endpoint_service_name=inp.endpoint_service_name,
            region=inp.region,
            service_region=inp.region,
        )

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> ConnectionState:
        return self._state

    @workflow.run
    async def run(self, inp: ConnectionInput) -> None:
        await workflow.sleep(0.5)
        self._state.status = ConnectionStatus.CHECKING_PRINCIPAL
        await workflow.wait_condition(lambda: False)


async def test_create_against_a_worker_without_the_update(temporal_client: tc.Client) -> None:
    """The worker refuses the unknown update; create falls back to status queries and
    still returns soon after admission."""
    tq = uid("older-worker")
    async with Worker(temporal_client, task_queue=tq, workflows=[ConnectionWithoutTheUpdate]):
        c = counted(temporal_client, tq)
        org = uid("pace")
        began = time.monotonic()
        view = await c.client.create(
            org, SERVICE, connection_id="db", wait_admission=timedelta(seconds=5)
        )
        took = time.monotonic() - began
        try:
            assert view.status == "CheckingPrincipal", view
            assert took < 4.5, took
            assert c.counter.updates_with_start == 1, vars(c.counter)
            assert c.counter.queries >= 1, vars(c.counter)
        finally:
            await temporal_client.get_workflow_handle(view.workflow_id).terminate("test over")
