"""The benchmark of issue 12 in one process run (``make bench``; ``BENCH_ARGS=--quick``).

Starts one Temporal dev server and one sandboxes process, then for each repetition runs
every scenario side by side on them, each with a fresh worker process:

- ``throughput``: baseline and provisioning (create, then delete) at each N, the order of
  N rotated each repetition (``size_order``);
- ``guard``: the org guard alone, decisions per second for 1 and for 100 orgs;
- ``skip``: AWS calls and latency under long waits, on the time-skipping test server
  with the same real worker (a 10-minute pendingAcceptance wait; available after
  30-150 s);
- ``hold``: RSS of one worker holding 1,000 Active connections through two drift rounds.

Prints a table, writes ``bench/results/<label>.json`` (every figure of every repetition and
its breakdown), ``.md`` (the table) and ``.png`` (throughput against N); the results so far
are kept in ``<label>.partial.json`` after every scenario, and ``--render FILE`` redoes the
table and chart of a results file. Process logs stay in a temporary directory when a
scenario failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.harness import Bench, Options, connect_client
from bench.procs import (
    REPO_ROOT,
    TEMPORAL_DBS,
    AwsAdmin,
    Sampler,
    start_dev_server,
    start_sandboxes,
)

SCENARIOS = ("throughput", "guard", "skip", "hold")


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="N=20, one repetition, small hold/guard runs (to iterate)")
    p.add_argument("--sizes", help="comma-separated N for throughput (default 50,100,200)")
    p.add_argument("--reps", type=int, help="repetitions (default 3)")
    p.add_argument("--per-org", type=int, default=2,
                   help="connections per org in throughput and hold (default 2)")
    p.add_argument("--hold", type=int, help="live connections in the RSS run (default 1000)")
    p.add_argument("--drift-interval", type=float,
                   help="drift check interval (s) in the RSS run (default 120)")
    p.add_argument("--guard-decisions", type=int, help="acquires per guard burst (default 200)")
    p.add_argument("--pending-times", default="30,60,90,120,150",
                   help="seconds AWS keeps the endpoint pending, for the latency figure")
    p.add_argument("--acceptance-wait", type=float, default=600,
                   help="seconds an endpoint stays pendingAcceptance (default 600)")
    p.add_argument("--only", help=f"comma-separated scenarios out of {','.join(SCENARIOS)}")
    p.add_argument("--history-sample", type=int, default=10,
                   help="connection histories counted per run (default 10)")
    p.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"))
    p.add_argument("--label", help="file name of the results (default: UTC timestamp)")
    p.add_argument("--temporal-db", choices=TEMPORAL_DBS, default="file",
                   help="the dev server's database: a SQLite file as the embedded stack runs "
                   "it (default), or in memory as the tests run it")
    p.add_argument("--render", metavar="JSON",
                   help="only redo the summary, table and chart of a results file")
    a = p.parse_args(argv)
    if a.render:
        render(Path(a.render))
        sys.exit(0)
    quick = bool(a.quick)
    scenarios = a.only.split(",") if a.only else list(SCENARIOS)
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s) {sorted(unknown)}: choose from {', '.join(SCENARIOS)}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Options(
        sizes=[int(s) for s in a.sizes.split(",")] if a.sizes else ([20] if quick else [50, 100, 200]),
        reps=a.reps or (1 if quick else 3),
        per_org=a.per_org,
        hold_connections=a.hold or (20 if quick else 1000),
        drift_interval=a.drift_interval or (20 if quick else 120),
        guard_decisions=a.guard_decisions or (40 if quick else 200),
        guard_orgs=[1, 100] if not quick else [1, 20],
        pending_times=[int(s) for s in a.pending_times.split(",")],
        acceptance_wait=a.acceptance_wait,
        scenarios=scenarios,
        history_sample=a.history_sample,
        out_dir=Path(a.out),
        label=a.label or (f"quick-{stamp}" if quick else stamp),
        quick=quick,
        temporal_db=a.temporal_db,
    )


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    from importlib.metadata import version

    from sandbox.binaries import temporal_cli_path

    try:
        cli = subprocess.run([temporal_cli_path(), "--version"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        cli = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "temporalio": version("temporalio"),
        "temporal_cli": cli,
        "moto": version("moto"),
        "commit": commit,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


async def run_scenarios(b: Bench, results: dict[str, Any], meta: dict[str, Any]) -> None:
    from bench import guard, hold, provisioning, skipping

    skip_env = None
    try:
        if "skip" in b.opts.scenarios:
            skip_env = await skipping.start_server()
        for rep in range(1, b.opts.reps + 1):
            for scenario in b.opts.scenarios:
                log(f"rep {rep}/{b.opts.reps}: {scenario}")
                t0 = time.monotonic()
                load0 = os.getloadavg()[0]
                try:
                    if scenario == "throughput":
                        order = size_order(b.opts.sizes, rep)
                        for position, n in enumerate(order, start=1):
                            log(f"  throughput N={n}")
                            out = await provisioning.throughput(b, n)
                            out.update(rep=rep, position=position, order=order,
                                       load_average=[round(load0, 2),
                                                     round(os.getloadavg()[0], 2)])
                            results["throughput"].append(out)
                            log("  " + report.one_line_throughput(out))
                    elif scenario == "guard":
                        out = await guard.run(b)
                        out["rep"] = rep
                        results["guard"].append(out)
                        log("  " + report.one_line_guard(out))
                    elif scenario == "skip":
                        assert skip_env is not None
                        out = await skipping.run(b, skip_env)
                        out["rep"] = rep
                        results["skip"].append(out)
                        log("  " + report.one_line_skip(out))
                    elif scenario == "hold":
                        out = await hold.run(b)
                        out["rep"] = rep
                        results["hold"].append(out)
                        log("  " + report.one_line_hold(out))
                except Exception as err:  # noqa: BLE001 - keep the other figures
                    results["errors"].append({"rep": rep, "scenario": scenario,
                                              "error": f"{type(err).__name__}: {err}",
                                              "traceback": traceback.format_exc()})
                    log(f"  {scenario} FAILED: {type(err).__name__}: {err}")
                log(f"  ({time.monotonic() - t0:.0f}s)")
                save_partial({"meta": meta, "results": results}, b.opts)
    finally:
        if skip_env is not None:
            await skip_env.shutdown()


def size_order(sizes: list[int], rep: int) -> list[int]:
    """The order of N in repetition ``rep`` (from 1): the sizes rotated by one more place
    each repetition, so over len(sizes) repetitions every N runs once in every position.
    The dev server's SQLite file slows every later measurement: in ascending order every
    time (50, 100, 200), its CPU per connection rose with N (60.5 -> 70.8 ms, final-fec2943);
    in descending order it was flat in N and rose with the repetition instead
    (scratch-desc-dac174e), so a fixed order charges the fill to the last N."""
    k = (rep - 1) % len(sizes) if sizes else 0
    return sizes[k:] + sizes[:k]


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def amain(opts: Options) -> int:
    from workflows.contracts import SEARCH_ATTRIBUTES

    results: dict[str, Any] = {"throughput": [], "guard": [], "skip": [], "hold": [],
                               "errors": []}
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
    }
    run_dir = Path(tempfile.mkdtemp(prefix="privnet-bench-"))
    log(f"working files and process logs in {run_dir}")
    sampler = Sampler()
    sampler.start()
    dev, address = await asyncio.to_thread(
        start_dev_server, run_dir, [k.name for k in SEARCH_ATTRIBUTES], opts.temporal_db)
    sandboxes = None
    ok = False
    try:
        sandboxes = await asyncio.to_thread(start_sandboxes, run_dir)
        sampler.watch("dev_server", dev.pid)
        sampler.watch("sandboxes", sandboxes.pid)
        client = await connect_client(address)
        b = Bench(opts=opts, run_dir=run_dir, dev=dev, address=address, sandboxes=sandboxes,
                  sampler=sampler, client=client, admin=AwsAdmin(sandboxes.info["aws_url"]))
        t0 = time.monotonic()
        await run_scenarios(b, results, meta)
        meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        meta["wall_minutes"] = round((time.monotonic() - t0) / 60, 1)
        meta["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        meta["dev_server_rss_whole_run"] = sampler.window("dev_server", 0)
        meta["notes"] = report.notes(opts.temporal_db)
        doc = {"meta": meta, "results": results, "summary": report.summarize(results, opts)}
        paths = report.write(doc, opts)
        (opts.out_dir / f"{opts.label}.partial.json").unlink(missing_ok=True)
        print(report.table(doc))
        log("wrote " + ", ".join(str(p) for p in paths))
        ok = not results["errors"]
    finally:
        sampler.stop()
        if sandboxes is not None:
            await asyncio.to_thread(sandboxes.stop)
        await asyncio.to_thread(dev.stop)
        if ok:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            log(f"kept {run_dir} (process logs) for inspection")
    return 0 if ok else 1


def render(path: Path) -> None:
    """Summary, Markdown table and chart again from a results file (after a change to the
    report, or to compare runs), written beside it."""
    doc = json.loads(path.read_text())
    o = doc["meta"]["options"]
    opts = argparse.Namespace(pending_times=o["pending_times"], acceptance_wait=o["acceptance_wait"],
                              out_dir=path.parent, label=path.stem)
    doc["summary"] = report.summarize(doc["results"], opts)
    doc["meta"]["notes"] = report.notes(o.get("temporal_db", "file"))
    report.write(doc, opts)
    print(report.table(doc))


def save_partial(doc: dict[str, Any], opts: Options) -> None:
    """The results so far, after every scenario: a run stopped halfway keeps them."""
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    path = opts.out_dir / f"{opts.label}.partial.json"
    path.write_text(dump(doc) + "\n")


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    sys.exit(asyncio.run(amain(opts)))


def dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, default=str)
