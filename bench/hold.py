"""One worker process holding many live Active connections (1,000) through two drift
rounds: its RSS (sampled from /proc every 0.5 s), the dev server's, and the SDK's sticky
cache metrics over the rounds (a miss is a full replay from history; forced evictions).

The drift interval is short (``--drift-interval``, 120 s) so two rounds fit. A round is
counted from the outside: each drift check reads its endpoint once
(DescribeVpcEndpoints, sandbox AWS's counter), so the window after every connection is
Active ends when those reads reach 2 x N.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

from activities.store import Store
from bench.harness import (
    Bench,
    Worker,
    gather_limited,
    terminate_workflows,
    wait_closed,
    wait_store,
)
from bench.procs import diff_counts, metric
from bench.provisioning import POOL_FULL, orgs_for, sdk_counts, sdk_delta, terminate_guards
from starter.client import ConnectionsClient
from workflows.contracts import connection_workflow_id, org_guard_workflow_id

# At most this many connections provisioning at once: this run measures memory, not
# speed, and a backlog far beyond the worker's pace ends connections with SLOT_TIMEOUT
# (the guard's answer queued behind everything else for more than 60 s).
WINDOW = 50
STALL = 120


async def paced_creates(cc: ConnectionsClient, store: Store, service: str,
                        pairs: list[tuple[str, str]]) -> None:
    """Create every connection, at most ``WINDOW`` provisioning at a time, and wait until
    all are Active; fail when none progresses for ``STALL`` seconds."""
    started = 0
    done = 0
    stalled_at = time.monotonic() + STALL

    async def progress() -> None:
        nonlocal done, stalled_at
        await asyncio.sleep(0.5)
        counts = await asyncio.to_thread(store.count_by_status)
        if counts.get("Failed"):
            raise RuntimeError(f"connections failed while provisioning: {counts}")
        now_done = counts.get("Active", 0) + counts.get("Degraded", 0)
        if now_done > done:
            done, stalled_at = now_done, time.monotonic() + STALL
        elif time.monotonic() > stalled_at:
            raise TimeoutError(f"no connection became Active in {STALL}s (the worker stopped "
                               f"making progress): {counts}")

    for batch_start in range(0, len(pairs), 10):
        while started - done >= WINDOW:
            await progress()
        batch = pairs[batch_start:batch_start + 10]
        await asyncio.gather(*(cc.create(org, service, connection_id=cid)
                               for org, cid in batch))
        started += len(batch)
    while done < len(pairs):
        await progress()


async def snapshot(b: Bench, w: Worker, t0: float) -> dict[str, Any]:
    """What the run reached when it failed: statuses, memory, the worker's cache and
    pollers (a worker that stopped polling workflow tasks shows 0)."""
    metrics = w.sdk_metrics()
    counts = await asyncio.to_thread(w.the_store().count_by_status)
    return {
        "status_counts": counts,
        "worker_rss_mb": b.sampler.window("worker", t0),
        "dev_server_rss_mb": b.sampler.window("dev_server", t0),
        "sdk": sdk_counts(metrics),
        "workflow_task_pollers": metric(metrics, "temporal_num_pollers",
                                        poller_type="workflow_task"),
        "sticky_workflow_task_pollers": metric(metrics, "temporal_num_pollers",
                                               poller_type="sticky_workflow_task"),
        "workflow_task_slots_used": metric(metrics, "temporal_worker_task_slots_used",
                                           worker_type="WorkflowWorker"),
        "boto3_pool_full_warnings": w.proc.log_count(POOL_FULL),
    }


DRIFT_READ = "DescribeVpcEndpoints"


async def run(b: Bench) -> dict[str, Any]:
    n, interval = b.opts.hold_connections, b.opts.drift_interval
    prefix = b.name("hold")
    pairs = orgs_for(prefix, n, b.opts.per_org)
    orgs = {org for org, _ in pairs}
    owned = [connection_workflow_id(org, cid) for org, cid in pairs]
    owned += [org_guard_workflow_id(org) for org in orgs]
    out: dict[str, Any] = {"connections": n, "orgs": len(orgs), "drift_interval_s": interval,
                           "completed": False}
    async with b.privnet_worker(prefix, drift_check_interval_seconds=interval) as w:
        t0 = time.monotonic()
        try:
            await _hold(b, w, pairs, out, t0)
            out["completed"] = True
        except Exception as err:  # noqa: BLE001 - the figures so far are the result
            out["error"] = f"{type(err).__name__}: {err}"
            out["at_failure"] = await snapshot(b, w, t0)
            await terminate_workflows(b.client, owned)
    await terminate_guards(b, orgs)
    return out


async def _hold(b: Bench, w: Worker, pairs: list[tuple[str, str]], out: dict[str, Any],
                t0: float) -> None:
    n, interval = len(pairs), b.opts.drift_interval
    cc, store = w.client(), w.the_store()
    await paced_creates(cc, store, b.service, pairs)
    t_active = time.monotonic()
    out["create_seconds"] = round(t_active - t0, 1)
    out["create_throughput"] = round(n / (t_active - t0), 2)
    rss_at_active = b.sampler.window("worker", t_active - 1)["last_mb"]
    out["worker_rss_mb"] = {"all_active": rss_at_active}
    aws0, m0 = b.admin.requests(), sdk_counts(w.sdk_metrics())
    deadline = time.monotonic() + 2 * interval + 300
    rounds_seen = 0.0
    max_degraded = 0
    while True:
        await asyncio.sleep(2)
        reads = diff_counts(b.admin.requests(), aws0).get(DRIFT_READ, 0)
        rounds_seen = reads / n
        counts = await asyncio.to_thread(store.count_by_status)
        max_degraded = max(max_degraded, counts.get("Degraded", 0))
        if rounds_seen >= 2 or time.monotonic() > deadline:
            break
    t_rounds = time.monotonic()
    aws1, m1 = b.admin.requests(), sdk_counts(w.sdk_metrics())
    counts_end = await asyncio.to_thread(store.count_by_status)
    out.update({
        "drift_rounds_seen": round(rounds_seen, 2),
        "drift_window_s": round(t_rounds - t_active, 1),
        "aws_calls_per_connection_per_round": {
            k: round(v / n / max(rounds_seen, 1e-9), 2)
            for k, v in diff_counts(aws1, aws0).items()},
        "sdk_during_drift_rounds": sdk_delta(m1, m0),
        "workflow_tasks_per_connection_per_round": round(
            (m1["workflow_tasks"] - m0["workflow_tasks"]) / n / max(rounds_seen, 1e-9), 2),
        "max_degraded_seen": max_degraded,
        "status_counts_after_rounds": counts_end,
    })
    out["worker_rss_mb"]["during_drift_rounds"] = b.sampler.window("worker", t_active, t_rounds)
    if rounds_seen < 2:
        raise RuntimeError(f"only {rounds_seen:.2f} drift rounds in {t_rounds - t_active:.0f}s: "
                           "the worker cannot keep up with this drift interval")
    before_delete = counts_end.get("Deleted", 0)
    t2 = time.monotonic()
    await gather_limited([partial(cc.delete, org, cid) for org, cid in pairs], 50)
    t3 = await wait_store(store, "Deleted", before_delete + n, within=600 + 2 * n, interval=1)
    await wait_closed(b.client, [connection_workflow_id(o, c) for o, c in pairs],
                      within=600 + n)
    out["delete_throughput"] = round(n / (t3 - t2), 2)
    out["worker_rss_mb"]["whole_run"] = b.sampler.window("worker", t0, t3)
    out["dev_server_rss_mb"] = b.sampler.window("dev_server", t0, t3)
    out["boto3_pool_full_warnings"] = w.proc.log_count(POOL_FULL)
