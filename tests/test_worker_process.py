"""The worker as operators run it (`privnet worker`): JSON logs, and a clean exit on
SIGTERM (Kubernetes stops pods with SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from tests.wfutil import uid

ROOT = Path(__file__).resolve().parents[1]


def _run_until_started_then_sigterm(env: dict[str, str]) -> tuple[int, list[dict[str, object]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[dict[str, object]] = []
    try:
        for raw in proc.stderr:
            lines.append(json.loads(raw))  # every line is a JSON object
            if lines[-1].get("event") == "worker started":
                break
        proc.send_signal(signal.SIGTERM)
        for raw in proc.stderr:
            lines.append(json.loads(raw))
        return proc.wait(timeout=30), lines
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_worker_logs_json_and_exits_cleanly_on_sigterm(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PRIVNET_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "PRIVNET_TASK_QUEUE": uid("tq"),
        "PRIVNET_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "PRIVNET_KUBE_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    code, lines = await asyncio.to_thread(_run_until_started_then_sigterm, env)
    events = [line.get("event") for line in lines]
    assert code == 0, lines
    assert events.index("worker started") < events.index("shutting down")
    assert events[-1] == "worker stopped"
    started = next(line for line in lines if line.get("event") == "worker started")
    assert started["task_queue"] == env["PRIVNET_TASK_QUEUE"]
    assert started["level"] == "info" and "timestamp" in started
