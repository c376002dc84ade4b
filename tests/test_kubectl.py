"""kubectl, a client nobody here wrote, against sandbox Kubernetes after privnet acted:
plain and server-side apply of deploy/, get -o yaml, get -l with a set-based selector,
get -w seeing privnet's change, explain, delete --dry-run=server. Skipped (with the reason)
where kubectl is not installed."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from activities.kubernetes import KubernetesActivities
from activities.policy import render_baseline_policy, render_connection_policy
from sandbox.kube import SandboxKube
from workflows.contracts import ApplyPoliciesInput, DeletePoliciesInput, policy_name

pytest_plugins = ["tests.kube_fixtures"]

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH: install "
                                "kubectl to run the real-client checks of sandbox Kubernetes")
REPO_ROOT = Path(__file__).resolve().parents[1]
BASELINE_FILE = REPO_ROOT / "deploy" / "baseline-policy.yaml"
CNP, CCNP = "ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sandbox",
        "clusters": [{"name": "sandbox", "cluster": {"server": server}}],
        "users": [{"name": "sandbox", "user": {}}],
        "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": "sandbox"}}],
    }))
    return path


@pytest.fixture
def kubectl_env(sandbox_kube: SandboxKube, tmp_path: Path) -> dict[str, str]:
    """A kubeconfig for the sandbox and a private discovery cache (ports are reused)."""
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", sandbox_kube.url)
    return {**os.environ, "KUBECONFIG": str(kubeconfig),
            "KUBECACHEDIR": str(tmp_path / "kube-cache")}


@pytest.fixture
def kubectl(kubectl_env: dict[str, str]) -> Kubectl:
    def run(*args: str, stdin: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        proc = subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True,
                              env=kubectl_env, timeout=60, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def _acts(kube: SandboxKube) -> KubernetesActivities:
    return KubernetesActivities(client.ApiClient(client.Configuration(host=kube.url)),
                                ["tasks"])


def _apply(kube: SandboxKube, org: str, conn: str, ips: list[str]) -> None:
    _acts(kube).apply_policies(ApplyPoliciesInput(org_id=org, connection_id=conn, ips=ips))


# --------------------------------------------------------------------------- apply


def test_kubectl_apply_of_the_crd_backed_deploy_manifests(
    sandbox_kube: SandboxKube, kubectl: Kubectl, tmp_path: Path
) -> None:
    cilium_docs = {
        path.name: [d for d in yaml.safe_load_all(path.read_text())
                    if d and str(d.get("apiVersion", "")).startswith("cilium.io/")]
        for path in sorted((REPO_ROOT / "deploy").glob("*.yaml"))
    }
    assert {name for name, docs in cilium_docs.items() if docs} == {BASELINE_FILE.name}
    created = kubectl("apply", "-f", str(BASELINE_FILE))
    assert "ciliumclusterwidenetworkpolicy.cilium.io/privnet-baseline created" in created.stdout
    stored = sandbox_kube.get_object(CCNP, None, "privnet-baseline")
    assert stored is not None
    assert stored["spec"] == render_baseline_policy(["tasks"], "privnet.dev/org-id")["spec"]
    # kubectl validated on the server (it found fieldValidation in the OpenAPI v3 document)
    # instead of failing to download /openapi/v2.
    writes = [r for r in sandbox_kube.requests if r.method in ("POST", "PATCH")]
    assert writes and all(r.query.get("fieldValidation") == ["Strict"] for r in writes)
    again = kubectl("apply", "-f", str(BASELINE_FILE))
    assert "privnet-baseline unchanged" in again.stdout
    applied = sandbox_kube.get_object(CCNP, None, "privnet-baseline")
    # A typo in a manifest is refused as by a real cluster, and nothing is changed.
    typo = tmp_path / "typo.yaml"
    typo.write_text(BASELINE_FILE.read_text().replace("endpointSelector:", "endpointSelektor:"))
    refused = kubectl("apply", "-f", str(typo), check=False)
    assert refused.returncode != 0 and 'unknown field "spec.endpointSelektor"' in refused.stderr
    assert sandbox_kube.get_object(CCNP, None, "privnet-baseline") == applied


def test_kubectl_server_side_apply_twice_and_a_conflicting_manager(
    sandbox_kube: SandboxKube, kubectl: Kubectl, tmp_path: Path
) -> None:
    first = kubectl("apply", "--server-side", "-f", str(BASELINE_FILE))
    assert "privnet-baseline serverside-applied" in first.stdout
    rv = sandbox_kube.get_object(CCNP, None, "privnet-baseline")["metadata"]["resourceVersion"]
    kubectl("apply", "--server-side", "-f", str(BASELINE_FILE))
    after = sandbox_kube.get_object(CCNP, None, "privnet-baseline")
    assert after["metadata"]["resourceVersion"] == rv  # the second apply changed nothing
    assert [(e["manager"], e["operation"]) for e in after["metadata"]["managedFields"]] == [
        ("kubectl", "Apply")]

    edited = tmp_path / "edited.yaml"
    edited.write_text(BASELINE_FILE.read_text().replace("task pods may reach",
                                                        "TASK PODS may reach"))
    refused = kubectl("apply", "--server-side", "--field-manager=ops", "-f", str(edited),
                      check=False)
    assert refused.returncode != 0
    assert 'conflict with "kubectl": .spec.description' in refused.stderr
    assert sandbox_kube.get_object(CCNP, None, "privnet-baseline")["metadata"][
        "resourceVersion"] == rv
    kubectl("apply", "--server-side", "--field-manager=ops", "--force-conflicts",
            "-f", str(edited))
    forced = sandbox_kube.get_object(CCNP, None, "privnet-baseline")
    assert forced["spec"]["description"].startswith("privnet baseline: TASK PODS")


# --------------------------------------------------------------------------- get


def test_kubectl_get_and_yaml_of_a_policy_privnet_applied(
    sandbox_kube: SandboxKube, kubectl: Kubectl
) -> None:
    _apply(sandbox_kube, "acme", "db", ["10.0.1.5"])
    name = policy_name("acme", "db")
    table = kubectl("get", "cnp", "-n", "tasks").stdout
    assert table.split()[:2] == ["NAME", "AGE"] and name in table
    listing = yaml.safe_load(kubectl("get", "cnp", "-n", "tasks", "-o", "yaml").stdout)
    (item,) = listing["items"]
    rendered = render_connection_policy("acme", "db", ["10.0.1.5"], namespace="tasks")
    assert item["metadata"]["name"] == name
    assert item["metadata"]["labels"] == rendered["metadata"]["labels"]
    assert item["spec"] == rendered["spec"]
    assert kubectl("get", "cnp", "-A", "-o", "name").stdout.split() == [
        f"ciliumnetworkpolicy.cilium.io/{name}"]


def test_kubectl_get_with_a_set_based_selector(sandbox_kube: SandboxKube, kubectl: Kubectl
                                               ) -> None:
    for org, conn, ip in [("acme", "db", "10.0.1.5"), ("globex", "db", "10.0.1.6"),
                          ("initech", "api", "10.0.1.7")]:
        _apply(sandbox_kube, org, conn, [ip])
    out = kubectl("get", "cnp", "-A", "-o", "name", "-l",
                  "privnet.dev/org-id in (acme,initech),privnet.dev/connection-id").stdout
    assert sorted(out.split()) == sorted(
        f"ciliumnetworkpolicy.cilium.io/{policy_name(o, c)}"
        for o, c in [("acme", "db"), ("initech", "api")])
    out = kubectl("get", "cnp", "-n", "tasks", "-o", "name", "-l",
                  "privnet.dev/org-id notin (acme)").stdout
    assert len(out.split()) == 2 and policy_name("acme", "db") not in out


class _Lines:
    """A long-running kubectl's stdout, line by line, waited on with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no matching line within {timeout}s; saw {seen}")


@pytest.fixture
def kubectl_watch(kubectl_env: dict[str, str]) -> Iterator[Callable[..., _Lines]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> _Lines:
        assert KUBECTL is not None
        proc = subprocess.Popen([KUBECTL, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=kubectl_env)
        procs.append(proc)
        return _Lines(proc)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_kubectl_get_watch_sees_privnet_change(
    sandbox_kube: SandboxKube, kubectl_watch: Callable[..., _Lines]
) -> None:
    _apply(sandbox_kube, "acme", "db", ["10.0.1.5"])
    name = policy_name("acme", "db")
    watch = kubectl_watch("get", "cnp", "-n", "tasks", "-w", "--output-watch-events")
    watch.wait_for(lambda line: line.startswith("ADDED") and name in line)
    _apply(sandbox_kube, "acme", "db", ["10.0.1.9"])  # the endpoint's IPs changed
    watch.wait_for(lambda line: line.startswith("MODIFIED") and name in line)
    _acts(sandbox_kube).delete_policies(DeletePoliciesInput(org_id="acme", connection_id="db"))
    watch.wait_for(lambda line: line.startswith("DELETED") and name in line)


# --------------------------------------------------------------------------- explain, delete


def test_kubectl_explain_reads_the_crd_schema(kubectl: Kubectl) -> None:
    spec = kubectl("explain", "ciliumnetworkpolicy.spec").stdout
    assert "KIND:       CiliumNetworkPolicy" in spec and "VERSION:    v2" in spec
    for field in ("endpointSelector\t<Object>", "egress\t<[]Object>", "egressDeny\t<[]Object>"):
        assert field in spec, spec
    to_cidr = kubectl("explain", "cnp.spec.egress.toCIDR").stdout
    assert "FIELD: toCIDR <[]string>" in to_cidr
    assert "privnet" not in kubectl("explain", "ccnp.metadata.labels").stdout


def test_kubectl_delete_dry_run_server(sandbox_kube: SandboxKube, kubectl: Kubectl) -> None:
    _apply(sandbox_kube, "acme", "db", ["10.0.1.5"])
    name = policy_name("acme", "db")
    before: Any = sandbox_kube.get_object(CNP, "tasks", name)
    out = kubectl("delete", "cnp", "-n", "tasks", name, "--dry-run=server").stdout
    assert f'"{name}" deleted (server dry run)' in out
    assert sandbox_kube.get_object(CNP, "tasks", name) == before
    kubectl("delete", "cnp", "-n", "tasks", name)
    assert sandbox_kube.get_object(CNP, "tasks", name) is None
