"""``privnet soak`` / ``make soak`` / ``python -m soak``: random operations and faults against
the running stack for ``--duration`` seconds, then a settle period without faults, then the
checker. Exits 0 when it found nothing, 1 on any violation (each printed with the
connection's timeline and its last history events), 2 on bad arguments."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from soak.checker import Truth, Violation, check
from soak.ops import STABLE, Driver
from soak.world import WORKERS, SoakWorld, soak_env

DRIFT_SECONDS = 4.0
STEP_SECONDS = 12.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="privnet soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=None, help="RNG seed (default: random, printed)")
    p.add_argument("--duration", type=float, default=60, help="seconds of operations (60)")
    p.add_argument("--orgs", type=int, default=6, help="organizations (6)")
    p.add_argument("--fault-rate", type=float, default=0.3,
                   help="AWS throttling + 5xx rate, and the base of the Kubernetes fault "
                        "rates (0.3)")
    p.add_argument("--concurrency", type=int, default=4, help="operations in flight (4)")
    p.add_argument("--settle-timeout", type=float, default=240,
                   help="after the operations, seconds to wait for every connection to "
                        "settle (240)")
    p.add_argument("--database-url", default=None,
                   help="the store (default SQLite in the data directory), e.g. "
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    p.add_argument("--data-dir", default=None,
                   help="where the stack keeps its files (default: a temporary directory, "
                        "removed after a clean run)")
    p.add_argument("--report", default=None, help="also write the report as JSON here")
    return p


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def inject_faults(world: SoakWorld, rate: float, seed: int) -> None:
    from sandbox.kube.faults import FaultConfig

    aws = world.stack.aws
    aws.clear_faults(seed=seed)
    aws.inject_fault("RequestLimitExceeded", rate=rate / 2)
    aws.inject_fault("InternalError", rate=rate / 2)
    # The create happened, its response was lost: the retry must find it (ClientToken).
    aws.inject_fault("Unavailable", rate=rate, operations=["CreateVpcEndpoint"],
                     phase="after")
    aws.set_delays(lag=2.0)  # a new endpoint is invisible to describes for 2 s
    world.stack.kube.set_faults(FaultConfig(
        seed=seed, conflict_rate=rate / 3, error_rate=rate / 3, lost_response_rate=rate / 6,
        latency_rate=0.1, latency_seconds=1.0))


def fault_counts(world: SoakWorld) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for kind, op in list(world.stack.aws.injected):
        lost = kind == "Unavailable" and op == "CreateVpcEndpoint"
        counts["aws create done, response lost" if lost else f"aws {kind}"] += 1
    for kind, n in world.stack.kube.fault_state()["injected"].items():
        counts[f"kube {kind}"] += n
    return dict(sorted(counts.items()))


def clear_faults(world: SoakWorld) -> None:
    world.stack.aws.clear_faults()
    world.stack.aws.set_delays(lag=0.0)
    world.stack.kube.clear_faults()


async def chaos(world: SoakWorld, rng: random.Random, until: float, gap: float,
                orgs: list[str], events: Counter[str]) -> None:
    """Worker kills (restarted after a random pause), dev server restarts on the same data
    file, and org guard terminations: each at least once, then at random."""
    plan = ["kill", "restart", "terminate"]
    rng.shuffle(plan)
    restarts: list[asyncio.Task[None]] = []

    async def later(n: int, pause: float) -> None:
        await asyncio.sleep(pause)
        await asyncio.to_thread(world.start_worker, n)

    while True:
        await asyncio.sleep(rng.uniform(0.5 * gap, 1.5 * gap))
        if time.monotonic() >= until:
            break
        what = plan.pop(0) if plan else rng.choices(["kill", "restart", "terminate"],
                                                    (5, 2, 3))[0]
        if what == "kill":
            n = rng.randrange(WORKERS)
            if world.workers.get(n) is None:
                continue
            await asyncio.to_thread(world.kill_worker, n)
            restarts.append(asyncio.create_task(later(n, rng.uniform(1, 6))))
            log(f"killed worker {n} (SIGKILL)")
        elif what == "restart":
            await asyncio.to_thread(world.restart_server, rng.uniform(0.5, 3))
            log("restarted the Temporal dev server on its data file")
        else:
            org = rng.choice(orgs)
            ok = await asyncio.to_thread(world.terminate_guard, org)
            log(f"terminated the org guard of {org}" if ok else f"no guard of {org} to terminate")
            if not ok:
                continue
        events[what] += 1
    for task in restarts:
        await task


async def settle(world: SoakWorld, store: Any, orgs: list[str], within: float) -> bool:
    """Faults off, both workers up; then until every connection stays in a stable status
    through two drift rounds (so hand-deleted policies and moved IPs are repaired)."""
    from soak.truth import store_rows

    clear_faults(world)
    world.ensure_workers()
    deadline = time.monotonic() + within
    stable_since: float | None = None
    while time.monotonic() < deadline:
        rows, _ = await asyncio.to_thread(store_rows, store, orgs)
        unstable = sorted(f"{k[0]}/{k[1]}:{r['status']}" for k, r in rows.items()
                          if r["status"] not in STABLE)
        if unstable:
            stable_since = None
        elif stable_since is None:
            stable_since = time.monotonic()
        elif time.monotonic() - stable_since >= 2 * DRIFT_SECONDS + 4:
            return True
        await asyncio.sleep(1)
    log(f"not settled after {within:.0f}s: {unstable[:10]}")
    return False


def report_text(rep: dict[str, Any]) -> str:
    lines = [f"privnet soak: seed {rep['seed']}, {rep['duration']:.0f}s of operations, "
             f"{rep['orgs']} orgs, fault rate {rep['fault_rate']}, wall {rep['wall_seconds']}s"]
    lines.append("operations (outcome counts): " + ", ".join(
        f"{k} {sum(v.values())} {v}" for k, v in rep["operations"].items()))
    lines.append("faults injected: " + ", ".join(f"{k} {v}" for k, v in rep["faults"].items()))
    lines.append(f"survived: {rep['worker_kills']} worker kills, {rep['server_restarts']} dev "
                 f"server restarts, {rep['guard_terminations']} guard terminations")
    lines.append("connections by final status: " + ", ".join(
        f"{k} {v}" for k, v in rep["final_statuses"].items()))
    lines.append(f"endpoints created {rep['endpoints_created']}, left {rep['endpoints_left']} "
                 f"(of live connections {rep['endpoints_live']}); policies left "
                 f"{rep['policies_left']} (of live connections {rep['policies_live']})")
    lines.append(f"settled: {rep['settled']}; invariant violations: {len(rep['violations'])}")
    return "\n".join(lines)


def explain(v: Violation, truth: Truth) -> str:
    out = [f"VIOLATION {v}"]
    t = truth.conns.get((v.org, v.cid)) if v.cid else None
    if t is not None:
        out += [f"    timeline {e['seq']:>3} {e['at']:%H:%M:%S.%f} {e['status']}: {e['detail']}"
                for e in t.events]
        out += [f"    history  {line}" for line in t.history_tail]
    elif v.cid is None and v.org in truth.guards:
        out += [f"    guard history  {line}" for line in truth.guards[v.org].history_tail]
    return "\n".join(out)


async def soak(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    rng = random.Random(seed)
    nonce = secrets.token_hex(2)
    orgs = [f"s{seed % 1000}-{nonce}-o{i}" for i in range(args.orgs)]
    data_dir: Path = args.dir
    log(f"seed {seed}; stack files in {data_dir}")
    started = time.monotonic()
    world = SoakWorld(data_dir, args.database_url, soak_env(DRIFT_SECONDS, STEP_SECONDS), log)
    violations: list[Violation] = []
    try:
        info = await asyncio.to_thread(world.start)
        os.environ.update(world.env())
        from activities.store import Store
        from settings import Settings
        from soak.truth import collect
        from starter.client import ConnectionsClient

        settings = Settings()  # type: ignore[call-arg]
        store = Store(settings.database_url)
        client = await ConnectionsClient.connect(settings, store=store)
        driver = Driver(rng=rng, client=client, api_url=info["api_url"],
                        api_token=info["api_token"], aws=world.stack.aws,
                        kube_url=info["kube_url"], services=info["customer_services"],
                        orgs=orgs, namespaces=info["task_namespaces"],
                        default_limit=settings.default_org_limit)
        inject_faults(world, args.fault_rate, seed)
        until = time.monotonic() + args.duration
        events: Counter[str] = Counter()
        log(f"operations for {args.duration:.0f}s on {len(orgs)} orgs, fault rate "
            f"{args.fault_rate}")
        await asyncio.gather(
            driver.run(until, args.concurrency),
            chaos(world, rng, until, min(40.0, max(8.0, args.duration / 6)), orgs, events))
        faults = fault_counts(world)
        crashed = world.dead_workers()
        log(f"{len(driver.ops)} operations; settling (faults off)")
        settled = await settle(world, store, orgs, within=args.settle_timeout)
        truth = await collect(client.temporal, store, world.stack.aws, world.stack.kube,
                              info["task_namespaces"], set(driver.conns), orgs)
        violations = check(driver.ops, driver.conns, truth, orgs, settings.default_org_limit)
        violations += [Violation("crash", "worker", str(n), "a worker exited by itself")
                       for n in crashed]
        await driver.close()
        finals = Counter(t.store["status"] for t in truth.conns.values() if t.store)
        ours = [r for r in truth.inventory if r["tags"].get("privnet.dev/org-id") in orgs
                and str(r["state"]) != "deleted"]
        live_keys = {k for k, t in truth.conns.items()
                     if t.store and t.store["status"] not in ("Deleted", "Cancelled", "Failed",
                                                              "Rejected")}

        def owner(d: dict[str, Any]) -> tuple[str, str]:
            return (d.get("privnet.dev/org-id", ""), d.get("privnet.dev/connection-id", ""))

        pols = [p for p in truth.policies
                if (p["metadata"].get("labels") or {}).get("privnet.dev/org-id") in orgs]
        rep = {
            "seed": seed, "duration": args.duration, "orgs": args.orgs,
            "fault_rate": args.fault_rate, "database": settings.database_url.split(":")[0],
            "operations": driver.counts(), "faults": faults,
            "worker_kills": world.kills, "server_restarts": world.server_restarts,
            "guard_terminations": world.guard_terminations,
            "final_statuses": dict(sorted(finals.items())),
            "endpoints_created": sum(1 for e in truth.aws_history
                                     if e["event"] == "created" and e.get("org_id") in orgs),
            "endpoints_left": sum(1 for r in ours if owner(r["tags"]) not in live_keys),
            "endpoints_live": sum(1 for r in ours if owner(r["tags"]) in live_keys),
            "policies_left": sum(1 for p in pols
                                 if owner(p["metadata"]["labels"]) not in live_keys),
            "policies_live": sum(1 for p in pols if owner(p["metadata"]["labels"]) in live_keys),
            "settled": settled,
            "violations": [str(v) for v in violations],
            "wall_seconds": round(time.monotonic() - started, 1),
        }
        for v in violations:
            print(explain(v, truth), flush=True)
        print(report_text(rep), flush=True)
        doc = json.dumps({**rep, "ops": [o.to_dict() for o in driver.ops]}, indent=1,
                         default=str)
        for path in filter(None, (args.report, data_dir / "soak-report.json")):
            await asyncio.to_thread(Path(path).write_text, doc)
    finally:
        await asyncio.to_thread(world.stop)
    if violations:
        log(f"{len(violations)} violations; stack files kept in {data_dir} (replay: --seed "
            f"{seed})")
        return 1
    if args.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration <= 0 or args.orgs < 1 or not 0 <= args.fault_rate <= 1:
        print("privnet soak: error: --duration > 0, --orgs >= 1, --fault-rate within 0..1",
              file=sys.stderr)
        return 2
    args.dir = Path(args.data_dir or tempfile.mkdtemp(prefix="privnet-soak-")).absolute()
    return asyncio.run(soak(args))
