"""PrivateConnectionWorkflow on the real Temporal dev server, with fake activities
registered under the real names and the real org guard."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import CancelledError

from tests.fakes import FakeEnv, FakeWorld, fake_worker
from tests.wfutil import make_input, query, save_history, start, uid, wait_status
from workflows.contracts import (
    ACT_ACQUIRE_SLOT,
    ACT_APPLY_POLICIES,
    ACT_CHECK_PRINCIPAL,
    ACT_CREATE_ENDPOINT,
    ACT_DELETE_ENDPOINT,
    ACT_DELETE_POLICIES,
    ACT_GET_ENDPOINT_ADDRESSES,
    ACT_RECORD_STATUS,
    ACT_RELEASE_SLOT,
    ACT_WAIT_ENDPOINT_DELETED,
    ACT_WAIT_FOR_STATE_CHANGE,
    CURRENT_RELEASE,
    SA_STATUS,
    SIGNAL_CANCEL,
    SIGNAL_DELETE,
    SIGNAL_RETRY_NOW,
    ConnectionState,
)

HAPPY = [
    "Pending",
    "CheckingPrincipal",
    "CreatingEndpoint",
    "WaitingForIp",
    "ApplyingPolicy",
    "Active",
]
COMPENSATIONS = {
    ACT_DELETE_POLICIES,
    ACT_DELETE_ENDPOINT,
    ACT_WAIT_ENDPOINT_DELETED,
    ACT_RELEASE_SLOT,
}


class Env(FakeEnv):
    pass


@pytest.fixture
async def env(temporal_client: Client, tmp_path: Path) -> AsyncIterator[Env]:
    async with fake_worker(
        temporal_client, tmp_path / "world.db", Env, namespaces=("tasks", "tasks-gpu")
    ) as e:
        yield e


def compensations(world: FakeWorld, conn: str) -> list[str]:
    """Compensation activities in call order, retries of one activity collapsed."""
    seq = [c for c in world.calls(conn) if c in COMPENSATIONS]
    return [c for i, c in enumerate(seq) if i == 0 or seq[i - 1] != c]


async def test_happy_path_reaches_active_and_records_every_transition(env: Env) -> None:
    org, conn = uid("org"), uid("c")
    handle = await start(env.client, make_input(org, conn), env.task_queue)
    state = await wait_status(handle, "Active")

    assert state.ips == ["10.1.0.10", "10.1.1.10"]
    assert state.vpc_endpoint_id and state.vpc_endpoint_id.startswith("vpce-")
    records = env.world.statuses(conn)
    assert [r.status.value for r in records] == HAPPY
    seqs = [r.seq for r in records]  # strictly increasing (each at least its task's
    assert len(seqs) == len(HAPPY) and seqs == sorted(set(seqs))  # history length)
    last = records[-1]
    assert (last.ips, last.vpc_endpoint_id, last.seq) == (
        state.ips,
        state.vpc_endpoint_id,
        state.seq,
    )
    assert all(a.at <= b.at for a, b in zip(records, records[1:], strict=False))
    desc = await handle.describe()
    assert desc.typed_search_attributes.get(SA_STATUS) == "Active"
    assert env.world.effects(conn).count("endpoint.create") == 1
    assert "policy.apply:tasks" in env.world.effects(conn)
    assert "policy.apply:tasks-gpu" in env.world.effects(conn)

    # Repeated create with the same id returns the same workflow (USE_EXISTING).
    again = await start(env.client, make_input(org, conn), env.task_queue)
    assert again.result_run_id == handle.result_run_id

    await handle.signal(SIGNAL_DELETE)
    await handle.result()
    await save_history(handle, "connection_happy_then_delete")


def _history_marks(events: list[Any]) -> tuple[list[str], list[str]]:
    """(marker names, status values each search-attribute upsert wrote) of a history; a
    local activity's marker is named ``local:<activity type>``."""
    markers, upserts = [], []
    for e in events:
        if e.HasField("marker_recorded_event_attributes"):
            attrs = e.marker_recorded_event_attributes
            name = attrs.marker_name
            if name == "core_local_activity":
                data = json.loads(attrs.details["data"].payloads[0].data)
                name = f"local:{data['activity_type']}"
            markers.append(name)
        if e.HasField("upsert_workflow_search_attributes_event_attributes"):
            fields = e.upsert_workflow_search_attributes_event_attributes.search_attributes
            payloads = dict(fields.indexed_fields)
            upserts.append(
                json.loads(payloads[SA_STATUS.name].data) if SA_STATUS.name in payloads
                else "+".join(sorted(payloads))
            )
    return markers, upserts


def _scheduled(events: list[Any]) -> list[str]:
    """The activity types a history scheduled on the task queue, in order."""
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


def _after_create(events: list[Any]) -> list[str]:
    """What a history did between scheduling the create and the first look at the endpoint:
    ``timer`` for a timer started, ``look`` for the look (local or not), in order."""
    seen: list[str] = []
    for e in events:
        if e.HasField("activity_task_scheduled_event_attributes"):
            name = e.activity_task_scheduled_event_attributes.activity_type.name
            if name == ACT_CREATE_ENDPOINT:
                seen = ["create"]
            elif name == ACT_WAIT_FOR_STATE_CHANGE and seen:
                return [*seen, "look"]
        elif e.HasField("timer_started_event_attributes") and seen:
            seen.append("timer")
        elif e.HasField("marker_recorded_event_attributes") and seen:
            attrs = e.marker_recorded_event_attributes
            if attrs.marker_name == "core_local_activity":
                data = json.loads(attrs.details["data"].payloads[0].data)
                if data["activity_type"] == ACT_WAIT_FOR_STATE_CHANGE:
                    return [*seen, "look"]
    return seen


@pytest.mark.parametrize("release", [0, 3, 4, 5, 6, CURRENT_RELEASE])
async def test_each_release_records_its_command_sequence_and_every_status_in_the_store(
    env: Env, release: int
) -> None:
    """Each patch marker comes with a TemporalChangeVersion upsert, and every upsert is a
    visibility write: a release-3 input needs neither, and its search attribute skips the
    statuses a connection only passes through. Release 4 also writes those statuses from the
    step's own activity, not with a local activity (a marker) each. An input from before
    (release 0, e.g. an older starter) still decides by markers and still records every
    status there. Release 5 checks the principal and takes the look after the create in
    local activities: no task queue round trip for either; release 6 also applies the first
    policy locally; release 7 takes no look right after the create (its answer is one), the
    first waits ``pending_first_look``. The store's timeline is complete in every release."""
    org, conn = uid("org"), uid("c")
    env.world.set(f"initial_state:{conn}", "pending")  # the look after the create, then a poll
    inp = make_input(org, conn).model_copy(update={"release": release})
    handle = await start(env.client, inp, env.task_queue)
    await wait_status(handle, "WaitingForIp")
    for _ in range(600):  # 30 s
        if ACT_WAIT_FOR_STATE_CHANGE in env.world.calls(conn):
            break
        await asyncio.sleep(0.05)
    assert ACT_WAIT_FOR_STATE_CHANGE in env.world.calls(conn)
    env.world.set_endpoint_state(conn, "available")
    await handle.signal(SIGNAL_RETRY_NOW)  # skip the first poll's wait
    await wait_status(handle, "Active")
    await handle.signal(SIGNAL_DELETE)
    await handle.result()
    # The store's timeline has every status either way.
    assert [r.status.value for r in env.world.statuses(conn)] == [*HAPPY, "Deleting", "Deleted"]
    events = (await handle.fetch_history()).events
    markers, upserts = _history_marks(events)
    patches = [m for m in markers if m == "core_patch"]
    status_writes = [m for m in markers if m == f"local:{ACT_RECORD_STATUS}"]
    # Pending, WaitingForIp, Active, Deleting, Deleted; before release 4 also the three
    # passing statuses.
    assert len(status_writes) == (5 if release >= 4 else 8)
    locally = [m for m in markers if m.startswith("local:") and m not in status_writes]
    scheduled = _scheduled(events)
    polls = scheduled.count(ACT_WAIT_FOR_STATE_CHANGE)
    if release >= 7:  # the first look waits for AWS
        assert _after_create(events) == ["create", "timer", "look"]
        await save_history(handle, f"connection_pending_after_create_v{release}")
    else:
        assert _after_create(events) == ["create", "look"]
    if release >= 6:  # and the first policy apply
        assert locally == [
            f"local:{ACT_CHECK_PRINCIPAL}",
            f"local:{ACT_WAIT_FOR_STATE_CHANGE}",
            f"local:{ACT_APPLY_POLICIES}",
        ]
        assert scheduled[:2] == [ACT_ACQUIRE_SLOT, ACT_CREATE_ENDPOINT]
        assert ACT_APPLY_POLICIES not in scheduled
        assert polls == 1
    elif release >= 5:  # the look right after the create is local, the poll loop is not
        assert locally == [f"local:{ACT_CHECK_PRINCIPAL}", f"local:{ACT_WAIT_FOR_STATE_CHANGE}"]
        assert scheduled[:2] == [ACT_ACQUIRE_SLOT, ACT_CREATE_ENDPOINT]
        assert ACT_APPLY_POLICIES in scheduled
        assert polls == 1
    else:
        assert locally == []
        assert scheduled[:2] == [ACT_ACQUIRE_SLOT, ACT_CHECK_PRINCIPAL]
        assert polls == 2  # the look after the create, then the poll loop
    assert ACT_CREATE_ENDPOINT in scheduled and ACT_RELEASE_SLOT in scheduled
    if release >= 3:
        assert patches == []
        assert upserts == ["WaitingForIp", "Active", "Deleting", "Deleted"]
    else:
        assert len(patches) == 2  # fewer-events and the status sequence floor
        assert upserts == [
            "TemporalChangeVersion", "TemporalChangeVersion", "CheckingPrincipal",
            "CreatingEndpoint", "WaitingForIp", "ApplyingPolicy", "Active", "Deleting", "Deleted",
        ]
    assert (await handle.describe()).typed_search_attributes.get(SA_STATUS) == "Deleted"


async def test_a_throttled_local_step_keeps_answering_queries_between_its_retries(
    env: Env,
) -> None:
    """Release 5 checks the principal in a local activity, whose retries wait inside the
    workflow task, where a query waits too (until the task's heartbeat, 8 s). Backoffs past
    2 s wait on a timer instead: with the check throttled four times (backoffs 1, 2, 4 and
    8 s), every status query from the third attempt on is answered within a few seconds."""
    org, conn = uid("org"), uid("c")
    env.world.set(f"throttle:{conn}:{ACT_CHECK_PRINCIPAL}", 4)
    handle = await start(env.client, make_input(org, conn), env.task_queue)
    slowest = 0.0
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(60):
        while True:
            attempts = env.world.calls(conn).count(ACT_CHECK_PRINCIPAL)
            asked = loop.time()
            state = await query(handle)
            if attempts >= 3:
                slowest = max(slowest, loop.time() - asked)
            if state.status.value == "Active":
                break
            await asyncio.sleep(0.3)
    assert env.world.calls(conn).count(ACT_CHECK_PRINCIPAL) == 5
    assert slowest < 4, slowest
    await handle.signal(SIGNAL_DELETE)
    await handle.result()


async def test_delete_while_active_compensates_in_reverse_order(env: Env) -> None:
    org, conn = uid("org"), uid("c")
    handle = await start(env.client, make_input(org, conn), env.task_queue)
    await wait_status(handle, "Active")
    await handle.signal(SIGNAL_DELETE)
    result = await handle.result()
    assert isinstance(result, ConnectionState)
    assert result.status.value == "Deleted"
    assert result.ips == []

    comp = compensations(env.world, conn)
    assert comp == [
        ACT_DELETE_POLICIES,
        ACT_DELETE_ENDPOINT,
        ACT_WAIT_ENDPOINT_DELETED,
        ACT_RELEASE_SLOT,
    ]
    effects = env.world.effects(conn)
    tail = [
        e for e in effects if e.startswith(("policy.delete", "endpoint.delete", "slot.release"))
    ]
    assert tail == [
        "policy.delete:tasks",
        "policy.delete:tasks-gpu",
        "endpoint.delete",
        "slot.release",
    ]
    assert env.world.get(f"endpoint:{conn}")["state"] == "deleted"
    statuses = [r.status.value for r in env.world.statuses(conn)]
    assert statuses == [*HAPPY, "Deleting", "Deleted"]
    assert (await handle.describe()).typed_search_attributes.get(SA_STATUS) == "Deleted"


# step k → (how to inject, expected reason, expected compensations in order)
FAILURES = {
    1: ("fail", ACT_CHECK_PRINCIPAL, "PRINCIPAL_NOT_ALLOWED", [ACT_RELEASE_SLOT]),
    2: ("fail", ACT_CREATE_ENDPOINT, "ENDPOINT_CREATE_FAILED", [ACT_RELEASE_SLOT]),
    # From step 3 on the policies are deleted too (release 7: their undo is registered with
    # the endpoint's; a local apply in a lost workflow task leaves no trace in the history).
    3: (
        "state",
        "rejected",
        "ENDPOINT_REJECTED",
        [ACT_DELETE_POLICIES, ACT_DELETE_ENDPOINT, ACT_WAIT_ENDPOINT_DELETED, ACT_RELEASE_SLOT],
    ),
    # Step 4 also undoes itself: a partial apply across namespaces must not outlive the
    # endpoint (a reused IP would open another org's endpoint).
    4: (
        "fail",
        ACT_APPLY_POLICIES,
        "POLICY_INVALID",
        [ACT_DELETE_POLICIES, ACT_DELETE_ENDPOINT, ACT_WAIT_ENDPOINT_DELETED, ACT_RELEASE_SLOT],
    ),
    5: (
        "fail",
        ACT_RECORD_STATUS,
        "ACTIVATION_FAILED",
        [ACT_DELETE_POLICIES, ACT_DELETE_ENDPOINT, ACT_WAIT_ENDPOINT_DELETED, ACT_RELEASE_SLOT],
    ),
}


@pytest.mark.parametrize("step", sorted(FAILURES))
async def test_failure_at_each_step_runs_exactly_the_earlier_compensations(
    env: Env, step: int
) -> None:
    how, target, reason, expected = FAILURES[step]
    org, conn = uid("org"), uid("c")
    if how == "fail":
        env.world.fail(conn, target, reason)
    else:
        env.world.set(f"initial_state:{conn}", target)
    handle = await start(env.client, make_input(org, conn), env.task_queue)
    result = await handle.result()
    assert result.status.value == "Failed"
    assert result.reason == reason
    assert result.message
    assert compensations(env.world, conn) == expected
    records = env.world.statuses(conn)
    assert records[-1].status.value == "Failed"
    assert records[-1].reason == reason
    assert records[-1].message == result.message
    # nothing left behind
    ep = env.world.get(f"endpoint:{conn}")
    assert ep is None or ep["state"] == "deleted"
    assert env.world.get(f"policy:tasks:{conn}") is None
    await save_history(handle, f"connection_fail_step{step}")


async def test_terminal_aws_state_message_names_the_fix(env: Env) -> None:
    org, conn = uid("org"), uid("c")
    env.world.set(f"initial_state:{conn}", "rejected")
    result = await (await start(env.client, make_input(org, conn), env.task_queue)).result()
    assert "accept" in result.message


@pytest.mark.parametrize("release", [6, CURRENT_RELEASE])
async def test_cancel_signal_while_waiting_for_ip(env: Env, release: int) -> None:
    """Compensation deletes policies before the endpoint even when none was applied: a lost
    local apply may have (release 7 registers the undo with the endpoint's; a release-6
    workflow, one started before the upgrade, at compensation, behind a patch marker)."""
    org, conn = uid("org"), uid("c")
    env.world.set(f"initial_state:{conn}", "pending")
    inp = make_input(org, conn).model_copy(update={"release": release})
    handle = await start(env.client, inp, env.task_queue)
    await wait_status(handle, "WaitingForIp")
    await handle.signal(SIGNAL_CANCEL)
    result = await handle.result()
    assert result.status.value == "Cancelled"
    assert compensations(env.world, conn) == [
        ACT_DELETE_POLICIES,
        ACT_DELETE_ENDPOINT,
        ACT_WAIT_ENDPOINT_DELETED,
        ACT_RELEASE_SLOT,
    ]
    assert env.world.get(f"endpoint:{conn}")["state"] == "deleted"
    assert env.world.get(f"policy:tasks:{conn}") is None
    assert env.world.statuses(conn)[-1].status.value == "Cancelled"
    markers, _ = _history_marks((await handle.fetch_history()).events)
    assert markers.count("core_patch") == (1 if release == 6 else 0)
    await save_history(
        handle, "connection_cancel_signal" if release == CURRENT_RELEASE else
        f"connection_cancel_signal_v{release}_policies_undo_patched"
    )


async def test_temporal_cancellation_while_waiting_for_ip(env: Env) -> None:
    org, conn = uid("org"), uid("c")
    env.world.set(f"initial_state:{conn}", "pending")
    handle = await start(env.client, make_input(org, conn), env.task_queue)
    await wait_status(handle, "WaitingForIp")
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    assert isinstance(info.value.cause, CancelledError)
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    assert compensations(env.world, conn) == [
        ACT_DELETE_POLICIES,  # none applied yet; a lost local apply may have (release 7)
        ACT_DELETE_ENDPOINT,
        ACT_WAIT_ENDPOINT_DELETED,
        ACT_RELEASE_SLOT,
    ]
    assert env.world.get(f"endpoint:{conn}")["state"] == "deleted"
    assert env.world.statuses(conn)[-1].status.value == "Cancelled"
    await save_history(handle, "connection_temporal_cancel")


async def test_temporal_cancellation_while_active(env: Env) -> None:
    org, conn = uid("org"), uid("c")
    handle = await start(env.client, make_input(org, conn), env.task_queue)
    await wait_status(handle, "Active")
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert compensations(env.world, conn) == [
        ACT_DELETE_POLICIES,
        ACT_DELETE_ENDPOINT,
        ACT_WAIT_ENDPOINT_DELETED,
        ACT_RELEASE_SLOT,
    ]
    assert env.world.statuses(conn)[-1].status.value == "Cancelled"


async def test_acceptance_then_accepted(env: Env) -> None:
    org, conn = uid("org"), uid("c")
    env.world.set(f"initial_state:{conn}", "pendingAcceptance")
    handle = await start(env.client, make_input(org, conn), env.task_queue)
    state = await wait_status(handle, "WaitingForAcceptance")
    assert state.aws_state == "pendingAcceptance"
    # The UI's "current details" tell the operator what the customer must do.
    meta = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert "must accept" in meta.current_details
    assert await (await handle.describe()).static_summary() == f"privnet connection {org}/{conn}"
    env.world.set_endpoint_state(conn, "pending")
    await wait_status(handle, "WaitingForIp")
    env.world.set_endpoint_state(conn, "available")
    await handle.signal(SIGNAL_RETRY_NOW)  # skip the backoff
    await wait_status(handle, "Active")
    statuses = [r.status.value for r in env.world.statuses(conn)]
    assert statuses == [
        "Pending",
        "CheckingPrincipal",
        "CreatingEndpoint",
        "WaitingForAcceptance",
        "WaitingForIp",
        "ApplyingPolicy",
        "Active",
    ]
    await handle.signal(SIGNAL_DELETE)
    assert (await handle.result()).status.value == "Deleted"
    await save_history(handle, "connection_acceptance")


async def test_acceptance_timeout_fails_with_the_fix(env: Env) -> None:
    org, conn = uid("org"), uid("c")
    env.world.set(f"initial_state:{conn}", "pendingAcceptance")
    inp = make_input(org, conn, acceptance_timeout=timedelta(seconds=2))
    result = await (await start(env.client, inp, env.task_queue)).result()
    assert result.status.value == "Failed"
    assert result.reason == "ACCEPTANCE_TIMEOUT"
    assert "accept" in result.message
    assert env.world.get(f"endpoint:{conn}")["state"] == "deleted"


async def test_drift_repair_reapplies_a_deleted_policy_and_follows_ip_changes(env: Env) -> None:
    org, conn = uid("org"), uid("c")
    inp = make_input(org, conn, drift_check_interval=timedelta(seconds=1))
    handle = await start(env.client, inp, env.task_queue)
    await wait_status(handle, "Active")
    applies = env.world.effects(conn).count("policy.apply:tasks")
    env.world.delete(f"policy:tasks:{conn}")  # someone deleted it by hand
    ep = env.world.get(f"endpoint:{conn}")
    ep["ips"] = ["10.1.0.99", "10.1.1.10"]
    env.world.set(f"endpoint:{conn}", ep)
    for _ in range(100):
        state = await query(handle)
        repaired = any("drift repaired" in r.detail for r in env.world.statuses(conn))
        if state.ips == ["10.1.0.99", "10.1.1.10"] and repaired:
            break
        await asyncio.sleep(0.1)
    assert env.world.get(f"policy:tasks:{conn}")["ips"] == ["10.1.0.99", "10.1.1.10"]
    assert env.world.effects(conn).count("policy.apply:tasks") > applies
    assert any("drift repaired" in r.detail for r in env.world.statuses(conn))
    latest = env.client.get_workflow_handle(handle.id, result_type=ConnectionState)
    await latest.signal(SIGNAL_DELETE)
    assert (await latest.result()).status.value == "Deleted"
    await save_history(latest, "connection_drift_repair")


async def test_active_connection_continues_as_new_and_still_deletes_cleanly(env: Env) -> None:
    org, conn = uid("org"), uid("c")
    inp = make_input(org, conn, drift_check_interval=timedelta(milliseconds=300))
    handle = await start(env.client, inp, env.task_queue)
    first = await wait_status(handle, "Active")
    first_run = (await handle.describe()).run_id
    latest = env.client.get_workflow_handle(handle.id, result_type=ConnectionState)
    for _ in range(300):  # the server suggests continue-as-new at 50 events (conftest)
        if (await latest.describe()).run_id != first_run:
            break
        await asyncio.sleep(0.1)
    assert (await latest.describe()).run_id != first_run
    resumed = await wait_status(latest, "Active")
    assert (resumed.ips, resumed.vpc_endpoint_id) == (first.ips, first.vpc_endpoint_id)
    assert resumed.seq >= first.seq
    await latest.signal(SIGNAL_DELETE)
    result = await latest.result()
    assert result.status.value == "Deleted"
    assert compensations(env.world, conn)[-4:] == [
        ACT_DELETE_POLICIES,
        ACT_DELETE_ENDPOINT,
        ACT_WAIT_ENDPOINT_DELETED,
        ACT_RELEASE_SLOT,
    ]
    records = env.world.statuses(conn)
    assert [r.seq for r in records] == sorted({r.seq for r in records})  # no seq reused
    assert records[-1].status.value == "Deleted"
    assert env.world.effects(conn).count("endpoint.create") == 1
    await save_history(latest, "connection_resumed_after_can")


@pytest.mark.parametrize("activity_name", [ACT_CREATE_ENDPOINT, ACT_APPLY_POLICIES])
async def test_temporal_cancel_during_a_slow_create_waits_for_it_then_undoes_it(
    env: Env, activity_name: str
) -> None:
    """The create is still running when the workflow is cancelled: compensation must not
    run before it finished, or the endpoint/policy it then makes would leak."""
    org, conn = uid("org"), uid("c")
    env.world.set(f"pause_before:{conn}:{activity_name}", True)
    handle = await start(env.client, make_input(org, conn), env.task_queue)
    for _ in range(200):
        if env.world.get(f"reached_before:{conn}:{activity_name}"):
            break
        await asyncio.sleep(0.05)
    await handle.cancel()
    await asyncio.sleep(1.5)
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    env.world.delete(f"pause_before:{conn}:{activity_name}")  # the slow call completes now
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert env.world.effects(conn).count("endpoint.create") == 1
    assert env.world.get(f"endpoint:{conn}")["state"] == "deleted"
    assert env.world.get(f"policy:tasks:{conn}") is None
    assert env.world.statuses(conn)[-1].status.value == "Cancelled"
    await save_history(handle, f"connection_cancel_during_{activity_name}")


# Temporal cancellation (UI/CLI) while each step's activity runs, and while Active: the
# connection ends Cancelled (never Failed) with everything undone.
CANCEL_POINTS = [
    ACT_CHECK_PRINCIPAL,
    ACT_WAIT_FOR_STATE_CHANGE,
    ACT_GET_ENDPOINT_ADDRESSES,
    ACT_RECORD_STATUS,  # the Active write
    "active",
]


@pytest.mark.parametrize("point", CANCEL_POINTS)
async def test_temporal_cancellation_at_every_step_ends_cancelled(env: Env, point: str) -> None:
    org, conn = uid("org"), uid("c")
    if point == ACT_WAIT_FOR_STATE_CHANGE:
        env.world.set(f"initial_state:{conn}", "pending")
    if point != "active":
        env.world.set(f"pause_before:{conn}:{point}", True)
    handle = await start(env.client, make_input(org, conn), env.task_queue)
    if point == "active":
        await wait_status(handle, "Active")
    else:
        for _ in range(400):
            if env.world.get(f"reached_before:{conn}:{point}"):
                break
            await asyncio.sleep(0.05)
        assert env.world.get(f"reached_before:{conn}:{point}"), f"{point} never ran"
    await handle.cancel()
    env.world.delete(f"pause_before:{conn}:{point}")
    with pytest.raises(WorkflowFailureError) as exc:
        await handle.result()
    assert isinstance(exc.value.cause, CancelledError)
    records = env.world.statuses(conn)
    assert records[-1].status.value == "Cancelled", [r.status.value for r in records]
    assert "Failed" not in [r.status.value for r in records]
    ep = env.world.get(f"endpoint:{conn}")
    assert ep is None or ep["state"] == "deleted"
    assert env.world.get(f"policy:tasks:{conn}") is None
    assert env.world.get(f"policy:tasks-gpu:{conn}") is None
