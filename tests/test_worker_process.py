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

import pytest
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


async def test_a_worker_started_while_temporal_is_down_waits_for_it(tmp_path: Path) -> None:
    """Found by the soak: a worker restarted while the dev server was restarting exited
    with "Connection refused". It now waits (``PRIVNET_TEMPORAL_CONNECT_TIMEOUT_SECONDS``)
    and connects once the server is up."""
    from sandbox.binaries import temporal_cli_path
    from sandbox.stack import free_port
    from settings import Settings
    from worker import connect_patiently

    port = free_port()
    settings = Settings(temporal_address=f"127.0.0.1:{port}")  # type: ignore[call-arg]
    connecting = asyncio.create_task(connect_patiently(settings, within=90))
    await asyncio.sleep(2)
    assert not connecting.done()  # nothing listens yet: still waiting, not failed
    server = await asyncio.to_thread(
        subprocess.Popen,
        [temporal_cli_path(), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
         "--port", str(port), "--db-filename", str(tmp_path / "t.db"), "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        client = await asyncio.wait_for(connecting, 60)
        assert await client.count_workflows() is not None
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        await asyncio.to_thread(server.wait, 30)
    # And with nothing ever listening it gives up with the connect error, not hangs.
    nowhere = Settings(temporal_address=f"127.0.0.1:{free_port()}")  # type: ignore[call-arg]
    with pytest.raises(RuntimeError):
        await connect_patiently(nowhere, within=1)
