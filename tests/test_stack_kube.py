"""The dev stack's sandbox Kubernetes as a new user meets it (issue 13): the baseline is
applied at start, ``stack.json`` names a kubeconfig that plain kubectl uses with no other
flag, ``kubectl apply`` (client- and server-side) of deploy/ works, and a restart keeps
the policies with their uids."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from activities.kubernetes import KubernetesActivities
from sandbox.stack import Stack
from settings import Settings
from workflows.contracts import ApplyPoliciesInput, policy_name

KUBECTL = shutil.which("kubectl")
REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH: install kubectl to "
                       "check the dev stack's kubeconfig with a real client"),
]


def _kubectl(kubeconfig: str, *args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    return subprocess.run(
        [KUBECTL, "--kubeconfig", kubeconfig, *args], capture_output=True, text=True,
        timeout=60, check=False, env={**os.environ, "KUBECACHEDIR": str(cache)},
    )


def test_dev_stack_kube_is_ready_for_kubectl_and_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "stack"
    stack = Stack(data, worker=False, api=False, log=lambda _msg: None)
    info = stack.start()
    try:
        on_disk = json.loads((data / "stack.json").read_text())
        kubeconfig = on_disk["kubeconfig"]
        assert Path(kubeconfig) == data / "kubeconfig" and Path(kubeconfig).is_file()
        assert Path(kubeconfig).stat().st_mode & 0o077 == 0

        def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
            return _kubectl(kubeconfig, *args, cache=tmp_path / "cache")

        # The isolation world is complete by default: the baseline is there.
        listed = kubectl("get", "ccnp", "-o", "name")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split() == [
            "ciliumclusterwidenetworkpolicy.cilium.io/privnet-baseline"]
        assert "No resources found" in kubectl("get", "cnp", "-A").stderr

        baseline = str(REPO_ROOT / "deploy" / "baseline-policy.yaml")
        plain = kubectl("apply", "-f", baseline)
        assert plain.returncode == 0, plain.stderr
        server_side = kubectl("apply", "--server-side", "-f", baseline)
        assert server_side.returncode == 0, server_side.stderr  # same values: no conflict

        acts = KubernetesActivities.from_settings(Settings(
            kube_url=info["kube_url"], task_namespaces=info["task_namespaces"]))
        acts.apply_policies(ApplyPoliciesInput(org_id="acme", connection_id="db",
                                               ips=["10.0.1.5"]))
        shown = kubectl("get", "cnp", "-A", "-o", "json")
        (item,) = json.loads(shown.stdout)["items"]
        assert item["metadata"]["name"] == policy_name("acme", "db")
    finally:
        stack.stop()
    assert not (data / "kubeconfig").exists()  # like stack.json: gone with the stack

    again = Stack(data, worker=False, api=False, log=lambda _msg: None)
    info2 = again.start()
    try:
        kubeconfig = info2["kubeconfig"]
        shown = _kubectl(kubeconfig, "get", "cnp", "-A", "-o", "json", cache=tmp_path / "c2")
        (after,) = json.loads(shown.stdout)["items"]
        assert after["metadata"]["uid"] == item["metadata"]["uid"]
        assert after["metadata"]["resourceVersion"] == item["metadata"]["resourceVersion"]
        assert after["spec"] == item["spec"]
    finally:
        again.stop()
