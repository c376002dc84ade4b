"""The one-minute fault soak of ``make test`` (issue 10): ``python -m soak`` with a fixed
seed, its own stack (dev server on a data file, two real worker processes, the sandboxes,
the API), random operations and faults, then the checker. It must find nothing, and it
must really have exercised what it claims: operations of every kind, faults on both
sandboxes, a worker kill, a dev server restart and a guard termination survived."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_one_minute_soak_finds_nothing(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "soak", "--seed", "2026", "--duration", "60",
         "--report", str(report), "--data-dir", str(tmp_path / "stack")],
        cwd=ROOT, capture_output=True, text=True, timeout=540, check=False)
    out = proc.stdout + proc.stderr[-6000:]
    assert proc.returncode == 0, out
    rep = json.loads(report.read_text())
    assert rep["violations"] == [], out
    assert rep["settled"], out
    ops = rep["operations"]
    for kind in ("create", "delete", "cancel", "retry", "limit_set", "delete_policy"):
        assert sum(ops.get(kind, {}).values()) > 0, f"no {kind} operation: {ops}"
    assert ops["create_conflict"] == {"fail": sum(ops["create_conflict"].values())}, ops
    faults = rep["faults"]
    assert faults.get("aws RequestLimitExceeded", 0) > 0, faults
    assert faults.get("aws create done, response lost", 0) > 0, faults
    assert faults.get("kube error_500", 0) > 0, faults
    assert rep["worker_kills"] >= 1 and rep["server_restarts"] >= 1, rep
    assert rep["guard_terminations"] >= 1, rep
    assert rep["endpoints_created"] > 0 and rep["endpoints_left"] == 0, rep
    assert rep["policies_left"] == 0, rep
    assert rep["final_statuses"].get("Active", 0) > 0, rep
