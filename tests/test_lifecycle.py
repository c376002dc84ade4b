"""The lifecycle keeps its promises under faults (issue 9), proven with the real worker
and activities against sandbox AWS and sandbox Kubernetes; the truth is read from the
sandboxes and the store.

- stop requests are never lost, however they fall against continue-as-new;
- a drift check that cannot see AWS or Kubernetes makes the connection Degraded, never
  tears it down, and it returns to Active by itself; only an authoritative AWS answer
  (NotFound over the grace period) ends it;
- compensation blocked by an error only an operator can fix shows CleanupBlocked, naming
  it, and finishes once it is fixed;
- terminating the org guard never lifts a limit; an unexpected exception still compensates.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from starter.client import ConnectionsClient
from tests.exploding_workflow import ExplodingConnection
from tests.realstack import RealWorld, make_world, policy_ips, real_input
from tests.wfutil import query, save_history, start, uid
from worker import Workers, activities_of, real_activities
from workflows.contracts import (
    SA_STATUS,
    SIGNAL_CANCEL,
    SIGNAL_DELETE,
    SIGNAL_RETRY_NOW,
    ConnectionState,
    org_guard_workflow_id,
)
from workflows.org_guard import OrgGuardWorkflow

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FAST_DRIFT: dict[str, Any] = {
    "drift_check_interval": timedelta(milliseconds=300),
    "degraded_check_interval": timedelta(milliseconds=300),
    "drift_check_timeout": timedelta(seconds=2),
    "poll_max_interval": timedelta(milliseconds=300),
}


@pytest.fixture(scope="module")
def world(temporal_env: WorkflowEnvironment, tmp_path_factory: Any) -> Iterator[RealWorld]:
    address = temporal_env.client.service_client.config.target_host
    yield from make_world(address, Path(tmp_path_factory.mktemp("lifecycle")))


@pytest.fixture
async def running(world: RealWorld, temporal_client: Client) -> AsyncIterator[RealWorld]:
    world.aws.clear_faults()
    async with world.worker(temporal_client):
        yield world
    world.aws.clear_faults()


async def _store_status(world: RealWorld, org: str, conn: str) -> str | None:
    view = await asyncio.to_thread(world.store.get, org, conn)
    return view.status if view else None


async def _wait_store(
    world: RealWorld, org: str, conn: str, status: str, within: float = 60
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (got := await _store_status(world, org, conn)) != status:
        if loop.time() > deadline or got in ("Failed", "Deleted", "Cancelled", "Rejected"):
            view = await asyncio.to_thread(world.store.get, org, conn)
            raise AssertionError(f"{org}/{conn} is {got}, never {status}: {view}")
        await asyncio.sleep(0.1)


async def _runs(client: Client, workflow_id: str) -> int:
    return len([w async for w in client.list_workflows(f'WorkflowId = "{workflow_id}"')])


def _intact(world: RealWorld, org: str, conn: str) -> None:
    (ep,) = world.live_endpoints(org, conn)
    ips = ep["ips"]
    policies = world.policies(org, conn)
    assert len(policies) == 2 and all(policy_ips(p) == ips for p in policies), policies


def _gone(world: RealWorld, org: str, conn: str) -> None:
    assert world.live_endpoints(org, conn) == []
    assert world.policies(org, conn) == []


# ---------------------------------------------------------------------- stop requests


async def test_stop_requests_are_never_lost_while_active_connections_continue_as_new(
    running: RealWorld, temporal_client: Client
) -> None:
    """Each drift check ends the run (drift_checks_per_run=1), so deletes and cancels fall
    on every moment of the continue-as-new cycle, including the task that continues."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    world = running
    service = world.seed.customer_services["allowed"]
    conns = [(uid("can"), uid("c")) for _ in range(6)]
    for org, conn in conns:
        inp = real_input(
            world, org, conn, service,
            drift_check_interval=timedelta(milliseconds=50), drift_checks_per_run=1,
        )
        await start(temporal_client, inp, world.task_queue)
    for org, conn in conns:
        await _wait_store(world, org, conn, "Active")
        wid = f"privnet-conn:{org}:{conn}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while await _runs(temporal_client, wid) < 2:
            assert loop.time() < deadline, "no continue-as-new happened"
            await asyncio.sleep(0.1)

    async def stop_later(i: int, org: str, conn: str) -> None:
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        handle = temporal_client.get_workflow_handle(f"privnet-conn:{org}:{conn}")
        await handle.signal(SIGNAL_DELETE if i % 2 == 0 else SIGNAL_CANCEL)

    await asyncio.gather(*(stop_later(i, o, c) for i, (o, c) in enumerate(conns)))
    for i, (org, conn) in enumerate(conns):
        expected = "Deleted" if i % 2 == 0 else "Cancelled"
        handle = temporal_client.get_workflow_handle(
            f"privnet-conn:{org}:{conn}", result_type=ConnectionState
        )
        result = await asyncio.wait_for(handle.result(), 60)
        assert result.status.value == expected, f"seed {seed}: {org}/{conn} {result}"
        assert await _store_status(world, org, conn) == expected
        await asyncio.to_thread(_gone, world, org, conn)


async def test_retry_now_during_the_check_before_continue_as_new_is_carried_over(
    running: RealWorld, temporal_client: Client
) -> None:
    world = running
    org, conn = uid("retry"), uid("c")
    inp = real_input(
        world, org, conn, world.seed.customer_services["allowed"],
        drift_check_interval=timedelta(hours=1), drift_checks_per_run=1,
    )
    handle = await start(temporal_client, inp, world.task_queue)
    await _wait_store(world, org, conn, "Active")
    assert await _runs(temporal_client, handle.id) == 1
    world.aws.add_latency(1.5, operations=["DescribeVpcEndpoints"])
    await handle.signal(SIGNAL_RETRY_NOW)  # a drift check now (slow), then continue-as-new
    await asyncio.sleep(0.5)
    latest = temporal_client.get_workflow_handle(handle.id, result_type=ConnectionState)
    await latest.signal(SIGNAL_RETRY_NOW)  # lands during that check: the next run honours it
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while await _runs(temporal_client, handle.id) < 3:
        assert loop.time() < deadline, "the retry_now sent during the check was dropped"
        await asyncio.sleep(0.2)
    world.aws.clear_faults()
    await latest.signal(SIGNAL_DELETE)
    assert (await latest.result()).status.value == "Deleted"


# ---------------------------------------------------------------------- drift


async def test_drift_check_that_cannot_see_aws_is_degraded_and_recovers_by_itself(
    running: RealWorld, temporal_client: Client
) -> None:
    world = running
    org, conn = uid("degr"), uid("c")
    inp = real_input(world, org, conn, world.seed.customer_services["allowed"], **FAST_DRIFT)
    handle = await start(temporal_client, inp, world.task_queue)
    await _wait_store(world, org, conn, "Active")
    world.aws.inject_fault("RequestLimitExceeded", operations=["DescribeVpcEndpoints"])
    await _wait_store(world, org, conn, "Degraded", within=30)
    state = await query(handle)
    assert state.status.value == "Degraded" and "nothing is torn down" in state.message
    assert (await handle.describe()).typed_search_attributes.get(SA_STATUS) == "Degraded"
    await asyncio.sleep(4)  # several more failed looks
    assert await _store_status(world, org, conn) == "Degraded"

    await asyncio.to_thread(_intact, world, org, conn)  # nothing was torn down
    world.aws.clear_faults()
    await _wait_store(world, org, conn, "Active", within=30)
    view = await asyncio.to_thread(world.store.get, org, conn)
    assert view is not None and view.timeline is not None
    statuses = [e.status for e in view.timeline]
    assert statuses[-2:] == ["Degraded", "Active"]
    assert "answer again" in view.timeline[-1].detail
    await save_history(handle, "connection_degraded_then_active")
    await handle.signal(SIGNAL_DELETE)
    assert (await handle.result()).status.value == "Deleted"
    await asyncio.to_thread(_gone, world, org, conn)


async def test_kubernetes_errors_during_drift_degrade_without_teardown(
    running: RealWorld, temporal_client: Client
) -> None:
    world = running
    org, conn = uid("degk"), uid("c")
    inp = real_input(world, org, conn, world.seed.customer_services["allowed"], **FAST_DRIFT)
    handle = await start(temporal_client, inp, world.task_queue)
    await _wait_store(world, org, conn, "Active")
    # The API server fails the next 15 policy requests, then answers again.
    world.kube.inject_error(500, path_contains="ciliumnetworkpolicies", times=15)
    await _wait_store(world, org, conn, "Degraded", within=30)
    await asyncio.to_thread(_intact, world, org, conn)
    await _wait_store(world, org, conn, "Active", within=60)
    await handle.signal(SIGNAL_DELETE)
    assert (await handle.result()).status.value == "Deleted"


async def test_endpoint_not_found_ends_the_connection_only_after_the_grace_period(
    running: RealWorld, temporal_client: Client
) -> None:
    world = running
    org, conn = uid("nf"), uid("c")
    inp = real_input(
        world, org, conn, world.seed.customer_services["allowed"],
        not_found_grace=timedelta(seconds=3), **FAST_DRIFT,
    )
    handle = await start(temporal_client, inp, world.task_queue)
    await _wait_store(world, org, conn, "Active")
    (ep,) = world.live_endpoints(org, conn)
    world.aws.set_delays(deleted_visible=0)  # gone at once: AWS answers NotFound
    try:
        world.ec2().delete_vpc_endpoints(VpcEndpointIds=[ep["vpc_endpoint_id"]])
        await _wait_store(world, org, conn, "Degraded", within=30)
        for _ in range(100):  # ("deleting" first, then NotFound)
            if (await query(handle)).reason == "ENDPOINT_NOT_FOUND":
                break
            await asyncio.sleep(0.1)
        assert (await query(handle)).reason == "ENDPOINT_NOT_FOUND"
        result = await asyncio.wait_for(handle.result(), 60)
    finally:
        world.aws.set_delays(deleted_visible=0.5)
    assert (result.status.value, result.reason) == ("Failed", "ENDPOINT_DELETED")
    view = await asyncio.to_thread(world.store.get, org, conn)
    assert view is not None and view.timeline is not None
    degraded_at = next(e.at for e in view.timeline if e.status == "Degraded")
    assert view.timeline[-1].at - degraded_at >= timedelta(seconds=3)
    await asyncio.to_thread(_gone, world, org, conn)


async def test_one_lagging_not_found_never_ends_an_active_connection(
    running: RealWorld, temporal_client: Client
) -> None:
    world = running
    org, conn = uid("lag"), uid("c")
    inp = real_input(
        world, org, conn, world.seed.customer_services["allowed"],
        not_found_grace=timedelta(seconds=30), **FAST_DRIFT,
    )
    handle = await start(temporal_client, inp, world.task_queue)
    await _wait_store(world, org, conn, "Active")
    world.aws.inject_fault("InvalidVpcEndpointId.NotFound", operations=["DescribeVpcEndpoints"])
    await _wait_store(world, org, conn, "Degraded", within=30)
    assert (await query(handle)).reason == "ENDPOINT_NOT_FOUND"
    world.aws.clear_faults()  # EC2 caught up: the endpoint is there after all
    await _wait_store(world, org, conn, "Active", within=30)
    await asyncio.to_thread(_intact, world, org, conn)
    await handle.signal(SIGNAL_DELETE)
    assert (await handle.result()).status.value == "Deleted"


async def test_new_endpoint_hidden_by_eventual_consistency_still_becomes_active(
    running: RealWorld, temporal_client: Client
) -> None:
    """For a while after CreateVpcEndpoint, EC2 answers NotFound for the new id (and hides
    it from tag lookups): the poll, the IP read and a delete retry instead of concluding."""
    world = running
    service = world.seed.customer_services["allowed"]
    world.aws.set_delays(lag=2.0)
    try:
        org, conn = uid("ec"), uid("c")
        inp = real_input(world, org, conn, service, visibility_window=timedelta(seconds=30))
        handle = await start(temporal_client, inp, world.task_queue)
        await _wait_store(world, org, conn, "Active", within=60)
        await asyncio.to_thread(_intact, world, org, conn)
        await handle.signal(SIGNAL_DELETE)
        assert (await handle.result()).status.value == "Deleted"

        # Cancelled while the new endpoint is still invisible: it is found and deleted.
        org2, conn2 = uid("ec"), uid("c")
        inp2 = real_input(world, org2, conn2, service, visibility_window=timedelta(seconds=30))
        handle2 = await start(temporal_client, inp2, world.task_queue)
        for _ in range(200):
            if world.created(org2, conn2):
                break
            await asyncio.sleep(0.02)
        await handle2.signal(SIGNAL_CANCEL)
        assert (await asyncio.wait_for(handle2.result(), 60)).status.value == "Cancelled"
    finally:
        world.aws.set_delays(lag=0)
    assert len(world.created(org2, conn2)) == 1
    await asyncio.to_thread(_gone, world, org, conn)
    await asyncio.to_thread(_gone, world, org2, conn2)


async def test_a_throttled_look_at_a_new_endpoint_is_no_answer_and_the_poll_goes_on(
    running: RealWorld, temporal_client: Client
) -> None:
    """Found by the soak: the look at once after the create is a single attempt; AWS
    throttling it (every retry botocore makes) failed the connection ENDPOINT_FAILED and
    tore down a healthy endpoint. A transient error is no answer: the poll looks again."""
    world = running
    service = world.seed.customer_services["allowed"]
    world.aws.inject_fault("RequestLimitExceeded", operations=["DescribeVpcEndpoints"])
    org, conn = uid("thr"), uid("c")
    try:
        handle = await start(temporal_client, real_input(world, org, conn, service),
                             world.task_queue)
        failed_look = False
        for _ in range(600):  # until the look's single attempt has failed
            async for ev in handle.fetch_history_events():
                # A local activity from release 5: its marker records the failure.
                marker = ev.marker_recorded_event_attributes
                if ev.HasField("marker_recorded_event_attributes") and marker.HasField("failure"):
                    failed_look = True
            if failed_look:
                break
            await asyncio.sleep(0.1)
        assert failed_look
    finally:
        world.aws.clear_faults()
    await _wait_store(world, org, conn, "Active", within=60)
    assert len(world.created(org, conn)) == 1
    await asyncio.to_thread(_intact, world, org, conn)
    await handle.signal(SIGNAL_DELETE)
    assert (await handle.result()).status.value == "Deleted"
    await asyncio.to_thread(_gone, world, org, conn)


async def test_owner_rejecting_an_accepted_endpoint_ends_the_connection(
    running: RealWorld, temporal_client: Client
) -> None:
    world = running
    service = world.seed.customer_services["acceptance_required"]
    org, conn = uid("rej"), uid("c")
    handle = await start(
        temporal_client, real_input(world, org, conn, service, **FAST_DRIFT), world.task_queue
    )
    await _wait_store(world, org, conn, "WaitingForAcceptance")
    (ep,) = world.live_endpoints(org, conn)
    assert world.aws.accept(service, ep["vpc_endpoint_id"]) == []
    await handle.signal(SIGNAL_RETRY_NOW)
    await _wait_store(world, org, conn, "Active", within=60)
    assert world.aws.reject(service, ep["vpc_endpoint_id"]) == []  # changed their mind
    result = await asyncio.wait_for(handle.result(), 60)
    assert (result.status.value, result.reason) == ("Failed", "ENDPOINT_REJECTED")
    assert "accept" in result.message
    await asyncio.to_thread(_gone, world, org, conn)


# ---------------------------------------------------------------------- compensation


async def test_cleanup_blocked_by_a_missing_iam_action_names_it_and_finishes_once_fixed(
    running: RealWorld, temporal_client: Client
) -> None:
    world = running
    org, conn = uid("iam"), uid("c")
    inp = real_input(world, org, conn, world.seed.customer_services["allowed"])
    handle = await start(temporal_client, inp, world.task_queue)
    await _wait_store(world, org, conn, "Active")
    world.aws.inject_fault("UnauthorizedOperation", operations=["DeleteVpcEndpoints"])
    await handle.signal(SIGNAL_DELETE)
    await _wait_store(world, org, conn, "CleanupBlocked")
    state = await query(handle)
    assert "ec2:DeleteVpcEndpoints" in state.message, state.message
    assert world.policies(org, conn) == []  # the policies went first (reverse order)
    assert len(world.live_endpoints(org, conn)) == 1
    world.aws.clear_faults()  # the operator granted the action
    await handle.signal(SIGNAL_RETRY_NOW)
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.status.value == "Deleted"
    await asyncio.to_thread(_gone, world, org, conn)



async def test_cleanup_blocked_by_rbac_names_the_fix_and_finishes_once_fixed(
    running: RealWorld, temporal_client: Client
) -> None:
    world = running
    org, conn = uid("blk"), uid("c")
    inp = real_input(world, org, conn, world.seed.customer_services["allowed"])
    handle = await start(temporal_client, inp, world.task_queue)
    await _wait_store(world, org, conn, "Active")
    world.kube.inject_error(403, method="DELETE", path_contains="ciliumnetworkpolicies", times=2)
    await handle.signal(SIGNAL_DELETE)
    await _wait_store(world, org, conn, "CleanupBlocked")
    state = await query(handle)
    assert "KUBERNETES_FORBIDDEN" in state.message and "RBAC" in state.message
    assert (await handle.describe()).typed_search_attributes.get(SA_STATUS) == "CleanupBlocked"
    await handle.signal(SIGNAL_RETRY_NOW)  # still forbidden once more
    await asyncio.sleep(1)
    await handle.signal(SIGNAL_RETRY_NOW)  # the operator fixed RBAC: it finishes
    result = await asyncio.wait_for(handle.result(), 60)
    assert result.status.value == "Deleted"
    view = await asyncio.to_thread(world.store.get, org, conn)
    assert view is not None and view.timeline is not None
    statuses = [e.status for e in view.timeline]
    assert statuses[-4:] == ["Deleting", "CleanupBlocked", "Deleting", "Deleted"], statuses
    await asyncio.to_thread(_gone, world, org, conn)
    await save_history(handle, "connection_cleanup_blocked")


async def test_an_unexpected_exception_still_compensates(
    world: RealWorld, temporal_client: Client
) -> None:
    tq = uid("explode")
    settings = world.settings(task_queue=tq)
    activities = activities_of(*real_activities(temporal_client, settings))
    workers = Workers(
        [
            Worker(
                temporal_client,
                task_queue=queue,
                workflows=workflows,
                activities=activities,
                activity_executor=ThreadPoolExecutor(8),
            )
            for queue, workflows in (
                (tq, [ExplodingConnection]),
                (settings.guard_queue, [OrgGuardWorkflow]),
            )
        ]
    )
    async with workers:
        org, conn = uid("boom"), uid("c")
        inp = real_input(world, org, conn, world.seed.customer_services["allowed"])
        handle = await start(temporal_client, inp, tq)
        result = await asyncio.wait_for(handle.result(), 60)
    assert (result.status.value, result.reason) == ("Failed", "INTERNAL_ERROR")
    assert "RuntimeError: a bug" in result.message
    assert len(world.created(org, conn)) == 1  # it was created, then undone
    await asyncio.to_thread(_gone, world, org, conn)


# ---------------------------------------------------------------------- org guard


async def test_terminating_the_org_guard_never_lifts_the_limit(
    running: RealWorld, temporal_client: Client
) -> None:
    world = running
    settings = world.settings()
    client = ConnectionsClient(temporal_client, world.store, settings)
    service = world.seed.customer_services["allowed"]
    org = uid("guard")
    guard = temporal_client.get_workflow_handle(org_guard_workflow_id(org))
    for cid in ("a", "b"):
        await client.create(org, service, connection_id=cid)
        await _wait_store(world, org, cid, "Active")
    await guard.terminate(reason="operator mistake")
    third = await client.create(org, service, connection_id="c")
    if third.status != "Rejected":
        third = await client.wait_for(org, "c", {"Rejected"})
    assert (third.status, third.reason) == ("Rejected", "LIMIT_REACHED")

    await client.set_limit(org, 3)
    await guard.terminate(reason="operator mistake again")
    await client.create(org, service, connection_id="d")
    await _wait_store(world, org, "d", "Active")
    fifth = await client.create(org, service, connection_id="e")
    if fifth.status != "Rejected":
        fifth = await client.wait_for(org, "e", {"Rejected"})
    assert (fifth.status, fifth.reason) == ("Rejected", "LIMIT_REACHED")
    assert "3 private connections" in fifth.message
    usage = await client.get_limit(org)
    assert (usage.limit, sorted(usage.holders)) == (3, ["a", "b", "d"])
    handles: list[WorkflowHandle] = []
    for cid in ("a", "b", "d"):
        await client.delete(org, cid)
        handles.append(temporal_client.get_workflow_handle(f"privnet-conn:{org}:{cid}"))
    for h in handles:
        await asyncio.wait_for(h.result(), 60)
