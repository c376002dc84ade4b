"""OrgGuardWorkflow on the real dev server (started with
limit.historyCount.suggestContinueAsNew=50, so the guard continues as new often)."""

from __future__ import annotations

import asyncio
import random
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from sandbox.binaries import temporal_cli_path
from settings import Settings
from tests.fakes import (
    CountingGuardActivities,
    FakeActivities,
    FakeEnv,
    FakeWorld,
    fake_worker,
)
from tests.guard_requester import GuardRequester
from tests.wfutil import make_input, query, save_history, start, uid, wait_status
from worker import build_worker
from workflows.contracts import (
    ACT_ACQUIRE_SLOT,
    ACT_CLOSED_WORKFLOWS,
    ACT_REQUEST_SLOT,
    QUERY_USAGE,
    SIGNAL_ACQUIRE,
    SIGNAL_DELETE,
    SIGNAL_RELEASE,
    SIGNAL_SET_LIMIT,
    AcquireRequest,
    ConnectionState,
    GuardUsage,
    OrgGuardInput,
    ReleaseRequest,
    SetLimitRequest,
    SlotDecision,
    SlotRequest,
    org_guard_workflow_id,
)
from workflows.org_guard import OrgGuardWorkflow


class Env(FakeEnv):
    async def usage(self, org: str) -> GuardUsage:
        handle = self.client.get_workflow_handle(org_guard_workflow_id(org))
        usage: GuardUsage = await handle.query(QUERY_USAGE, result_type=GuardUsage)
        return usage

    async def guard(
        self, org: str, limit: int = 2, leak_seconds: float = 300, max_history: int = 10_000
    ) -> WorkflowHandle:
        return await self.client.start_workflow(
            OrgGuardWorkflow.run,
            OrgGuardInput(
                org_id=org,
                limit=limit,
                leak_check_interval=timedelta(seconds=leak_seconds),
                max_history_events=max_history,
            ),
            id=org_guard_workflow_id(org),
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )


async def admitted_or_rejected(h: WorkflowHandle, looks: int) -> ConnectionState:
    """The connection's state once the guard decided (Active or Rejected), or the last one."""
    for _ in range(looks):
        st = await query(h)
        if st.status.value in ("Active", "Rejected"):
            break
        await asyncio.sleep(0.1)
    return st


@pytest.fixture
async def env(temporal_client: Client, tmp_path: Path) -> AsyncIterator[Env]:
    # leak check every second so the leak-repair test is quick
    async with fake_worker(
        temporal_client,
        tmp_path / "world.db",
        Env,
        leak_check_seconds=1,
        extra_workflows=[GuardRequester],
    ) as e:
        yield e


async def test_ten_concurrent_creates_admit_exactly_the_limit(env: Env) -> None:
    org, other = uid("org"), uid("org")
    handles = await asyncio.gather(
        *(start(env.client, make_input(org, f"{org}-c{i}"), env.task_queue) for i in range(10))
    )
    others = await asyncio.gather(
        *(start(env.client, make_input(other, f"{other}-c{i}"), env.task_queue) for i in range(2))
    )
    finals = [await admitted_or_rejected(h, 300) for h in handles]
    active = [s for s in finals if s.status.value == "Active"]
    rejected = [s for s in finals if s.status.value == "Rejected"]
    assert len(active) == 2
    assert len(rejected) == 8
    for s in rejected:
        assert s.reason == "LIMIT_REACHED"
        assert "2 of its 2" in s.message
        assert f"privnet limits set --org {org}" in s.message
        assert env.world.effects(s.connection_id) == []  # nothing was provisioned
    usage = await env.usage(org)
    assert usage.usage == 2
    assert sorted(usage.holders) == sorted(s.connection_id for s in active)
    for h in others:  # other orgs unaffected
        await wait_status(h, "Active")

    # Delete one Active → a new create is admitted and reaches Active.
    victim = next(h for h, s in zip(handles, finals, strict=True) if s.status.value == "Active")
    await victim.signal(SIGNAL_DELETE)
    assert (await victim.result()).status.value == "Deleted"
    newcomer = await start(env.client, make_input(org, f"{org}-c-new"), env.task_queue)
    await wait_status(newcomer, "Active")
    assert (await env.usage(org)).usage == 2
    await save_history(victim, "connection_admitted_then_deleted")
    rejected_handle = next(
        h for h, s in zip(handles, finals, strict=True) if s.status.value == "Rejected"
    )
    await save_history(rejected_handle, "connection_rejected")
    await save_history(env.client.get_workflow_handle(org_guard_workflow_id(org)), "guard_by_update")


async def test_set_limit_raises_and_lowering_revokes_nothing(env: Env) -> None:
    org = uid("org")
    guard = await env.guard(org, limit=2)
    hs = [await start(env.client, make_input(org, f"{org}-c{i}"), env.task_queue) for i in range(2)]
    for h in hs:
        await wait_status(h, "Active")
    third = await start(env.client, make_input(org, f"{org}-c2"), env.task_queue)
    assert (await third.result()).status.value == "Rejected"

    await guard.signal(SIGNAL_SET_LIMIT, SetLimitRequest(limit=3))
    third_again = await start(env.client, make_input(org, f"{org}-c3"), env.task_queue)
    await wait_status(third_again, "Active")
    assert (await env.usage(org)).usage == 3

    await guard.signal(SIGNAL_SET_LIMIT, SetLimitRequest(limit=1))
    fourth = await start(env.client, make_input(org, f"{org}-c4"), env.task_queue)
    result = await fourth.result()
    assert result.status.value == "Rejected"
    assert "3 of its 1" in result.message
    usage = await env.usage(org)
    assert (usage.usage, usage.limit) == (3, 1)  # nothing revoked
    for h in [*hs, third_again]:
        assert (await query(h)).status.value == "Active"


async def test_300_acquire_release_cycles_across_continue_as_new(env: Env) -> None:
    org = uid("org")
    # The server suggests continue-as-new at 50 events (conftest); max_history is the
    # guard's own backstop.
    guard = await env.guard(org, limit=1, max_history=150)
    first_run = (await guard.describe()).run_id
    requester = await env.client.start_workflow(
        GuardRequester.run, id=uid("requester"), task_queue=env.task_queue
    )
    for i in range(300):
        await guard.signal(
            SIGNAL_ACQUIRE, AcquireRequest(connection_id=f"c{i}", workflow_id=requester.id)
        )
        await guard.signal(SIGNAL_RELEASE, ReleaseRequest(connection_id=f"c{i}"))
    # A burst: 20 acquires at once with limit 5 admit exactly 5.
    await guard.signal(SIGNAL_SET_LIMIT, SetLimitRequest(limit=5))
    await asyncio.gather(
        *(
            guard.signal(
                SIGNAL_ACQUIRE, AcquireRequest(connection_id=f"b{i}", workflow_id=requester.id)
            )
            for i in range(20)
        )
    )
    decisions: list[SlotDecision] = []
    for _ in range(300):
        decisions = await requester.query(GuardRequester.received)
        if len(decisions) == 320:
            break
        await asyncio.sleep(0.1)
    assert len(decisions) == 320, "a signal or decision was dropped"
    cycles = [d for d in decisions if d.connection_id.startswith("c")]
    assert len({d.connection_id for d in cycles}) == 300
    assert all(d.granted for d in cycles), "a released slot was lost"
    burst = [d for d in decisions if d.connection_id.startswith("b")]
    assert sum(d.granted for d in burst) == 5
    usage = await env.usage(org)
    assert usage.usage == 5 and sorted(usage.holders) == sorted(
        d.connection_id for d in burst if d.granted
    )
    # The guard continued as new (several runs), carrying its state across.
    runs: list[str] = []
    for _ in range(50):  # visibility is eventually consistent
        runs = [r.run_id async for r in env.client.list_workflows(f"WorkflowId = '{guard.id}'")]
        if len(runs) > 3:
            break
        await asyncio.sleep(0.1)
    assert len(runs) > 3 and first_run in runs
    # Replay fixtures: the first run (ends in continue-as-new) and the current one.
    await save_history(
        env.client.get_workflow_handle(guard.id, run_id=first_run), "guard_first_run"
    )
    await requester.signal(GuardRequester.finish)
    await requester.result()


async def test_terminated_holder_is_released_by_leak_repair(
    env: Env, temporal_env: WorkflowEnvironment
) -> None:
    org = uid("org")
    await env.guard(org, limit=1, leak_seconds=1)
    holder = await start(env.client, make_input(org, f"{org}-c0"), env.task_queue)
    await wait_status(holder, "Active")
    blocked = await start(env.client, make_input(org, f"{org}-c1"), env.task_queue)
    assert (await blocked.result()).status.value == "Rejected"

    # An operator terminates the holder from the CLI: no compensation runs.
    target = temporal_env.client.service_client.config.target_host
    await asyncio.to_thread(
        subprocess.run,
        [
            temporal_cli_path(),
            "workflow",
            "terminate",
            "--address",
            target,
            "--workflow-id",
            holder.id,
            "--reason",
            "test: operator terminate",
        ],
        check=True,
        capture_output=True,
    )
    for _ in range(100):
        if (await env.usage(org)).usage == 0:
            break
        await asyncio.sleep(0.1)
    assert (await env.usage(org)).usage == 0
    admitted = await start(env.client, make_input(org, f"{org}-c2"), env.task_queue)
    await wait_status(admitted, "Active")
    await save_history(
        env.client.get_workflow_handle(org_guard_workflow_id(org)), "guard_leak_repair"
    )


class SilentGuard(CountingGuardActivities):
    """A guard adapter whose acquire never reaches the guard (a lost or stuck guard)."""

    @activity.defn(name=ACT_REQUEST_SLOT)
    async def request_slot(self, req: SlotRequest) -> None:
        self.world.call(req.connection_id, ACT_REQUEST_SLOT)

    @activity.defn(name=ACT_ACQUIRE_SLOT)
    async def acquire_slot(self, req: SlotRequest) -> SlotDecision:
        self.world.call(req.connection_id, ACT_ACQUIRE_SLOT)
        await asyncio.Event().wait()  # the guard never answers
        raise AssertionError("unreachable")


@dataclass
class Silent:
    client: Client
    world: FakeWorld
    task_queue: str


@pytest.fixture
async def silent(temporal_client: Client, tmp_path: Path) -> AsyncIterator[Silent]:
    """A worker with the fake AWS/Kubernetes activities and a guard that never answers."""
    world = FakeWorld(tmp_path / "world.db")
    tq = uid("tq")
    worker = build_worker(
        temporal_client,
        Settings(),
        task_queue=tq,
        activities=[FakeActivities(world), SilentGuard(world, temporal_client, tq, 300)],
    )
    async with worker:
        yield Silent(temporal_client, world, tq)


async def test_no_slot_decision_fails_clearly_instead_of_hanging(silent: Silent) -> None:
    world = silent.world
    org, conn = uid("org"), uid("c")
    inp = make_input(org, conn, slot_decision_timeout=timedelta(seconds=2))
    result = await (await start(silent.client, inp, silent.task_queue)).result()
    assert result.status.value == "Failed"
    assert result.reason == "SLOT_TIMEOUT"
    assert "worker" in result.message
    assert world.effects(conn) == ["slot.release"]  # nothing provisioned; slot released


async def test_a_delete_while_the_guard_has_not_answered_ends_the_connection_at_once(
    silent: Silent,
) -> None:
    """A delete arriving while the guard has not answered ends the wait for the slot at
    once: the connection ends Deleted with nothing provisioned, not after the ten-minute
    decision timeout."""
    world = silent.world
    org, conn = uid("org"), uid("c")
    inp = make_input(org, conn, slot_decision_timeout=timedelta(minutes=10))
    handle = await start(silent.client, inp, silent.task_queue)
    for _ in range(600):  # 30 s
        if ACT_ACQUIRE_SLOT in world.calls(conn):
            break
        await asyncio.sleep(0.05)
    assert ACT_ACQUIRE_SLOT in world.calls(conn)
    await asyncio.sleep(1)  # the acquire is under way
    await handle.signal(SIGNAL_DELETE)
    async with asyncio.timeout(10):
        result = await handle.result()
    assert result.status.value == "Deleted"
    assert world.effects(conn) == ["slot.release"]  # nothing provisioned; slot released


async def test_a_burst_past_the_servers_in_flight_update_limit_is_all_answered(env: Env) -> None:
    """The server holds at most 10 updates in flight per workflow; 200 creates of one org
    at once all get their decision from the real acquire_slot activity (asked again inside
    the attempt), none fails with the server's RESOURCE_EXHAUSTED."""
    from activities.guard import GuardActivities

    org = uid("org")
    acts = GuardActivities(env.client, env.task_queue, 300)
    async with asyncio.timeout(90):
        decisions = await asyncio.gather(*(
            acts.acquire_slot(SlotRequest(
                org_id=org, connection_id=f"{org}-c{i}", workflow_id=f"{org}-w{i}",
                default_limit=150))
            for i in range(200)))
    assert sum(d.granted for d in decisions) == 150
    usage = await env.usage(org)
    assert usage.usage == 150
    assert sorted(usage.holders) == sorted(
        f"{org}-c{i}" for i, d in enumerate(decisions) if d.granted)


async def test_guards_evicted_from_a_one_entry_cache_still_decide_right(
    temporal_client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard worker keeps few guards cached (PRIVNET_WORKER_GUARD_CACHE_SIZE): with one
    entry, four orgs creating at once evict each other's guard on every decision, and every
    guard, replayed from its history each time, still admits exactly its limit."""
    from tests.fakes import fake_activities

    monkeypatch.setenv("PRIVNET_WORKER_GUARD_CACHE_SIZE", "1")
    world = FakeWorld(tmp_path / "world.db")
    tq = uid("tq")
    workers = build_worker(
        temporal_client, Settings(), task_queue=tq,
        activities=fake_activities(world, temporal_client, tq),
    )
    assert [w.config()["max_cached_workflows"] for w in workers.workers] == [1500, 1]
    orgs = [uid("org") for _ in range(4)]
    async with workers, asyncio.timeout(120):
        handles = {org: await asyncio.gather(*(
            start(temporal_client, make_input(org, f"{org}-c{i}"), tq) for i in range(3)))
            for org in orgs}
        for org, hs in handles.items():
            statuses = [(await admitted_or_rejected(h, 600)).status.value for h in hs]
            assert sorted(statuses) == ["Active", "Active", "Rejected"], (org, statuses)
        # A delete frees a slot and a newcomer takes it, with every guard evicted meanwhile.
        for hs in handles.values():
            active = [h for h in hs if (await query(h)).status.value == "Active"]
            await active[0].signal(SIGNAL_DELETE)
            assert (await active[0].result()).status.value == "Deleted"
        for org in orgs:
            newcomer = await start(temporal_client, make_input(org, f"{org}-c-new"), tq)
            await wait_status(newcomer, "Active", within=60)
            usage = Env(temporal_client, world, tq)
            assert (await usage.usage(org)).usage == 2


async def test_the_guards_commands_do_not_depend_on_the_clock(env: Env) -> None:
    """Found by the soak (seed 4242): ``workflow.now()`` right after a local activity (the
    guard's restore) is not the same on replay as when the task ran (57 ms apart there). The
    guard compared it with when its leak check was due; a request 24 ms before that replayed
    as after it, scheduled the check where the history had a timer, and every task of that
    guard failed nondeterministic: its org's connections ended SLOT_TIMEOUT.

    Here a guard decides requests around its leak checks (one a second); then the history of
    each of its runs is replayed with its workflow tasks at other times (each moved by up to
    0.5 s), and must give the same commands. The guard from before its leak-check timer
    fails this."""
    org = uid("clock")
    guard_id = org_guard_workflow_id(org)
    await env.guard(org, limit=3, leak_seconds=1)
    holder = await start(env.client, make_input(org, f"{org}-c0"), env.task_queue)
    await wait_status(holder, "Active")  # open: every leak check has a holder to look at
    handle = env.client.get_workflow_handle(guard_id)
    for i in range(20):  # 5 s of requests, across several leak checks
        await handle.signal(SIGNAL_SET_LIMIT, SetLimitRequest(org_id=org, limit=3 + i % 2))
        await asyncio.sleep(0.25)
    assert list((await env.usage(org)).holders) == [f"{org}-c0"]
    await handle.terminate("test done")
    # Every run (the guard continues as new on this server every few seconds), whole.
    histories = [
        (await env.client.get_workflow_handle(guard_id, run_id=w.run_id).fetch_history())
        async for w in env.client.list_workflows(f'WorkflowId="{guard_id}"')
    ]
    events = [e for h in histories for e in h.events]
    checks = sum(e.activity_task_scheduled_event_attributes.activity_type.name
                 == ACT_CLOSED_WORKFLOWS for e in events)
    signals = sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
                  for e in events)
    assert checks >= 3 and signals == 20, (checks, signals)
    rng = random.Random(4242)
    replayer = Replayer(workflows=[OrgGuardWorkflow], data_converter=pydantic_data_converter)
    for history in histories:
        for _ in range(3):
            moved = []
            for e in history.events:
                e = type(e).FromString(e.SerializeToString())
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                    at = e.event_time.ToDatetime() + timedelta(seconds=rng.uniform(-0.5, 0.5))
                    e.event_time.FromDatetime(at)
                moved.append(e)
            result = await replayer.replay_workflow(
                WorkflowHistory(guard_id, moved), raise_on_replay_failure=False
            )
            assert result.replay_failure is None, result.replay_failure
