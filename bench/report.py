"""The benchmark's outputs: the summary of every figure (all repetitions) against the goals
of issue 12, the printed/Markdown table, the JSON document and the PNG chart."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

DEV_SERVER_DB = {"file": "a SQLite file, as the embedded stack runs it",
                 "memory": "in memory, as the tests run it"}


def notes(temporal_db: str = "file") -> list[str]:
    """How the run measured, for its JSON and its reader; ``temporal_db`` is the dev
    server's database (``--temporal-db``)."""
    return [
        f"Every process apart: Temporal dev server ({DEV_SERVER_DB[temporal_db]}, headless), "
        "sandboxes (sandbox AWS + sandbox Kubernetes), one worker per measurement, the "
        "driver.",
        *NOTES,
    ]


NOTES = [
    "Sandbox AWS: zero delays, one endpoint VPC with /20 subnets, per-VPC quota raised.",
    "Throughput: N started at once; provisioning through ConnectionsClient.create (which "
    "waits up to 5 s per call for admission), done when the store shows N Active; "
    "delete through ConnectionsClient.delete until the store shows N Deleted.",
    "Ratio: provisioning throughput over the mean of two baselines, one run just before "
    "and one just after it on the same dev server (it slows down as its database fills; "
    "one baseline before would charge that drift to provisioning).",
    "Order of N: rotated by one place each repetition (the default sizes: 50,100,200; "
    "100,200,50; 200,50,100), so over as many repetitions as sizes every N runs once in "
    "every place: the dev server's SQLite file slows every later measurement, and a fixed "
    "order would charge that to the last N.",
    "AWS calls: sandbox AWS's own request counters (STS AssumeRole falls in the warm-up).",
    "skip: time-skipping test server with the same real worker and activities.",
]

GOALS = {
    "ratio_200": 0.6,
    "aws_calls_available": 6,
    "aws_calls_acceptance": 15,
    "latency_s": 10,
    "rss_peak_mb": 400,
}


def _vals(items: list[Any]) -> list[Any]:
    return [x for x in items if x is not None]


def _mean(xs: list[float]) -> float | None:
    return round(statistics.mean(xs), 3) if xs else None


def summarize(results: dict[str, Any], opts: Any) -> dict[str, Any]:
    s: dict[str, Any] = {}
    by_n: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in results["throughput"]:
        by_n[r["n"]].append(r)
    tp: dict[str, Any] = {}
    for n, runs in sorted(by_n.items()):
        tp[str(n)] = {
            "baseline_per_s": [r["baseline"]["throughput"] for r in runs],
            # Runs before the bracketing measured no baseline after provisioning.
            "baseline_after_per_s": [r.get("baseline_after", {}).get("throughput")
                                     for r in runs],
            "ratio_over_baseline_before": [
                r.get("ratio_over_baseline_before", r["ratio_provisioning_over_baseline"])
                for r in runs],
            "provisioning_per_s": [r["provisioning"]["create"]["throughput"] for r in runs],
            "delete_per_s": [r["provisioning"]["delete"]["throughput"] for r in runs],
            "ratio": [r["ratio_provisioning_over_baseline"] for r in runs],
            "delete_over_create": [r["ratio_delete_over_create"] for r in runs],
            "aws_calls_per_connection": [
                r["provisioning"]["create"]["aws_calls_total_per_connection"] for r in runs],
            "aws_calls_per_delete": [
                r["provisioning"]["delete"]["aws_calls_total_per_connection"] for r in runs],
            "cpu_ms_per_connection": [
                r["provisioning"]["create"]["cpu_ms_per_connection"] for r in runs],
            "cpu_ms_per_baseline_workflow": [r["baseline"]["cpu_ms_per_workflow"] for r in runs],
            "boto3_pool_full_warnings": [r["provisioning"]["boto3_pool_full_warnings"]
                                         for r in runs],
        }
    s["throughput"] = tp
    sizes = sorted(by_n)
    if sizes:
        small, large = str(sizes[0]), str(sizes[-1])
        s["ratio_large_vs_small"] = {
            "large_n": sizes[-1], "small_n": sizes[0],
            "large": tp[large]["ratio"], "small": tp[small]["ratio"],
            "not_worse": [a >= b for a, b in zip(tp[large]["ratio"], tp[small]["ratio"],
                                                  strict=False)],
            # By how much, per repetition: "not worse" alone hides whether a "no" is a
            # trend or a difference smaller than the run-to-run noise.
            "difference": [round(a - b, 3) for a, b in zip(
                tp[large]["ratio"], tp[small]["ratio"], strict=False)],
            # Where each ran in its repetition (1 = first): the later, the fuller the dev
            # server's database. Runs from before the rotation have no position.
            "positions": {n: [r.get("position") for r in by_n[int(n)]] for n in (small, large)},
        }
        last = by_n[sizes[-1]]
        s["where_time_goes"] = {
            "n": sizes[-1],
            "connection_history_to_active": last[-1]["provisioning"]["create"]["history"],
            "connection_history_lifecycle": last[-1]["provisioning"]["lifecycle_history"],
            "baseline_history": last[-1]["baseline"]["history"],
            "sdk_per_connection_create": last[-1]["provisioning"]["create"]["sdk_per_connection"],
            "sdk_per_baseline_workflow": last[-1]["baseline"]["sdk_per_workflow"],
            "aws_calls_by_operation": last[-1]["provisioning"]["create"][
                "aws_calls_per_connection"],
            "aws_calls_by_operation_delete": last[-1]["provisioning"]["delete"][
                "aws_calls_per_connection"],
            "kube_requests_per_connection": last[-1]["provisioning"]["create"][
                "kube_requests_per_connection"],
            "workflow_start_to_active_s": last[-1]["provisioning"]["create"][
                "workflow_start_to_active_s"],
        }
    if results["skip"]:
        lat: dict[str, dict[str, Any]] = {}
        for p in opts.pending_times:
            xs = [x for r in results["skip"] for x in r["latency"] if round(x["pending_s"]) == p]
            lat[str(p)] = {
                "latency_s": [x["latency_s"] for x in xs],
                "mean_s": _mean([x["latency_s"] for x in xs]),
                "max_s": max((x["latency_s"] for x in xs), default=None),
                "aws_calls": [x["aws_calls_total"] for x in xs],
            }
        s["latency_available_to_active"] = lat
        s["acceptance"] = {
            "wait_s": opts.acceptance_wait,
            "aws_calls": [r["acceptance"]["aws_calls_total"] for r in results["skip"]],
            "by_operation": [r["acceptance"]["aws_calls"] for r in results["skip"]],
            "accept_to_active_s": [r["acceptance"]["accept_to_active_s"]
                                   for r in results["skip"]],
        }
    if results["hold"]:
        h = results["hold"]

        def g(r: dict[str, Any], *path: str) -> Any:
            for key in path:
                if not isinstance(r, dict) or key not in r:
                    return None
                r = r[key]
            return r

        def peak(r: dict[str, Any]) -> Any:
            return g(r, "worker_rss_mb", "whole_run", "peak_mb") or g(
                r, "at_failure", "worker_rss_mb", "peak_mb")

        s["hold"] = {
            "connections": h[0]["connections"],
            "drift_interval_s": h[0]["drift_interval_s"],
            "completed": [bool(r.get("completed")) for r in h],
            "errors": [r.get("error") for r in h],
            "active_at_failure": [g(r, "at_failure", "status_counts", "Active") for r in h],
            "worker_rss_all_active_mb": [g(r, "worker_rss_mb", "all_active") for r in h],
            "worker_rss_peak_drift_mb": [
                g(r, "worker_rss_mb", "during_drift_rounds", "peak_mb") for r in h],
            "worker_rss_peak_whole_mb": [peak(r) for r in h],
            "dev_server_rss_peak_mb": [
                g(r, "dev_server_rss_mb", "peak_mb") or g(r, "at_failure", "dev_server_rss_mb",
                                                          "peak_mb") for r in h],
            "full_replays_during_drift": [
                g(r, "sdk_during_drift_rounds", "sticky_cache_misses") for r in h],
            "forced_evictions_during_drift": [
                g(r, "sdk_during_drift_rounds", "sticky_cache_forced_evictions") for r in h],
            "guard_replays_during_drift": [
                g(r, "sdk_during_drift_rounds", "guard_cache_misses") for r in h],
            "cache_misses_until_failure": [g(r, "at_failure", "sdk", "sticky_cache_misses")
                                           for r in h],
            "forced_evictions_until_failure": [
                g(r, "at_failure", "sdk", "sticky_cache_forced_evictions") for r in h],
            "workflow_pollers_at_failure": [g(r, "at_failure", "workflow_task_pollers")
                                            for r in h],
            "cache_size_end": [g(r, "sdk_during_drift_rounds", "sticky_cache_size_end")
                               or g(r, "at_failure", "sdk", "sticky_cache_size") for r in h],
            "max_degraded_seen": [r.get("max_degraded_seen") for r in h],
            "create_per_s": [r.get("create_throughput") for r in h],
            "delete_per_s": [r.get("delete_throughput") for r in h],
            "workflow_tasks_per_connection_per_round": [
                r.get("workflow_tasks_per_connection_per_round") for r in h],
            "aws_calls_per_connection_per_round": [
                round(sum(r["aws_calls_per_connection_per_round"].values()), 2)
                if "aws_calls_per_connection_per_round" in r else None for r in h],
        }
    if results["guard"]:
        gd: dict[str, Any] = {}
        for key in results["guard"][0]:
            if key == "rep":
                continue
            gd[key] = {
                "cold_per_s": [r[key]["cold"]["decisions_per_second"] for r in results["guard"]],
                "warm_per_s": [r[key]["warm"]["decisions_per_second"] for r in results["guard"]],
            }
        s["guard_decisions"] = gd
    return s


# --------------------------------------------------------------------------- table


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def rows(doc: dict[str, Any]) -> list[tuple[str, list[Any], str, str]]:
    """(figure, values per repetition, goal, met) for the table."""
    s = doc["summary"]
    out: list[tuple[str, list[Any], str, str]] = []

    def met(ok: list[bool]) -> str:
        return "-" if not ok else ("yes" if all(ok) else "NO")

    tp = s.get("throughput", {})
    for n, t in tp.items():
        out.append((f"baseline workflows/s, N={n}", t["baseline_per_s"], "", ""))
        out.append((f"provisioning connections/s, N={n}", t["provisioning_per_s"], "", ""))
        after = t.get("baseline_after_per_s", [])
        if any(a is not None for a in after):
            out.append((f"baseline workflows/s after provisioning, N={n}", after, "", ""))
        goal = f">= {GOALS['ratio_200']}" if n == "200" else ""
        ok = met([r >= GOALS["ratio_200"] for r in t["ratio"]]) if n == "200" else ""
        out.append((f"ratio provisioning/baseline, N={n}", t["ratio"], goal, ok))
        if any(a is not None for a in after):
            out.append((f"  ratio against the baseline before only, N={n}",
                        t["ratio_over_baseline_before"], "", ""))
    for n, t in tp.items():
        out.append((f"delete connections/s, N={n}", t["delete_per_s"], "", ""))
        out.append((f"ratio delete/create, N={n}", t["delete_over_create"], "", ""))
    if "ratio_large_vs_small" in s:
        r = s["ratio_large_vs_small"]
        out.append((f"ratio N={r['large_n']} not worse than N={r['small_n']}", r["not_worse"],
                    "yes", met(r["not_worse"])))
        if "difference" in r:  # results files from before it have no such row
            out.append((f"  ratio N={r['large_n']} minus ratio N={r['small_n']}",
                        r["difference"], "", ""))
        pos = r.get("positions", {})
        if any(p is not None for ps in pos.values() for p in ps):
            for n in (str(r["small_n"]), str(r["large_n"])):
                out.append((f"  place of N={n} in its repetition (1 = first)", pos[n], "", ""))
    for n, t in tp.items():
        out.append((f"AWS calls/connection (available at once), N={n}",
                    t["aws_calls_per_connection"], f"<= {GOALS['aws_calls_available']}",
                    met([c <= GOALS["aws_calls_available"] for c in t["aws_calls_per_connection"]])))
    for n, t in tp.items():
        out.append((f"AWS calls/delete, N={n}", t["aws_calls_per_delete"], "", ""))
        out.append((f"worker CPU ms/connection, N={n}",
                    [c.get("worker") for c in t["cpu_ms_per_connection"]], "", ""))
        out.append((f"dev server CPU ms/connection, N={n}",
                    [c.get("dev_server") for c in t["cpu_ms_per_connection"]], "", ""))
        out.append((f"worker CPU ms/baseline workflow, N={n}",
                    [c.get("worker") for c in t["cpu_ms_per_baseline_workflow"]], "", ""))
    if "acceptance" in s:
        a = s["acceptance"]
        out.append((f"AWS calls/connection, {a['wait_s'] / 60:.0f}-min pendingAcceptance",
                    a["aws_calls"], f"<= {GOALS['aws_calls_acceptance']}",
                    met([c <= GOALS["aws_calls_acceptance"] for c in a["aws_calls"]])))
        out.append(("accept to Active (s)", a["accept_to_active_s"], "", ""))
    for p, x in s.get("latency_available_to_active", {}).items():
        out.append((f"available->Active (s), pending {p}s", x["latency_s"],
                    f"<= {GOALS['latency_s']}",
                    met([v <= GOALS["latency_s"] for v in x["latency_s"]])))
        out.append((f"  AWS calls/connection, pending {p}s", x["aws_calls"],
                    f"<= {GOALS['aws_calls_acceptance']}",
                    met([c <= GOALS["aws_calls_acceptance"] for c in x["aws_calls"]])))
    if "hold" in s:
        h = s["hold"]
        n = h["connections"]
        out.append((f"{n} Active connections held through 2 drift rounds", h["completed"],
                    "yes", met(h["completed"])))
        if not all(h["completed"]):
            out.append(("  Active when the worker stopped progressing", h["active_at_failure"],
                        "", ""))
            out.append(("  workflow-task pollers at that point", h["workflow_pollers_at_failure"],
                        "", ""))
            out.append(("  sticky cache misses (full replays) until then",
                        h["cache_misses_until_failure"], "", ""))
            out.append(("  forced evictions until then", h["forced_evictions_until_failure"],
                        "", ""))
        out.append((f"worker RSS MB, {n} Active (idle)", h["worker_rss_all_active_mb"], "", ""))
        out.append((f"worker RSS MB peak, 2 drift rounds ({h['drift_interval_s']:.0f}s)",
                    h["worker_rss_peak_drift_mb"], f"< {GOALS['rss_peak_mb']}",
                    met([v < GOALS["rss_peak_mb"] for v in _vals(h["worker_rss_peak_drift_mb"])])))
        out.append(("worker RSS MB peak, whole run", h["worker_rss_peak_whole_mb"],
                    f"< {GOALS['rss_peak_mb']}",
                    met([v < GOALS["rss_peak_mb"] for v in _vals(h["worker_rss_peak_whole_mb"])])))
        out.append(("full replays (sticky cache misses) in drift rounds",
                    h["full_replays_during_drift"], "", ""))
        conn_replays = [None if a is None or b is None else a - b for a, b in zip(
            h["full_replays_during_drift"], h["guard_replays_during_drift"], strict=True)]
        out.append(("  of connections", conn_replays, "0",
                    met([v == 0 for v in _vals(conn_replays)])))
        out.append(("  of org guards (each wakes for its leak check)",
                    h["guard_replays_during_drift"], "", ""))
        out.append(("forced evictions during drift rounds", h["forced_evictions_during_drift"],
                    "", ""))
        out.append(("sticky cache size at end", h["cache_size_end"], "", ""))
        out.append(("workflow tasks/connection/drift round",
                    h["workflow_tasks_per_connection_per_round"], "", ""))
        out.append(("AWS calls/connection/drift round", h["aws_calls_per_connection_per_round"],
                    "", ""))
        out.append((f"creates/s while holding (<= 50 provisioning at once), N={n}",
                    h["create_per_s"], "", ""))
        out.append((f"deletes/s, N={n}", h["delete_per_s"], "", ""))
        out.append(("dev server RSS MB peak", h["dev_server_rss_peak_mb"], "", ""))
    for key, g in s.get("guard_decisions", {}).items():
        label = key.replace("_", " ")
        out.append((f"guard decisions/s, {label}, cold", g["cold_per_s"], "", ""))
        out.append((f"guard decisions/s, {label}, warm", g["warm_per_s"], "", ""))
    return out


def _stats(values: list[Any]) -> tuple[str, str]:
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(nums) < 2:
        return "", ""
    return _fmt(statistics.mean(nums)), _fmt(max(nums))


def table(doc: dict[str, Any]) -> str:
    reps = doc["meta"]["options"]["reps"]
    head = ["figure", *[f"rep {i + 1}" for i in range(reps)], "mean", "max", "goal", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, values, goal, ok in rows(doc):
        cells = [_fmt(v) for v in values] + [""] * (reps - len(values))
        lines.append("| " + " | ".join([name, *cells, *_stats(values), goal, ok]) + " |")
    w = doc["summary"].get("where_time_goes")
    if w:
        c, life, base = (w["connection_history_to_active"], w["connection_history_lifecycle"],
                         w["baseline_history"])
        lines += [
            "",
            f"Per connection (N={w['n']}, {c.get('sampled', 0)} histories), create to Active: "
            f"{c.get('events')} history events, {c.get('workflow_tasks')} workflow tasks, "
            f"{c.get('activities')} activities ({c.get('activity_attempts')} attempts), "
            f"{c.get('local_activities')} local activities, "
            f"{c.get('search_attribute_upserts')} search-attribute upserts, "
            f"{c.get('timers')} timers, {c.get('signals_received')} signals received, "
            f"{c.get('updates_accepted', 0)} updates accepted; "
            f"whole lifecycle (to Deleted): {life.get('events')} events, "
            f"{life.get('workflow_tasks')} workflow tasks, {life.get('activities')} activities. "
            f"Baseline workflow: {base.get('events')} events, {base.get('workflow_tasks')} "
            f"workflow tasks, {base.get('activities')} activities.",
            "Activities per connection to Active: " + ", ".join(
                f"{k} {v}" for k, v in c.get("activities_by_type", {}).items()),
            "AWS calls per connection by operation: " + ", ".join(
                f"{k} {v}" for k, v in w["aws_calls_by_operation"].items())
            + "; per delete: " + ", ".join(
                f"{k} {v}" for k, v in w["aws_calls_by_operation_delete"].items()),
            f"Workflow start to Active (s): {w['workflow_start_to_active_s']}",
        ]
    m = doc["meta"]["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; "
              f"Python {m['python']}, temporalio {m['temporalio']}, {m['temporal_cli']}; "
              f"commit {m['commit']}; load average {m['load_average_at_start']} at start, "
              f"{m.get('load_average_at_end')} at end; {doc['meta'].get('wall_minutes')} min; "
              "dev server database: "
              f"{DEV_SERVER_DB[doc['meta']['options'].get('temporal_db', 'file')]}."]
    if doc["results"]["errors"]:
        lines += ["", "ERRORS: " + "; ".join(
            f"rep {e['rep']} {e['scenario']}: {e['error']}" for e in doc["results"]["errors"])]
    return "\n".join(lines)


def one_line_throughput(r: dict[str, Any]) -> str:
    p = r["provisioning"]
    return (f"N={r['n']}: baseline {r['baseline']['throughput']}/s, provisioning "
            f"{p['create']['throughput']}/s (ratio {r['ratio_provisioning_over_baseline']}), "
            f"delete {p['delete']['throughput']}/s; AWS calls/conn "
            f"{p['create']['aws_calls_total_per_connection']}")


def one_line_guard(r: dict[str, Any]) -> str:
    return "; ".join(f"{k}: cold {v['cold']['decisions_per_second']}/s, warm "
                     f"{v['warm']['decisions_per_second']}/s" for k, v in r.items() if k != "rep")


def one_line_skip(r: dict[str, Any]) -> str:
    lat = ", ".join(f"{x['pending_s']:.0f}s->{x['latency_s']}s/{x['aws_calls_total']} calls"
                    for x in r["latency"])
    return (f"acceptance wait: {r['acceptance']['aws_calls_total']} AWS calls; "
            f"available->Active: {lat}")


def one_line_hold(r: dict[str, Any]) -> str:
    if not r.get("completed"):
        f = r.get("at_failure", {})
        return (f"FAILED ({r.get('error')}): statuses {f.get('status_counts')}, worker RSS peak "
                f"{f.get('worker_rss_mb', {}).get('peak_mb')} MB, workflow pollers "
                f"{f.get('workflow_task_pollers')}, cache misses "
                f"{f.get('sdk', {}).get('sticky_cache_misses')}, evictions "
                f"{f.get('sdk', {}).get('sticky_cache_forced_evictions')}")
    d = r["worker_rss_mb"]["during_drift_rounds"]
    sdk = r["sdk_during_drift_rounds"]
    return (f"{r['connections']} Active: worker RSS {r['worker_rss_mb']['all_active']} MB, "
            f"peak {d['peak_mb']} MB over {r['drift_rounds_seen']} rounds; full replays "
            f"(cache misses) {sdk['sticky_cache_misses']:.0f}, "
            f"evictions {sdk['sticky_cache_forced_evictions']:.0f}; dev server "
            f"{r['dev_server_rss_mb']['peak_mb']} MB")


# --------------------------------------------------------------------------- files


def chart(doc: dict[str, Any], path: Path) -> bool:
    """Throughput against N (every repetition, and the mean) for baseline, provisioning
    and delete, beside the provisioning/baseline ratio. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    tp = doc["summary"].get("throughput", {})
    if not tp:
        return False
    ns = [int(n) for n in tp]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2),
                                  gridspec_kw={"width_ratios": [3, 2]})
    series = [("baseline_per_s", "baseline (5 no-op activities)", "tab:blue", "o"),
              ("provisioning_per_s", "provisioning (create → Active)", "tab:orange", "s"),
              ("delete_per_s", "delete (→ Deleted)", "tab:green", "^")]
    for key, label, color, marker in series:
        means = [statistics.mean(tp[str(n)][key]) for n in ns]
        ax.plot(ns, means, color=color, marker=marker, label=label)
        for n in ns:
            ax.scatter([n] * len(tp[str(n)][key]), tp[str(n)][key], color=color, alpha=0.35,
                       s=14)
    ax.set_xlabel("N started at once")
    ax.set_ylabel("workflows / connections per second")
    ax.set_xticks(ns)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Throughput against N (dots: repetitions, line: mean)", fontsize=10)
    ratios = [statistics.mean(tp[str(n)]["ratio"]) for n in ns]
    ax2.plot(ns, ratios, color="tab:orange", marker="s", label="provisioning / baseline")
    for n in ns:
        ax2.scatter([n] * len(tp[str(n)]["ratio"]), tp[str(n)]["ratio"], color="tab:orange",
                    alpha=0.35, s=14)
    ax2.axhline(GOALS["ratio_200"], color="gray", linestyle="--", label="goal at N=200")
    ax2.set_xlabel("N started at once")
    ax2.set_xticks(ns)
    ax2.set_ylim(0, max(1.0, max(ratios) * 1.15))
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    ax2.set_title("Ratio provisioning / baseline", fontsize=10)
    m = doc["meta"]["machine"]
    fig.suptitle(f"privnet bench {doc['meta']['options']['label']} · {m['cores']} cores · "
                 f"commit {m['commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(doc: dict[str, Any], opts: Any) -> list[Path]:
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = out / opts.label
    paths = [base.with_suffix(".json"), base.with_suffix(".md")]
    paths[0].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    paths[1].write_text(f"# privnet bench {opts.label}\n\n{table(doc)}\n")
    png = base.with_suffix(".png")
    if chart(doc, png):
        paths.append(png)
    return paths
