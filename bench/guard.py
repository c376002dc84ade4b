"""The org guard alone: decisions per second.

``SlotRequester`` workflows stand in for connections (started and idle before the clock
starts); the driver then sends every acquire at once exactly as the ``request_slot``
activity does (``GuardActivities.request_slot``: signal-with-start of the guard), and the
clock stops when every requester has its decision (the guard's store write, its reply
signal, the requester's workflow task). A first burst on fresh orgs includes starting
their guards (cold); a second burst on the same orgs finds them running (warm).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from activities.guard import GuardActivities
from bench.harness import Bench, cpu_per
from bench.histories import history_counts
from bench.provisioning import sdk_counts, sdk_delta, terminate_guards
from bench.workflows import SlotRequester
from workflows.contracts import SlotRequest, org_guard_workflow_id


async def burst(b: Bench, guard_acts: GuardActivities, task_queue: str, prefix: str,
                orgs: list[str], m: int, w: Any) -> dict[str, Any]:
    wids = [f"{prefix}-r{i}" for i in range(m)]
    handles = await asyncio.gather(*(
        b.client.start_workflow(SlotRequester.run, f"{prefix}-c{i}", id=wid,
                                task_queue=task_queue)
        for i, wid in enumerate(wids)))
    # Every requester has run its first workflow task (it is idle, waiting) before t0.
    async with asyncio.timeout(300):
        await asyncio.gather(*(h.query(SlotRequester.decided) for h in handles))
    m0, c0 = sdk_counts(w.sdk_metrics()), b.cpu(w)
    t0 = time.monotonic()
    await asyncio.gather(*(
        guard_acts.request_slot(SlotRequest(
            org_id=orgs[i % len(orgs)], connection_id=f"{prefix}-c{i}", workflow_id=wid,
            default_limit=100_000))
        for i, wid in enumerate(wids)))
    async with asyncio.timeout(300):
        granted = await asyncio.gather(*(h.result() for h in handles))
    t1 = time.monotonic()
    m1, c1 = sdk_counts(w.sdk_metrics()), b.cpu(w)
    if not all(granted):
        raise RuntimeError(f"{granted.count(False)} of {m} acquires were denied")
    return {
        "decisions": m,
        "seconds": round(t1 - t0, 3),
        "decisions_per_second": round(m / (t1 - t0), 1),
        "cpu_ms_per_decision": cpu_per(c1, c0, m),
        "sdk_per_decision": {k: round(v / m, 2) for k, v in sdk_delta(m1, m0).items()},
    }


async def run(b: Bench) -> dict[str, Any]:
    prefix = b.name("guard")
    out: dict[str, Any] = {}
    async with b.privnet_worker(prefix, requester=True) as w:
        assert w.settings is not None
        acts = GuardActivities(b.client, w.settings.task_queue,
                               w.settings.guard_leak_check_interval_seconds)
        for count in b.opts.guard_orgs:
            orgs = [f"{prefix}-{count}o-{i}" for i in range(count)]
            label = f"{count}_org" if count == 1 else f"{count}_orgs"
            cold = await burst(b, acts, w.settings.task_queue, f"{prefix}-{count}a", orgs,
                               b.opts.guard_decisions, w)
            warm = await burst(b, acts, w.settings.task_queue, f"{prefix}-{count}b", orgs,
                               b.opts.guard_decisions, w)
            guard_hist = await history_counts(b.client, org_guard_workflow_id(orgs[0]))
            out[label] = {"orgs": count, "cold": cold, "warm": warm,
                          "guard_history_first_org": guard_hist}
            await terminate_guards(b, set(orgs))
    return out
