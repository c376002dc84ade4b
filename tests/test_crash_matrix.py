"""Crash matrix: the real ``worker.py`` with the real AWS, Kubernetes, store and guard
activities against the sandboxes, SIGKILLed inside every step of a create (1-5), of a delete's
compensation and of a failure's compensation, then replaced by a fresh worker.

Each kill happens at the worst moment: the activity's side effect is done and its completion
not yet reported (a failpoint holds the worker there). The inventory is read from sandbox AWS
(its inventory, and its history of every endpoint ever created) and sandbox Kubernetes (the
stored objects), not from privnet."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.realstack import RealWorld, make_world, policy_ips, real_input
from tests.wfutil import start, uid
from workflows.contracts import (
    ACT_APPLY_POLICIES,
    ACT_CHECK_PRINCIPAL,
    ACT_CREATE_ENDPOINT,
    ACT_DELETE_ENDPOINT,
    ACT_DELETE_POLICIES,
    ACT_RECORD_STATUS,
    ACT_RELEASE_SLOT,
    ACT_WAIT_ENDPOINT_DELETED,
    ACT_WAIT_FOR_STATE_CHANGE,
    CURRENT_RELEASE,
    QUERY_USAGE,
    SIGNAL_CANCEL,
    SIGNAL_DELETE,
    GuardUsage,
    org_guard_workflow_id,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CREATE_STEPS: dict[str, dict[str, str]] = {
    "1-check-principal": {"activity": ACT_CHECK_PRINCIPAL},
    "2-create-endpoint": {"activity": ACT_CREATE_ENDPOINT},
    # The poll that sees the endpoint available and reads its ENI IPs.
    "3-read-ips": {"activity": ACT_WAIT_FOR_STATE_CHANGE},
    "4-apply-policies": {"activity": ACT_APPLY_POLICIES},
    "5-mark-active": {"activity": ACT_RECORD_STATUS, "status": "Active"},
}
UNDO_STEPS: dict[str, dict[str, str]] = {
    "undo-policies": {"activity": ACT_DELETE_POLICIES},
    "undo-endpoint": {"activity": ACT_DELETE_ENDPOINT},
    "undo-wait-gone": {"activity": ACT_WAIT_ENDPOINT_DELETED},
    "undo-slot": {"activity": ACT_RELEASE_SLOT},
    "record-deleted": {"activity": ACT_RECORD_STATUS, "status": "Deleted"},
}
FAILURE_UNDO_STEPS: dict[str, dict[str, str]] = {
    "failed-undo-endpoint": {"activity": ACT_DELETE_ENDPOINT},
    "failed-undo-slot": {"activity": ACT_RELEASE_SLOT},
    "record-failed": {"activity": ACT_RECORD_STATUS, "status": "Failed"},
}

FIGURES: dict[str, int] = {}


@pytest.fixture(scope="module")
def world(temporal_env: WorkflowEnvironment, tmp_path_factory: Any) -> Iterator[RealWorld]:
    address = temporal_env.client.service_client.config.target_host
    yield from make_world(address, Path(tmp_path_factory.mktemp("crash")))


def _points(conns: dict[str, tuple[str, str]], steps: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    return [
        {**steps[step], "phase": "after", "connection_id": conn}
        for step, (_org, conn) in conns.items()
    ]


async def _kill_at_failpoints(
    world: RealWorld, worker: Any, points: list[dict[str, str]]
) -> None:
    """Wait until the worker holds every connection at its own failpoint, then kill it."""
    await asyncio.to_thread(
        world.wait_failpoints, {(p["activity"], p["connection_id"]) for p in points}
    )
    await asyncio.to_thread(world.kill, worker)
    FIGURES["kills"] = FIGURES.get("kills", 0) + 1


async def _status(world: RealWorld, org: str, conn: str) -> str | None:
    view = await asyncio.to_thread(world.store.get, org, conn)
    return view.status if view else None


async def _wait_store(world: RealWorld, org: str, conn: str, status: str, within: float = 120) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (got := await _status(world, org, conn)) != status:
        if loop.time() > deadline:
            raise AssertionError(f"{org}/{conn} is {got}, never {status}")
        await asyncio.sleep(0.2)


def _assert_active_once(world: RealWorld, org: str, conn: str) -> None:
    assert len(world.created(org, conn)) == 1, world.created(org, conn)
    (ep,) = world.live_endpoints(org, conn)
    assert ep["state"].lower() == "available"
    ips = ep["ips"]
    policies = world.policies(org, conn)
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["batch", "tasks"], policies
    for p in policies:
        assert policy_ips(p) == ips
        assert p["spec"]["endpointSelector"]["matchLabels"] == {"privnet.dev/org-id": org}
    view = world.store.get(org, conn)
    assert view is not None and view.status == "Active" and sorted(view.ips) == ips
    assert view.vpc_endpoint_id == ep["vpc_endpoint_id"]
    seqs = [e.status for e in view.timeline or []]
    assert seqs.count("Active") == 1, seqs


def _assert_nothing_left(world: RealWorld, org: str, conn: str) -> None:
    created = world.created(org, conn)
    assert len(created) <= 1, created  # never more than one endpoint ever created
    assert world.live_endpoints(org, conn) == []
    assert world.policies(org, conn) == []


async def _holders(client: Client, org: str) -> dict[str, str]:
    usage: GuardUsage = await client.get_workflow_handle(org_guard_workflow_id(org)).query(
        QUERY_USAGE, result_type=GuardUsage
    )
    return usage.holders


async def test_sigkill_inside_every_step_of_create_and_delete(
    world: RealWorld, temporal_client: Client
) -> None:
    service = world.seed.customer_services["allowed"]
    conns = {step: (uid("crash"), uid("c")) for step in CREATE_STEPS}

    # Create: each connection holds the first worker inside a different step.
    create_points = _points(conns, CREATE_STEPS)
    first = await asyncio.to_thread(world.spawn_worker, create_points)
    handles: dict[str, WorkflowHandle] = {}
    for step, (org, conn) in conns.items():
        inp = real_input(world, org, conn, service)
        handles[step] = await start(temporal_client, inp, world.task_queue)
    await _kill_at_failpoints(world, first, create_points)
    second = await asyncio.to_thread(world.spawn_worker)
    for org, conn in conns.values():
        await _wait_store(world, org, conn, "Active")
    for step, (org, conn) in conns.items():
        await asyncio.to_thread(_assert_active_once, world, org, conn)
        assert await _holders(temporal_client, org) == {conn: handles[step].id}

    # Delete: each connection holds the next worker inside a different compensation step.
    await asyncio.to_thread(world.kill, second)
    world.failpoint_log.unlink()
    undo = dict(zip(UNDO_STEPS, conns.values(), strict=True))
    undo_points = _points(undo, UNDO_STEPS)
    third = await asyncio.to_thread(world.spawn_worker, undo_points)
    for handle in handles.values():
        await handle.signal(SIGNAL_DELETE)
    await _kill_at_failpoints(world, third, undo_points)
    await asyncio.to_thread(world.spawn_worker)
    for org, conn in conns.values():
        await _wait_store(world, org, conn, "Deleted")
    for handle in handles.values():
        assert (await handle.result()).status.value == "Deleted"
    for org, conn in conns.values():
        await asyncio.to_thread(_assert_nothing_left, world, org, conn)
        assert await _holders(temporal_client, org) == {}
    FIGURES["connections"] = FIGURES.get("connections", 0) + len(conns)
    FIGURES["endpoints_created"] = FIGURES.get("endpoints_created", 0) + sum(
        len(world.created(o, c)) for o, c in conns.values()
    )


async def test_sigkill_inside_every_step_of_a_failures_compensation(
    world: RealWorld, temporal_client: Client
) -> None:
    """The customer rejects the endpoint: ENDPOINT_REJECTED, and the cleanup is killed."""
    world.stop_workers()
    if world.failpoint_log.exists():
        world.failpoint_log.unlink()
    service = world.seed.customer_services["acceptance_required"]
    conns = {step: (uid("crashf"), uid("c")) for step in FAILURE_UNDO_STEPS}
    failure_points = _points(conns, FAILURE_UNDO_STEPS)
    worker = await asyncio.to_thread(world.spawn_worker, failure_points)
    handles = {
        step: await start(temporal_client, real_input(world, org, conn, service), world.task_queue)
        for step, (org, conn) in conns.items()
    }
    for org, conn in conns.values():
        await _wait_store(world, org, conn, "WaitingForAcceptance")
        (ep,) = world.live_endpoints(org, conn)
        assert world.aws.reject(service, ep["vpc_endpoint_id"]) == []
    await _kill_at_failpoints(world, worker, failure_points)
    await asyncio.to_thread(world.spawn_worker)
    for step, (org, conn) in conns.items():
        await _wait_store(world, org, conn, "Failed")
        result = await handles[step].result()
        assert (result.status.value, result.reason) == ("Failed", "ENDPOINT_REJECTED")
        await asyncio.to_thread(_assert_nothing_left, world, org, conn)
        assert await _holders(temporal_client, org) == {}
    FIGURES["connections"] = FIGURES.get("connections", 0) + len(conns)
    FIGURES["endpoints_created"] = FIGURES.get("endpoints_created", 0) + sum(
        len(world.created(o, c)) for o, c in conns.values()
    )
    print(f"\ncrash matrix figures: {FIGURES}")


async def _held_at(
    world: RealWorld,
    client: Client,
    org: str,
    conn: str,
    service: str,
    point: dict[str, str],
    release: int = CURRENT_RELEASE,
) -> tuple[Any, WorkflowHandle]:
    """A fresh connection on a worker alone on the task queue, held at ``point`` (its side
    effect done, its workflow task not yet completed): the worker and the handle."""
    await asyncio.to_thread(world.stop_workers)  # only the failpoint worker may take it
    worker = await asyncio.to_thread(world.spawn_worker, [point])
    inp = real_input(world, org, conn, service).model_copy(update={"release": release})
    handle = await start(client, inp, world.task_queue)
    await asyncio.to_thread(world.wait_failpoints, {(point["activity"], conn)})
    return worker, handle


async def _replace(world: RealWorld, worker: Any) -> None:
    """SIGKILL the held worker (its workflow task is lost) and start a fresh one."""
    await asyncio.to_thread(world.kill, worker)
    await asyncio.to_thread(world.spawn_worker)


async def test_a_stop_request_that_lands_while_the_final_status_is_written_wins_in_the_store(
    world: RealWorld, temporal_client: Client
) -> None:
    """Found by the soak (seeds 12 and 13): the final status is a local activity; its store
    write happened, then its workflow task was discarded (a delete arrived, the worker
    died). The next attempt saw the delete first and recorded Deleted under the discarded
    write's sequence number, which the store refused: the store said Failed while the
    workflow, its query and its search attribute said Deleted."""
    org, conn = uid("fin"), uid("c")
    point = {"activity": ACT_RECORD_STATUS, "status": "Failed", "phase": "after",
             "connection_id": conn}
    worker, handle = await _held_at(world, temporal_client, org, conn,
                                    world.seed.customer_services["not_allowed"], point)
    assert await _status(world, org, conn) == "Failed"  # the write is done...
    await handle.signal(SIGNAL_DELETE)  # ...and a delete lands before the task completes
    await _replace(world, worker)
    result = await asyncio.wait_for(handle.result(), 120)
    assert result.status.value == "Deleted"
    await _wait_store(world, org, conn, "Deleted", within=30)
    view = await asyncio.to_thread(world.store.get, org, conn)
    assert view is not None and view.timeline is not None
    assert view.timeline[-1].status == "Deleted"
    _assert_nothing_left(world, org, conn)


@pytest.mark.parametrize("release", [6, CURRENT_RELEASE])
async def test_a_cancel_that_lands_while_the_local_apply_is_in_a_lost_task_removes_its_policy(
    world: RealWorld, temporal_client: Client, release: int
) -> None:
    """Found by the soak (seed 2026): the first policy apply is a local activity (release
    6). Its policies were created, then its workflow task was lost (the worker killed), and
    a cancel arrived meanwhile. The next attempt saw the cancel before the apply, so the
    history has no apply and compensation never deleted the policies: the endpoint was gone
    and the connection Cancelled, its policies left in the cluster. Release 7 registers the
    policies' undo before the create; a release-6 workflow (one started before the upgrade)
    gets it when its compensation starts, behind a ``workflow.patched`` marker."""
    org, conn = uid("lost"), uid("c")
    point = {"activity": ACT_APPLY_POLICIES, "phase": "after", "connection_id": conn}
    worker, handle = await _held_at(world, temporal_client, org, conn,
                                    world.seed.customer_services["allowed"], point, release)
    assert len(world.policies(org, conn)) == 2  # the apply is done in the cluster...
    await handle.signal(SIGNAL_CANCEL)  # ...and a cancel lands before its task completes
    await _replace(world, worker)
    result = await asyncio.wait_for(handle.result(), 120)
    assert result.status.value == "Cancelled"
    await _wait_store(world, org, conn, "Cancelled", within=30)
    _assert_nothing_left(world, org, conn)
