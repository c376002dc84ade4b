"""End to end: ``privnet dev up`` as a subprocess (brought up once for the module), driven
through the ``privnet`` CLI (``--json``) and the HTTP API, then stopped and started again
on the same data dir."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parent.parent


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVNET_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    return env


@dataclass
class StackProc:
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    start_seconds: float = 0.0

    @property
    def stack_file(self) -> Path:
        return self.data_dir / "stack.json"

    def start(self) -> None:
        t0 = time.monotonic()
        log = open(self.data_dir.parent / f"{self.data_dir.name}-devup.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "starter.cli", "dev", "up", "--data-dir", str(self.data_dir)],
            cwd=str(self.data_dir.parent),
            env=_clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 120
        while not self.stack_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"privnet dev up exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError("stack.json did not appear in 120s")
            time.sleep(0.1)
        self.info = json.loads(self.stack_file.read_text())
        self.start_seconds = time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(60) == 0
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc = None
        assert not self.stack_file.exists(), "stack.json must go away with the stack"
        # Everything it started is gone: Temporal, the API (and the worker with them).
        host, port = self.info["temporal_address"].rsplit(":", 1)
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=2).close()
        with pytest.raises(httpx.TransportError):
            httpx.get(self.info["api_url"] + "/healthz", timeout=2)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "starter.cli", *args, "--stack", str(self.stack_file)],
            cwd=str(self.data_dir.parent),
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cli_json(self, *args: str, expect_rc: int = 0) -> Any:
        r = self.cli(*args, "--json")
        assert r.returncode == expect_rc, f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        return json.loads(r.stdout)

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.info["api_url"],
            headers={"Authorization": f"Bearer {self.info['api_token']}"},
            timeout=30,
        )

    def wait_status(self, org: str, cid: str, wanted: set[str], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        body: Any = None
        with self.http() as http:
            while time.monotonic() < deadline:
                r = http.get(f"/v1/orgs/{org}/connections/{cid}")
                if r.status_code == 200:
                    body = r.json()
                    if body["status"] in wanted:
                        return body
                time.sleep(0.2)
        raise AssertionError(f"{org}/{cid} not in {wanted}: {body}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProc]:
    s = StackProc(tmp_path_factory.mktemp("e2e") / "data")
    s.start()
    print(f"\nprivnet dev up: stack.json after {s.start_seconds:.1f}s")
    try:
        yield s
    finally:
        s.stop()


def _org() -> str:
    return "e2e-" + uuid.uuid4().hex[:6]


def test_stack_json_has_the_contract_keys(stack: StackProc) -> None:
    assert set(stack.info) == {
        "temporal_address", "ui_url", "api_url", "api_token", "aws_endpoint_url", "kube_url",
        "database_url", "endpoints_account_id", "customer_account_id", "region",
        "task_namespaces", "customer_services", "kubeconfig", "env",
    }
    assert set(stack.info["customer_services"]) == {
        "allowed", "not_allowed", "acceptance_required", "other_region"
    }
    env = stack.info["env"]
    for key in (
        "PRIVNET_AWS_ROLE_ARN", "PRIVNET_ENDPOINT_NETWORKS", "PRIVNET_KUBE_URL",
        "PRIVNET_API_TOKENS", "PRIVNET_TEMPORAL_ADDRESS", "PRIVNET_DATABASE_URL",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    ):
        assert env.get(key), key
    assert json.loads(env["PRIVNET_API_TOKENS"]) == [stack.info["api_token"]]
    assert stack.info["region"] in json.loads(env["PRIVNET_ENDPOINT_NETWORKS"])


def test_cli_create_active_get_list_delete_deleted(stack: StackProc) -> None:
    org = _org()
    service = stack.info["customer_services"]["allowed"]
    t0 = time.monotonic()
    view = stack.cli_json("create", "--org", org, "--service-name", service, "--id", "db1",
                          "--wait")
    print(f"\nCLI create --wait → Active in {time.monotonic() - t0:.1f}s")
    assert view["status"] == "Active", view
    assert view["ips"] and view["vpc_endpoint_id"].startswith("vpce-")

    got = stack.cli_json("get", org, "db1")
    assert got["status"] == "Active"
    assert [t["status"] for t in got["timeline"]][-1] == "Active"
    listed = stack.cli_json("list", "--org", org)
    assert [(c["connection_id"], c["status"]) for c in listed] == [("db1", "Active")]
    # human output works too
    human = stack.cli("get", org, "db1")
    assert human.returncode == 0 and "Active" in human.stdout and view["ips"][0] in human.stdout

    done = stack.cli_json("delete", org, "db1", "--wait")
    assert done["status"] == "Deleted", done


def test_http_create_active_delete_deleted(stack: StackProc) -> None:
    org = _org()
    with stack.http() as http:
        r = http.post(
            f"/v1/orgs/{org}/connections",
            json={"endpoint_service_name": stack.info["customer_services"]["other_region"]},
        )
        assert r.status_code == 202, r.text
        cid = r.json()["connection_id"]
        assert r.json()["service_region"] != r.json()["region"]  # cross-region
        stack.wait_status(org, cid, {"Active"})
        assert http.delete(f"/v1/orgs/{org}/connections/{cid}").status_code == 202
        stack.wait_status(org, cid, {"Deleted"})
        assert http.get(f"/v1/orgs/{org}/connections").json()[0]["status"] == "Deleted"


def test_cli_errors_are_one_line_with_exit_codes(stack: StackProc) -> None:
    r = stack.cli("create", "--org", _org(), "--service-name", "my-db")
    assert r.returncode == 2
    assert "com.amazonaws.vpce.<region>.vpce-svc-<hex id>" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    r = stack.cli("get", _org(), "c-unknown")
    assert r.returncode == 1 and "does not exist" in r.stderr, r.stderr

    org = _org()
    r = stack.cli("create", "--org", org, "--service-name",
                  stack.info["customer_services"]["not_allowed"], "--wait")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "PRINCIPAL_NOT_ALLOWED" in r.stderr
    assert stack.info["env"]["PRIVNET_AWS_PRINCIPAL_ARN"] in r.stderr
    assert "CheckingPrincipal" in r.stdout  # each status change was printed


def test_limits_and_bootstrap(stack: StackProc) -> None:
    org = _org()
    assert stack.cli_json("limits", "set", "--org", org, "1")["limit"] == 1
    usage = stack.cli_json("limits", "get", "--org", org)
    assert (usage["limit"], usage["usage"]) == (1, 0)
    service = stack.info["customer_services"]["allowed"]
    first = stack.cli_json("create", "--org", org, "--service-name", service)
    second = stack.cli("create", "--org", org, "--service-name", service, "--json")
    assert second.returncode == 1
    assert json.loads(second.stdout)["reason"] == "LIMIT_REACHED"
    stack.cli_json("delete", org, first["connection_id"], "--wait")

    assert stack.cli_json("bootstrap")["applied"] is True


def test_stuck_shows_what_the_customer_must_do(stack: StackProc) -> None:
    org = _org()
    service = stack.info["customer_services"]["acceptance_required"]
    view = stack.cli_json("create", "--org", org, "--service-name", service, "--id", "held")
    assert view["connection_id"] == "held"
    stack.wait_status(org, "held", {"WaitingForAcceptance"})
    stuck = stack.cli_json("stuck", "--older-than", "0s")
    mine = [s for s in stuck if s["org_id"] == org]
    assert len(mine) == 1, stuck
    item = mine[0]
    assert item["status"] == "WaitingForAcceptance"
    assert item["connection_id"] == "held"
    assert "accept" in item["message"].lower()
    assert item["vpc_endpoint_id"] and item["vpc_endpoint_id"] in item["message"]
    assert item["ui_url"].endswith(f"/workflows/privnet-conn:{org}:held")
    human = stack.cli("stuck", "--older-than", "0s")
    assert f"{org}/held" in human.stdout and "to fix" in human.stdout
    # Nothing that young is stuck for 15 minutes.
    assert not [s for s in stack.cli_json("stuck") if s["org_id"] == org]

    cancelled = stack.cli_json("cancel", org, "held")
    assert cancelled["status"] in ("WaitingForAcceptance", "Deleting", "Cancelled")
    stack.wait_status(org, "held", {"Cancelled"})


def test_restart_keeps_connections_and_active_ones_can_be_deleted(stack: StackProc) -> None:
    org = _org()
    service = stack.info["customer_services"]["allowed"]
    active = stack.cli_json("create", "--org", org, "--service-name", service, "--id", "keep",
                            "--wait")
    assert active["status"] == "Active"
    before = {c["connection_id"]: c["status"] for c in stack.cli_json("list")}

    stack.stop()
    stack.start()
    print(f"\nrestart: stack.json after {stack.start_seconds:.1f}s")

    after = {c["connection_id"]: c["status"] for c in stack.cli_json("list")}
    assert after == before
    assert stack.cli_json("get", org, "keep")["status"] == "Active"
    # `retry` on an Active connection runs its drift check now: the endpoint must still
    # exist in the restarted sandbox AWS (else it would fail ENDPOINT_DELETED).
    stack.cli_json("retry", org, "keep")
    for _ in range(30):
        view = stack.cli_json("get", org, "keep")
        if any("drift" in (t.get("detail") or "") for t in view["timeline"]) or view[
            "status"
        ] != "Active":
            break
        time.sleep(0.2)
    assert view["status"] == "Active", view
    assert view["ips"] == active["ips"] and view["vpc_endpoint_id"] == active["vpc_endpoint_id"]
    done = stack.cli_json("delete", org, "keep", "--wait")
    assert done["status"] == "Deleted", done
