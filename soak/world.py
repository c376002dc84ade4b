"""The world the soak runs: the embedded stack's real pieces as processes.

The Temporal dev server (persisted to its data file), sandbox AWS and sandbox Kubernetes
(in this process, so the checker reads their ground truth directly), the HTTP API, and two
``privnet worker`` processes on the same task queue. The soak kills and restarts workers,
restarts the dev server on the same data file, and terminates org guards with the
``temporal`` CLI: each a fault a production deployment meets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sandbox.binaries import temporal_cli_path
from sandbox.stack import REPO_ROOT, Stack, _terminate, _wait_tcp
from workflows.contracts import org_guard_workflow_id

WORKERS = 2


def soak_env(drift_seconds: float, step_seconds: float) -> dict[str, str]:
    """Timings that let a short run see whole lifecycles: drift rounds every few seconds,
    a dead worker's attempt retried after ``step_seconds``, acceptance looked at often."""
    return {
        "PRIVNET_DRIFT_CHECK_INTERVAL_SECONDS": str(drift_seconds),
        "PRIVNET_STEP_TIMEOUT_SECONDS": str(step_seconds),
        "PRIVNET_ACCEPTANCE_FIRST_POLL_SECONDS": "2",
        "PRIVNET_ACCEPTANCE_POLL_MAX_INTERVAL_SECONDS": "4",
        "PRIVNET_ENDPOINT_VISIBILITY_WINDOW_SECONDS": "60",
        "PRIVNET_CLEANUP_MAX_BACKOFF_SECONDS": "5",
        "PRIVNET_GUARD_LEAK_CHECK_INTERVAL_SECONDS": "10",
        "PRIVNET_LOG_LEVEL": "WARNING",
    }


class SoakWorld:
    def __init__(self, data_dir: Path, database_url: str | None, extra_env: dict[str, str],
                 log: Any) -> None:
        self.data_dir = data_dir
        self.extra_env = extra_env
        self.log = log
        self.stack = Stack(data_dir, worker=False, api=True, log=log, database_url=database_url)
        self.workers: dict[int, subprocess.Popen[bytes] | None] = {}
        self.info: dict[str, Any] = {}
        self.kills = 0
        self.server_restarts = 0
        self.guard_terminations = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> dict[str, Any]:
        saved = {k: os.environ.get(k) for k in self.extra_env}
        os.environ.update(self.extra_env)  # the API process creates with the soak's timings
        try:
            self.info = self.stack.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        for n in range(WORKERS):
            self.start_worker(n)
        return self.info

    def stop(self) -> None:
        for n, proc in self.workers.items():
            if proc is not None:
                _terminate(proc)
            self.workers[n] = None
        self.stack.stop()

    @property
    def temporal_address(self) -> str:
        return str(self.info["temporal_address"])

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVNET_")}
        env.update(self.info["env"])
        env.update(self.extra_env)
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # ------------------------------------------------------------------ workers

    def start_worker(self, n: int) -> None:
        log = open(self.data_dir / "logs" / f"worker-{n}.log", "ab")  # noqa: SIM115
        try:
            self.workers[n] = subprocess.Popen(
                [sys.executable, "-m", "starter.cli", "worker"],
                cwd=str(REPO_ROOT), env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def kill_worker(self, n: int) -> None:
        """SIGKILL, mid-whatever it was doing (the worker gets no chance to finish)."""
        proc = self.workers.get(n)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        self.workers[n] = None
        self.kills += 1

    def ensure_workers(self) -> None:
        for n in range(WORKERS):
            proc = self.workers.get(n)
            if proc is None or proc.poll() is not None:
                self.start_worker(n)

    def dead_workers(self) -> list[int]:
        """Workers that exited without being killed by the soak (a crash is a finding)."""
        return [n for n, p in self.workers.items() if p is not None and p.poll() is not None]

    # ------------------------------------------------------------------ the dev server

    def restart_server(self, pause: float) -> None:
        """Stop the dev server, wait, start it again on the same data file and port."""
        port = int(self.temporal_address.rsplit(":", 1)[1])
        ui_port = int(str(self.info["ui_url"]).rsplit(":", 1)[1])
        _terminate(self.stack.procs["temporal"])
        time.sleep(pause)
        self.stack._start_temporal(port, ui_port)
        _wait_tcp(port, 60, self.stack.procs["temporal"])
        self.server_restarts += 1

    def terminate_guard(self, org: str) -> bool:
        """``temporal workflow terminate`` of the org's guard, as an operator would."""
        out = subprocess.run(
            [temporal_cli_path(), "workflow", "terminate", "--address", self.temporal_address,
             "--workflow-id", org_guard_workflow_id(org), "--reason", "soak: guard terminated"],
            capture_output=True, text=True, timeout=60, check=False)
        if out.returncode == 0:
            self.guard_terminations += 1
            return True
        return False
