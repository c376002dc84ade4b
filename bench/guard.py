"""The org guard alone: decisions per second.

The driver sends every acquire at once exactly as a connection's ``acquire_slot`` activity
does (``GuardActivities.acquire_slot``: update-with-start of the guard, the decision is the
update's result), and the clock stops when every acquire has its decision (the guard's
workflow task and its store write included). A first burst on fresh orgs includes starting
their guards (cold); a second burst on the same orgs finds them running (warm).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from temporalio.exceptions import ApplicationError

from activities.guard import GuardActivities
from bench.harness import Bench, cpu_per
from bench.histories import history_counts
from bench.provisioning import sdk_counts, sdk_delta, terminate_guards
from workflows.contracts import SlotRequest, org_guard_workflow_id


async def ask(guard_acts: GuardActivities, req: SlotRequest) -> Any:
    """As the connection's activity is retried by Temporal (1 s, doubling, at most 10 s)
    when the guard answers GUARD_BUSY (more than the server's 10 updates in flight)."""
    delay = 1.0
    while True:
        try:
            return await guard_acts.acquire_slot(req)
        except ApplicationError as err:
            if err.type != "GUARD_BUSY":
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


async def burst(b: Bench, guard_acts: GuardActivities, prefix: str,
                orgs: list[str], m: int, w: Any) -> dict[str, Any]:
    m0, c0 = sdk_counts(w.sdk_metrics()), b.cpu(w)
    t0 = time.monotonic()
    async with asyncio.timeout(300):
        decisions = await asyncio.gather(*(
            ask(guard_acts, SlotRequest(
                org_id=orgs[i % len(orgs)], connection_id=f"{prefix}-c{i}",
                workflow_id=f"{prefix}-r{i}", default_limit=100_000))
            for i in range(m)))
    t1 = time.monotonic()
    m1, c1 = sdk_counts(w.sdk_metrics()), b.cpu(w)
    denied = sum(1 for d in decisions if not d.granted)
    if denied:
        raise RuntimeError(f"{denied} of {m} acquires were denied")
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
    async with b.privnet_worker(prefix) as w:
        assert w.settings is not None
        acts = GuardActivities(b.client, w.settings.guard_queue,
                               w.settings.guard_leak_check_interval_seconds)
        for count in b.opts.guard_orgs:
            orgs = [f"{prefix}-{count}o-{i}" for i in range(count)]
            label = f"{count}_org" if count == 1 else f"{count}_orgs"
            cold = await burst(b, acts, f"{prefix}-{count}a", orgs, b.opts.guard_decisions, w)
            warm = await burst(b, acts, f"{prefix}-{count}b", orgs, b.opts.guard_decisions, w)
            guard_hist = await history_counts(b.client, org_guard_workflow_id(orgs[0]))
            out[label] = {"orgs": count, "cold": cold, "warm": warm,
                          "guard_history_first_org": guard_hist}
            await terminate_guards(b, set(orgs))
    return out
