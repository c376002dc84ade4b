"""A worker process SIGKILLed in the middle of each of steps 1-5 (after the step's side
effect, before the activity completes), then restarted: every connection still reaches
Active and every side effect happened exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.client import Client

from tests.fakes import FakeWorld
from tests.wfutil import make_input, query, start, uid, wait_status
from workflows.contracts import (
    ACT_APPLY_POLICIES,
    ACT_CHECK_PRINCIPAL,
    ACT_CREATE_ENDPOINT,
    ACT_GET_ENDPOINT_ADDRESSES,
    ACT_RECORD_STATUS,
    QUERY_USAGE,
    SIGNAL_DELETE,
    GuardUsage,
    org_guard_workflow_id,
)

ROOT = Path(__file__).resolve().parents[1]
STEPS = {
    1: ACT_CHECK_PRINCIPAL,
    2: ACT_CREATE_ENDPOINT,
    3: ACT_GET_ENDPOINT_ADDRESSES,
    4: ACT_APPLY_POLICIES,
    5: ACT_RECORD_STATUS,  # the Active write
}


def spawn_worker(address: str, task_queue: str, world: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_worker", address, task_queue, str(world)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"worker ready"
    return proc


@pytest.mark.slow
async def test_sigkill_mid_step_then_restart_reaches_active_exactly_once(
    temporal_client: Client, tmp_path: Path
) -> None:
    address = temporal_client.service_client.config.target_host
    world_path = tmp_path / "world.db"
    world = FakeWorld(world_path)
    tq = uid("tq")
    conns = {step: (uid("org"), uid(f"s{step}")) for step in STEPS}
    for step, (_org, conn) in conns.items():
        world.pause(conn, STEPS[step])

    first = await asyncio.to_thread(spawn_worker, address, tq, world_path)
    handles = {
        step: await start(temporal_client, make_input(org, conn), tq)
        for step, (org, conn) in conns.items()
    }
    try:
        for _ in range(300):
            if all(world.reached(conn, STEPS[s]) for s, (_o, conn) in conns.items()):
                break
            await asyncio.sleep(0.1)
        assert all(world.reached(conn, STEPS[s]) for s, (_o, conn) in conns.items())
    finally:
        os.kill(first.pid, signal.SIGKILL)
        await asyncio.to_thread(first.wait)

    for step, (_org, conn) in conns.items():
        world.unpause(conn, STEPS[step])
    second = await asyncio.to_thread(spawn_worker, address, tq, world_path)
    try:
        for step, (org, conn) in conns.items():
            state = await wait_status(handles[step], "Active", within=60)
            effects = world.effects(conn)
            assert effects.count("endpoint.create") == 1, (step, effects)
            assert effects.count("policy.apply:tasks") == 1, (step, effects)
            assert "endpoint.delete" not in effects
            statuses = [r.status.value for r in world.statuses(conn)]
            assert statuses.count("Active") == 1, (step, statuses)
            assert statuses[-1] == "Active"
            assert state.ips == ["10.1.0.10", "10.1.1.10"]
            guard = temporal_client.get_workflow_handle(org_guard_workflow_id(org))
            usage = await guard.query(QUERY_USAGE, result_type=GuardUsage)
            assert usage.holders == {conn: handles[step].id}  # one slot, held once
        for handle in handles.values():
            await handle.signal(SIGNAL_DELETE)
            assert (await handle.result()).status.value == "Deleted"
            assert (await query(handle)).status.value == "Deleted"
    finally:
        second.terminate()
        await asyncio.to_thread(second.wait)
