"""Throughput, side by side on one dev server: Temporal's baseline (a bare workflow of five
no-op activities) and privnet's provisioning (real worker, real activities, sandboxes),
N at once, from the first start until all complete; then deletion of all of them.

Each measurement gets a fresh worker process (and, for privnet, a fresh store) warmed up
with a few workflows first, so nothing carries over between N or between repetitions.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from temporalio.client import WorkflowHandle

from bench.harness import (
    Bench,
    Worker,
    cpu_per,
    per,
    terminated_on_failure,
    wait_closed,
    wait_store,
)
from bench.histories import average, history_counts
from bench.procs import diff_counts, metric
from bench.workflows import BASELINE_TASK_QUEUE, BaselineWorkflow
from workflows.contracts import connection_workflow_id, org_guard_workflow_id

POOL_FULL = "Connection pool is full"
GUARDS = '-guards"'  # the end of the org guards' task_queue label


def sdk_counts(metrics: dict[str, float]) -> dict[str, float]:
    """The SDK metrics the report uses (cumulative values of one worker process)."""
    return {
        "workflow_tasks": metric(metrics, "temporal_workflow_task_execution_latency_count"),
        # Recorded for every task that replays any events, cache hits included: not a
        # count of full replays (those are the cache misses).
        "replay_latency_samples": metric(metrics, "temporal_workflow_task_replay_latency_count"),
        "activity_tasks": metric(metrics, "temporal_activity_execution_latency_count"),
        "local_activities": metric(metrics, "temporal_local_activity_execution_latency_count"),
        "sticky_cache_hits": metric(metrics, "temporal_sticky_cache_hit"),
        "sticky_cache_misses": metric(metrics, "temporal_sticky_cache_miss"),
        "sticky_cache_forced_evictions": metric(
            metrics, "temporal_sticky_cache_total_forced_eviction"),
        # The org guards' worker polls '<queue>-guards': its replays apart from the
        # connections' (a guard wakes for its leak check every 5 minutes).
        "guard_cache_misses": metric(metrics, "temporal_sticky_cache_miss", within=GUARDS),
        "guard_forced_evictions": metric(
            metrics, "temporal_sticky_cache_total_forced_eviction", within=GUARDS),
        "sticky_cache_size": metric(metrics, "temporal_sticky_cache_size"),
        "workflow_task_failures": metric(metrics, "temporal_workflow_task_execution_failed"),
    }


def sdk_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    out = {k: after[k] - before.get(k, 0) for k in after if k != "sticky_cache_size"}
    out["sticky_cache_size_end"] = after.get("sticky_cache_size", 0)
    return out


async def baseline(b: Bench, n: int) -> dict[str, Any]:
    prefix = b.name("base")
    async with b.baseline_worker(prefix) as w:
        warm = [await b.client.start_workflow(BaselineWorkflow.run, id=f"{prefix}-warm{i}",
                                              task_queue=BASELINE_TASK_QUEUE) for i in range(5)]
        await wait_closed(b.client, [h.id for h in warm], within=120)
        m0, c0 = sdk_counts(w.sdk_metrics()), b.cpu(w)
        t0 = time.monotonic()
        handles: list[WorkflowHandle[Any, Any]] = await asyncio.gather(*(
            b.client.start_workflow(BaselineWorkflow.run, id=f"{prefix}-{i}",
                                    task_queue=BASELINE_TASK_QUEUE)
            for i in range(n)))
        t1 = await wait_closed(b.client, [h.id for h in handles], within=120 + 5 * n)
        m1, c1 = sdk_counts(w.sdk_metrics()), b.cpu(w)
        hist = await history_counts(b.client, handles[0].id)
    wall = t1 - t0
    return {
        "n": n,
        "seconds": round(wall, 2),
        "throughput": round(n / wall, 2),
        "cpu_ms_per_workflow": cpu_per(c1, c0, n),
        "sdk_per_workflow": per(sdk_delta(m1, m0), n),
        "history": hist,
        "worker_rss": b.sampler.window("worker", t0, t1),
    }


def orgs_for(prefix: str, n: int, per_org: int) -> list[tuple[str, str]]:
    """(org, connection id) pairs: ``per_org`` connections in each of n/per_org orgs."""
    return [(f"{prefix}-o{i // per_org}", f"c{i}") for i in range(n)]


async def warm_up(w: Worker, b: Bench, org: str, count: int = 2) -> None:
    """AssumeRole, boto3/kubernetes clients, imports and the sandbox's first calls."""
    cc, store = w.client(), w.the_store()
    await asyncio.gather(*(cc.create(org, b.service, connection_id=f"w{i}")
                           for i in range(count)))
    await wait_store(store, "Active", count, within=300)
    await asyncio.gather(*(cc.delete(org, f"w{i}") for i in range(count)))
    await wait_store(store, "Deleted", count, within=300)
    await wait_closed(b.client, [connection_workflow_id(org, f"w{i}") for i in range(count)],
                      within=300)


async def terminate_guards(b: Bench, orgs: set[str]) -> None:
    """A guard lives as long as its org; these orgs are the benchmark's own and done."""
    async def one(org: str) -> None:
        try:
            await b.client.get_workflow_handle(org_guard_workflow_id(org)).terminate(
                reason="benchmark run finished")
        except Exception:  # noqa: BLE001 - already closed or never started
            pass
    await asyncio.gather(*(one(org) for org in orgs))


async def sample_histories(b: Bench, pairs: list[tuple[str, str]], k: int) -> dict[str, Any]:
    step = max(1, len(pairs) // max(1, k))
    chosen = pairs[::step][:k]
    samples = await asyncio.gather(*(
        history_counts(b.client, connection_workflow_id(org, cid)) for org, cid in chosen))
    return average(samples)


async def provisioning(b: Bench, n: int) -> dict[str, Any]:
    prefix = b.name("prov")
    pairs = orgs_for(prefix, n, b.opts.per_org)
    orgs = {org for org, _ in pairs} | {f"{prefix}-warm"}
    owned = [connection_workflow_id(org, cid) for org, cid in pairs]
    owned += [connection_workflow_id(f"{prefix}-warm", f"w{i}") for i in range(2)]
    owned += [org_guard_workflow_id(org) for org in orgs]
    async with b.privnet_worker(prefix) as w, terminated_on_failure(b.client, owned):
        cc, store = w.client(), w.the_store()
        await warm_up(w, b, f"{prefix}-warm")
        before = await asyncio.to_thread(store.count_by_status)
        aws0, k0, m0, c0 = b.admin.requests(), b.kube_stats(), sdk_counts(w.sdk_metrics()), b.cpu(w)
        t0 = time.monotonic()
        await asyncio.gather(*(cc.create(org, b.service, connection_id=cid) for org, cid in pairs))
        t_returned = time.monotonic()
        t1 = await wait_store(store, "Active", n, within=120 + 5 * n)
        aws1, k1, m1, c1 = b.admin.requests(), b.kube_stats(), sdk_counts(w.sdk_metrics()), b.cpu(w)
        create_hist = await sample_histories(b, pairs, b.opts.history_sample)
        views = await asyncio.to_thread(store.list, None, ["Active"])
        to_active = sorted((v.updated_at - v.created_at).total_seconds() for v in views
                           if v.created_at and v.updated_at and v.org_id.startswith(prefix + "-o"))

        t2 = time.monotonic()
        await asyncio.gather(*(cc.delete(org, cid) for org, cid in pairs))
        t3 = await wait_store(store, "Deleted", before.get("Deleted", 0) + n,
                              within=120 + 5 * n)
        aws2, k2, m2, c2 = b.admin.requests(), b.kube_stats(), sdk_counts(w.sdk_metrics()), b.cpu(w)
        t_closed = await wait_closed(
            b.client, [connection_workflow_id(org, cid) for org, cid in pairs], within=300)
        full_hist = await sample_histories(b, pairs, b.opts.history_sample)
        pool_full = w.proc.log_count(POOL_FULL)
        worker_counted = w.privnet_metrics()
    await terminate_guards(b, orgs)
    create_s, delete_s = t1 - t0, t3 - t2
    aws_create, aws_delete = diff_counts(aws1, aws0), diff_counts(aws2, aws1)
    return {
        "n": n,
        "orgs": len(orgs) - 1,
        "create": {
            "seconds": round(create_s, 2),
            "throughput": round(n / create_s, 2),
            "create_calls_returned_s": round(t_returned - t0, 2),
            "workflow_start_to_active_s": _spread(to_active),
            "aws_calls_per_connection": per(aws_create, n),
            "aws_calls_total_per_connection": round(sum(aws_create.values()) / n, 2),
            "kube_requests_per_connection": round((k1["requests"] - k0["requests"]) / n, 2),
            "cpu_ms_per_connection": cpu_per(c1, c0, n),
            "sdk_per_connection": per(sdk_delta(m1, m0), n),
            "history": create_hist,
            "worker_rss": b.sampler.window("worker", t0, t1),
        },
        "delete": {
            "seconds": round(delete_s, 2),
            "throughput": round(n / delete_s, 2),
            "until_workflows_closed_s": round(t_closed - t2, 2),
            "aws_calls_per_connection": per(aws_delete, n),
            "aws_calls_total_per_connection": round(sum(aws_delete.values()) / n, 2),
            "kube_requests_per_connection": round((k2["requests"] - k1["requests"]) / n, 2),
            "cpu_ms_per_connection": cpu_per(c2, c1, n),
            "sdk_per_connection": per(sdk_delta(m2, m1), n),
            "worker_rss": b.sampler.window("worker", t2, t3),
        },
        "lifecycle_history": full_hist,
        "boto3_pool_full_warnings": pool_full,
        "worker_counted_aws_calls": round(
            metric(worker_counted, "privnet_aws_calls_total"), 0),
    }


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(statistics.median(values), 2),
        "p95": round(values[min(len(values) - 1, int(len(values) * 0.95))], 2),
        "max": round(values[-1], 2),
    }


async def throughput(b: Bench, n: int) -> dict[str, Any]:
    """Baseline, provisioning, baseline again at one N, and their ratios. The dev server
    slows down as its SQLite file fills (the same bare workflow, 200 at a time, ran at
    13.3/s on a fresh file and 9.4/s after 1,400 more): a baseline only before provisioning
    would charge that drift to provisioning, so the ratio is against the mean of the
    baselines either side (the ratio against the one before is reported too)."""
    base = await baseline(b, n)
    prov = await provisioning(b, n)
    after = await baseline(b, n)
    bracket = (base["throughput"] + after["throughput"]) / 2
    return {
        "n": n,
        "baseline": base,
        "baseline_after": after,
        "provisioning": prov,
        "ratio_provisioning_over_baseline": round(prov["create"]["throughput"] / bracket, 3),
        "ratio_over_baseline_before": round(
            prov["create"]["throughput"] / base["throughput"], 3),
        "ratio_delete_over_create": round(
            prov["delete"]["throughput"] / prov["create"]["throughput"], 3),
    }
