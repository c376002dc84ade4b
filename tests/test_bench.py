"""The benchmark's pure parts (``make bench`` itself is never a test, nothing here is timed):
history counting against recorded histories, the /proc and Prometheus readers, and the
summary and table checked against the goals of issue 12."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from temporalio.client import WorkflowHistory

from bench import report
from bench.histories import average, count_events
from bench.procs import (
    Sampler,
    cpu_seconds,
    diff_counts,
    metric,
    parse_cpu,
    parse_prometheus,
    parse_rss,
    rss_bytes,
)

HISTORIES = Path(__file__).parent / "histories"


@pytest.mark.parametrize("name", ["connection_acceptance", "connection_happy_then_delete",
                                  "guard_first_run"])
def test_count_events_matches_the_raw_history(name: str) -> None:
    text = (HISTORIES / f"{name}.json").read_text()
    raw = json.loads(text)["events"]  # the referee: the JSON itself, not the proto objects
    types = Counter(e["eventType"] for e in raw)
    counts = count_events(WorkflowHistory.from_json(name, text).events)
    assert counts["events"] == len(raw)
    assert counts["workflow_tasks"] == types["EVENT_TYPE_WORKFLOW_TASK_COMPLETED"]
    assert counts["activities"] == types["EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"]
    assert counts["search_attribute_upserts"] == types[
        "EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES"]
    assert counts["signals_received"] == types["EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED"]
    assert counts["updates_accepted"] == types["EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED"]
    assert counts["timers"] == types["EVENT_TYPE_TIMER_STARTED"]
    assert counts["workflow_task_failures"] == (types["EVENT_TYPE_WORKFLOW_TASK_FAILED"]
                                                + types["EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT"])
    scheduled = Counter(
        e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        for e in raw if e["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED")
    assert counts["activities_by_type"] == dict(sorted(scheduled.items()))
    attempts = sum(int(e["activityTaskStartedEventAttributes"].get("attempt", 1))
                   for e in raw if e["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_STARTED")
    assert counts["activity_attempts"] == attempts
    markers = [e for e in raw if e["eventType"] == "EVENT_TYPE_MARKER_RECORDED"]
    assert counts["local_activities"] == sum(
        1 for e in markers
        if e["markerRecordedEventAttributes"]["markerName"] == "core_local_activity")


def test_average_of_counts() -> None:
    a = {"events": 10, "activities_by_type": {"x": 1}}
    b = {"events": 20, "activities_by_type": {"x": 3, "y": 2}}
    assert average([a, b]) == {"events": 15, "activities_by_type": {"x": 2, "y": 1},
                               "sampled": 2}
    assert average([]) == {}


def test_proc_readers() -> None:
    status = "Name:\tpython\nVmPeak:\t  9000 kB\nVmRSS:\t  2048 kB\n"
    assert parse_rss(status) == 2048 * 1024
    # A command name with spaces and parentheses must not shift the fields.
    stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 300 200 0 0 20 0 1 0"
    assert parse_cpu(stat) == pytest.approx(500 / os.sysconf("SC_CLK_TCK"))
    assert rss_bytes(os.getpid()) > 1024 * 1024
    assert cpu_seconds(os.getpid()) > 0
    assert rss_bytes(2**22 + 12345) == 0  # no such process


def test_sampler_window() -> None:
    sampler = Sampler()
    sampler.watch("me", os.getpid())
    sampler.sample()
    window = sampler.window("me", 0)
    assert window["samples"] >= 2  # window() takes a sample of its own
    assert 0 < window["mean_mb"] <= window["peak_mb"]
    assert sampler.window("nobody", 0)["samples"] == 0


def test_prometheus_reader() -> None:
    text = (
        "# HELP temporal_sticky_cache_miss x\n"
        "# TYPE temporal_sticky_cache_miss counter\n"
        'temporal_sticky_cache_miss{namespace="default",task_queue="a"} 3\n'
        'temporal_sticky_cache_miss{namespace="default",task_queue="b"} 4\n'
        'temporal_sticky_cache_missing{namespace="default"} 100\n'
        "privnet_aws_calls_total{operation=\"CreateVpcEndpoint\"} 2.0\n"
    )
    m = parse_prometheus(text)
    assert metric(m, "temporal_sticky_cache_miss") == 7
    assert metric(m, "temporal_sticky_cache_miss", task_queue="b") == 4
    assert metric(m, "privnet_aws_calls_total", operation="CreateVpcEndpoint") == 2
    assert metric(m, "absent") == 0
    assert diff_counts({"a": 5, "b": 1}, {"a": 2, "b": 1, "c": 1}) == {"a": 3, "c": -1}


def _run(n: int, base: float, prov: float, calls: float) -> dict[str, Any]:
    history = {"events": 91, "workflow_tasks": 14, "activities": 12, "activity_attempts": 12,
               "activities_by_type": {"record_status": 6}, "local_activities": 0,
               "search_attribute_upserts": 8, "timers": 2, "signals_received": 1}
    create = {"throughput": prov, "aws_calls_total_per_connection": calls,
              "aws_calls_per_connection": {"CreateVpcEndpoint": 1.0},
              "cpu_ms_per_connection": {"worker": 100.0, "dev_server": 150.0},
              "sdk_per_connection": {}, "history": history,
              "kube_requests_per_connection": 2.0, "workflow_start_to_active_s": {}}
    delete = {"throughput": prov * 2, "aws_calls_total_per_connection": 3.0,
              "aws_calls_per_connection": {"DeleteVpcEndpoints": 1.0}}
    return {
        "n": n,
        "baseline": {"throughput": base, "cpu_ms_per_workflow": {"worker": 20.0},
                     "history": {"events": 35}, "sdk_per_workflow": {}},
        "provisioning": {"create": create, "delete": delete, "lifecycle_history": history,
                         "boto3_pool_full_warnings": 0},
        "ratio_provisioning_over_baseline": round(prov / base, 3),
        "ratio_delete_over_create": 2.0,
    }


def test_summary_and_table_against_the_goals() -> None:
    results = {
        "throughput": [_run(50, 40, 8, 5), _run(200, 40, 26, 7),
                       _run(50, 40, 8, 5), _run(200, 40, 20, 5)],
        "skip": [{"acceptance": {"aws_calls_total": 14, "aws_calls": {},
                                 "accept_to_active_s": 60.0},
                  "latency": [{"pending_s": 30.0, "latency_s": 2.0, "aws_calls_total": 9},
                              {"pending_s": 60.0, "latency_s": 15.0, "aws_calls_total": 11}]}],
        "hold": [], "guard": [], "errors": [],
    }
    opts = SimpleNamespace(pending_times=[30, 60], acceptance_wait=600)
    summary = report.summarize(results, opts)
    assert summary["throughput"]["200"]["ratio"] == [0.65, 0.5]
    assert summary["ratio_large_vs_small"]["not_worse"] == [True, True]
    assert summary["ratio_large_vs_small"]["difference"] == [0.45, 0.3]
    assert summary["latency_available_to_active"]["60"]["max_s"] == 15.0
    doc = {"meta": {"options": {"reps": 2, "label": "t"}, "machine": {
        "cpu": "x", "cores": 2, "memory_gb": 1, "python": "3", "temporalio": "1",
        "temporal_cli": "t", "commit": "c", "load_average_at_start": [1]}},
        "results": results, "summary": summary}
    rows = {name: (values, goal, met) for name, values, goal, met in report.rows(doc)}
    assert rows["ratio provisioning/baseline, N=200"] == ([0.65, 0.5], ">= 0.6", "NO")
    assert rows["ratio provisioning/baseline, N=50"][2] == ""
    assert rows["  ratio N=200 minus ratio N=50"] == ([0.45, 0.3], "", "")
    assert rows["AWS calls/connection (available at once), N=200"][2] == "NO"
    assert rows["AWS calls/connection, 10-min pendingAcceptance"][2] == "yes"
    assert rows["available->Active (s), pending 30s"][2] == "yes"
    assert rows["available->Active (s), pending 60s"][2] == "NO"
    text = report.table(doc)
    assert "| ratio provisioning/baseline, N=200 | 0.65 | 0.5 | 0.575 | 0.65 | >= 0.6 | NO |" in text
    assert "91 history events, 14 workflow tasks" in text
    assert "after provisioning" not in text  # runs from before the bracketing: no such row


@pytest.mark.parametrize("sizes", [[50, 100, 200], [20], [10, 20]])
def test_every_size_runs_once_in_every_place(sizes: list[int]) -> None:
    """The dev server's database fills as a run goes on: over as many repetitions as
    sizes, the rotation puts every N once in every place, so none carries the fill alone."""
    from bench.run import size_order

    orders = [size_order(sizes, rep) for rep in range(1, len(sizes) + 1)]
    assert all(sorted(o) == sorted(sizes) for o in orders)
    for place in range(len(sizes)):
        assert sorted(o[place] for o in orders) == sorted(sizes)
    assert orders[0] == sizes  # the first repetition as given
    assert size_order(sizes, len(sizes) + 1) == sizes


def test_the_table_shows_where_each_size_ran() -> None:
    runs = [_run(50, 40, 20, 4), _run(200, 40, 24, 4), _run(200, 40, 22, 4), _run(50, 40, 24, 4)]
    for run, position in zip(runs, [1, 2, 1, 2], strict=True):
        run["position"] = position
    results = {"throughput": runs, "skip": [], "hold": [], "guard": [], "errors": []}
    summary = report.summarize(results, SimpleNamespace(pending_times=[], acceptance_wait=0))
    r = summary["ratio_large_vs_small"]
    assert r["positions"] == {"50": [1, 2], "200": [2, 1]}
    assert r["difference"] == [0.1, -0.05]
    doc = {"meta": {"options": {"reps": 2, "label": "t"}, "machine": {}},
           "results": results, "summary": summary}
    rows = {name: values for name, values, _, _ in report.rows(doc)}
    assert rows["  place of N=50 in its repetition (1 = first)"] == [1, 2]
    assert rows["  place of N=200 in its repetition (1 = first)"] == [2, 1]


def test_the_ratio_is_against_the_baselines_either_side() -> None:
    run = _run(200, 40, 26, 7)
    run["baseline_after"] = {"throughput": 30}
    run["ratio_provisioning_over_baseline"] = round(26 / 35, 3)
    run["ratio_over_baseline_before"] = round(26 / 40, 3)
    results = {"throughput": [run], "skip": [], "hold": [], "guard": [], "errors": []}
    summary = report.summarize(results, SimpleNamespace(pending_times=[], acceptance_wait=600))
    doc = {"meta": {"options": {"reps": 1, "label": "t"}, "machine": {}}, "results": results,
           "summary": summary}
    rows = {name: (values, goal, met) for name, values, goal, met in report.rows(doc)}
    assert rows["baseline workflows/s after provisioning, N=200"][0] == [30]
    assert rows["ratio provisioning/baseline, N=200"] == ([0.743], ">= 0.6", "yes")
    assert rows["  ratio against the baseline before only, N=200"][0] == [0.65]


@pytest.mark.parametrize("db", ["file", "memory"])
def test_dev_server_database_is_chosen_by_the_option(tmp_path: Path, db: str) -> None:
    from bench.procs import dev_server_command
    from bench.run import parse_args

    opts = parse_args(["--temporal-db", db, "--only", "throughput"])
    assert opts.temporal_db == db
    cmd = dev_server_command("temporal", tmp_path, 7233, ["PrivnetOrgId"], opts.temporal_db)
    assert cmd[:3] == ["temporal", "server", "start-dev"]
    assert ("--db-filename" in cmd) is (db == "file")
    if db == "file":
        assert cmd[cmd.index("--db-filename") + 1] == str(tmp_path / "temporal.db")
    assert cmd[cmd.index("--port") + 1] == "7233"
    assert cmd[-2:] == ["--search-attribute", "PrivnetOrgId=Keyword"]
    assert report.notes(db)[0].startswith(
        "Every process apart: Temporal dev server (" + report.DEV_SERVER_DB[db])


def test_an_unknown_dev_server_database_is_refused(tmp_path: Path) -> None:
    from bench.procs import dev_server_command
    from bench.run import parse_args

    assert parse_args([]).temporal_db == "file"
    with pytest.raises(SystemExit):
        parse_args(["--temporal-db", "postgres"])
    with pytest.raises(ValueError, match="choose from"):
        dev_server_command("temporal", tmp_path, 7233, [], "postgres")
