"""How hard ``ConnectionsClient.create`` leans on Temporal while it waits for admission.

Each look is a status query: a round trip through the Temporal server to a worker that runs
it in the workflow's sandbox. With 200 creates at once, looks every 0.1 s were a measured
share of the bench's CPU (issue 12), so the looks are paced. Counted here by a client
interceptor on the real dev server, not by the code under test.
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

from settings import Settings
from starter.client import ConnectionsClient
from tests.fakes import FakeActivities, FakeEnv, FakeWorld, fake_worker
from tests.wfutil import uid
from workflows.contracts import org_guard_workflow_id

SERVICE = "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0"


class CountQueries(tc.Interceptor):
    def __init__(self) -> None:
        self.queries = 0

    def intercept_client(self, next: tc.OutboundInterceptor) -> tc.OutboundInterceptor:
        counter = self

        class Counting(tc.OutboundInterceptor):
            async def query_workflow(self, input: tc.QueryWorkflowInput) -> Any:
                counter.queries += 1
                return await super().query_workflow(input)

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


async def test_create_paces_its_admission_looks(unanswered_guard: Counted) -> None:
    cc, counter = unanswered_guard.client, unanswered_guard.counter
    org = uid("pace")
    began = time.monotonic()
    view = await cc.create(org, SERVICE, connection_id="db", wait_admission=timedelta(seconds=5))
    took = time.monotonic() - began
    try:
        assert view.status == "Pending"
        assert 4.9 <= took < 8, took  # it waited the whole admission time, and no longer
        # Looks every 0.1 s made about 50 queries here; paced ones 0.1 s growing to 0.5 s.
        assert 5 <= counter.queries <= 15, counter.queries
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
        await c.client.delete(org, "db")
        handle = temporal_client.get_workflow_handle(view.workflow_id)
        await asyncio.wait_for(handle.result(), 30)

