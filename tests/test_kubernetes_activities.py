"""The Kubernetes activities through the official ``kubernetes`` client over HTTP against
the sandbox API server (sandbox/kube.py), and the sandbox's own API-server behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.kubernetes import KubernetesActivities
from activities.policy import render_baseline_policy, render_connection_policy
from sandbox.kube import SandboxKube
from settings import Settings
from workflows.contracts import ApplyPoliciesInput, DeletePoliciesInput

pytest_plugins = ["tests.kube_fixtures"]

G, V, CNP, CCNP = "cilium.io", "v2", "ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"
REPO_ROOT = Path(__file__).resolve().parents[1]
CrdErrors = Callable[[str, dict[str, Any]], list[str]]


def _inp(org: str = "acme", conn: str = "db-1", ips: list[str] | None = None,
         ports: list[int] | None = None) -> ApplyPoliciesInput:
    return ApplyPoliciesInput(
        org_id=org, connection_id=conn, ips=ips or ["10.0.1.23"], ports=ports or []
    )


def _stored(kube: SandboxKube, ns: str = "tasks", name: str = "privnet-db-1") -> dict[str, Any]:
    obj = kube.get_object(CNP, ns, name)
    assert obj is not None, f"{ns}/{name} not stored"
    return obj


# --------------------------------------------------------------------------- apply


def test_apply_creates_the_rendered_policy(
    sandbox_kube: SandboxKube, kube_activities: KubernetesActivities
) -> None:
    result = kube_activities.apply_policies(_inp(ips=["10.0.1.23", "10.0.2.5"], ports=[5432]))
    assert result.namespaces == ["tasks"] and result.changed == ["tasks"]
    stored = _stored(sandbox_kube)
    rendered = render_connection_policy(
        "acme", "db-1", ["10.0.1.23", "10.0.2.5"], [5432], namespace="tasks"
    )
    assert stored["spec"] == rendered["spec"]
    assert stored["metadata"]["labels"] == rendered["metadata"]["labels"]
    meta = stored["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    assert sandbox_kube.writes == {"create": 1}


def test_reapply_unchanged_writes_nothing(
    sandbox_kube: SandboxKube, kube_activities: KubernetesActivities
) -> None:
    kube_activities.apply_policies(_inp(ips=["10.0.1.23", "10.0.2.5"]))
    rv = _stored(sandbox_kube)["metadata"]["resourceVersion"]
    sandbox_kube.reset_counters()
    again = kube_activities.apply_policies(_inp(ips=["10.0.2.5", "10.0.1.23/32"]))  # same set
    assert again.changed == []
    assert sandbox_kube.write_count == 0
    assert [r.method for r in sandbox_kube.requests] == ["GET"]
    assert _stored(sandbox_kube)["metadata"]["resourceVersion"] == rv


def test_apply_updates_changed_ips_in_place(
    sandbox_kube: SandboxKube, kube_activities: KubernetesActivities
) -> None:
    kube_activities.apply_policies(_inp(ips=["10.0.1.23"]))
    before = _stored(sandbox_kube)["metadata"]
    result = kube_activities.apply_policies(_inp(ips=["10.0.1.24", "10.0.3.1"], ports=[443]))
    assert result.changed == ["tasks"]
    after = _stored(sandbox_kube)
    assert after["spec"]["egress"][0]["toCIDR"] == ["10.0.1.24/32", "10.0.3.1/32"]
    assert after["spec"]["egress"][0]["toPorts"] == [
        {"ports": [{"port": "443", "protocol": "TCP"}]}
    ]
    assert after["metadata"]["uid"] == before["uid"]
    assert int(after["metadata"]["resourceVersion"]) > int(before["resourceVersion"])
    assert after["metadata"]["generation"] == 2
    assert sandbox_kube.writes == {"create": 1, "replace": 1}


def test_apply_repairs_drift_and_keeps_foreign_labels(
    sandbox_kube: SandboxKube, kube_activities: KubernetesActivities, custom_api: Any
) -> None:
    kube_activities.apply_policies(_inp())
    # Someone widens the policy by hand and adds a label of their own.
    custom_api.patch_namespaced_custom_object(
        G, V, "tasks", CNP, "privnet-db-1",
        {"metadata": {"labels": {"team": "netops"}},
         "spec": {"egress": [{"toCIDR": ["10.0.0.0/8"]}]}},
    )
    assert kube_activities.apply_policies(_inp()).changed == ["tasks"]
    stored = _stored(sandbox_kube)
    assert stored["spec"]["egress"] == [{"toCIDR": ["10.0.1.23/32"]}]
    assert stored["metadata"]["labels"]["team"] == "netops"
    # Deleted by hand: recreated.
    sandbox_kube.remove_object(CNP, "tasks", "privnet-db-1")
    assert kube_activities.apply_policies(_inp()).changed == ["tasks"]
    assert _stored(sandbox_kube)["spec"]["egress"] == [{"toCIDR": ["10.0.1.23/32"]}]


def test_apply_in_every_configured_namespace(
    sandbox_kube: SandboxKube, kube_activities_multi: KubernetesActivities
) -> None:
    result = kube_activities_multi.apply_policies(_inp())
    assert result.namespaces == ["batch", "tasks"] and result.changed == ["batch", "tasks"]
    assert _stored(sandbox_kube, "tasks") and _stored(sandbox_kube, "batch")
    # One namespace drifted: only that one is written.
    sandbox_kube.remove_object(CNP, "batch", "privnet-db-1")
    sandbox_kube.reset_counters()
    assert kube_activities_multi.apply_policies(_inp()).changed == ["batch"]
    assert sandbox_kube.writes == {"create": 1}
    kube_activities_multi.delete_policies(DeletePoliciesInput(org_id="acme", connection_id="db-1"))
    assert sandbox_kube.policies() == []


@pytest.mark.parametrize("existing", [False, True], ids=["create-race", "update-race"])
def test_concurrent_applies_resolve_the_conflict(
    sandbox_kube: SandboxKube, kube_api_client: client.ApiClient, existing: bool
) -> None:
    """Two workers read the same state (held at a barrier), then both write: one gets a
    409 (AlreadyExists or a stale resourceVersion), re-reads and converges."""
    if existing:
        KubernetesActivities(kube_api_client, ["tasks"]).apply_policies(_inp(ips=["10.0.9.9"]))
    barrier = threading.Barrier(2, timeout=10)
    held = {"n": 0}
    lock = threading.Lock()

    def hold_first_two_reads(method: str, path: str) -> None:
        if method == "GET" and path.endswith("/privnet-db-1"):
            with lock:
                held["n"] += 1
                mine = held["n"]
            if mine <= 2:
                barrier.wait()

    sandbox_kube.on_request = hold_first_two_reads
    sandbox_kube.reset_counters()
    inputs = [_inp(ips=["10.0.1.1"]), _inp(ips=["10.0.2.2", "10.0.2.3"])]
    results: list[Any] = [None, None]

    def run(i: int) -> None:
        # One client (and connection pool) per worker, as in two worker processes.
        api = client.ApiClient(client.Configuration(host=sandbox_kube.url))
        try:
            results[i] = KubernetesActivities(api, ["tasks"]).apply_policies(inputs[i])
        except BaseException as e:  # surfaced by the assertion below
            results[i] = e
        finally:
            api.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(r is not None and not isinstance(r, BaseException) for r in results), results
    assert sandbox_kube.conflicts >= 1
    final = _stored(sandbox_kube)["spec"]["egress"][0]["toCIDR"]
    assert final in (["10.0.1.1/32"], ["10.0.2.2/32", "10.0.2.3/32"])
    # The loser re-read and wrote its own state last: its state is what is stored.
    winner = inputs[0] if final == ["10.0.1.1/32"] else inputs[1]
    sandbox_kube.on_request = None
    sandbox_kube.reset_counters()
    assert KubernetesActivities(kube_api_client, ["tasks"]).apply_policies(winner).changed == []
    assert sandbox_kube.write_count == 0


# --------------------------------------------------------------------------- delete / list


def test_delete_twice_succeeds(
    sandbox_kube: SandboxKube, kube_activities_multi: KubernetesActivities
) -> None:
    kube_activities_multi.apply_policies(_inp())
    kube_activities_multi.apply_policies(_inp(conn="other"))
    inp = DeletePoliciesInput(org_id="acme", connection_id="db-1")
    kube_activities_multi.delete_policies(inp)
    kube_activities_multi.delete_policies(inp)  # 404 in both namespaces = success
    assert sandbox_kube.writes["delete"] == 4
    assert [p["metadata"]["name"] for p in sandbox_kube.policies()] == ["privnet-other"] * 2


def test_list_policies_by_org_label(
    sandbox_kube: SandboxKube, kube_activities_multi: KubernetesActivities, custom_api: Any
) -> None:
    kube_activities_multi.apply_policies(_inp(org="acme", conn="a1"))
    kube_activities_multi.apply_policies(_inp(org="acme", conn="a2", ips=["10.0.1.2"]))
    kube_activities_multi.apply_policies(_inp(org="globex", conn="g1", ips=["10.0.1.3"]))
    acme = kube_activities_multi.list_policies("acme")
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in acme) == [
        ("batch", "privnet-a1"), ("batch", "privnet-a2"),
        ("tasks", "privnet-a1"), ("tasks", "privnet-a2"),
    ]
    assert [p["metadata"]["name"] for p in kube_activities_multi.list_policies("globex")] == [
        "privnet-g1", "privnet-g1"
    ]
    assert kube_activities_multi.list_policies("nobody") == []

    def names(selector: str) -> list[str]:
        items = custom_api.list_namespaced_custom_object(
            G, V, "tasks", CNP, label_selector=selector
        )["items"]
        return sorted(i["metadata"]["name"] for i in items)

    assert names("privnet.dev/org-id!=acme") == ["privnet-g1"]
    assert names("privnet.dev/org-id in (acme, globex)") == ["privnet-a1", "privnet-a2",
                                                             "privnet-g1"]
    assert names("privnet.dev/org-id notin (acme),privnet.dev/connection-id") == ["privnet-g1"]
    assert names("!privnet.dev/org-id") == []
    assert names("privnet.dev/connection-id==a2") == ["privnet-a2"]
    with pytest.raises(ApiException) as info:
        names("privnet.dev/org-id in (acme")
    assert info.value.status == 400


def test_baseline_apply_is_idempotent(
    sandbox_kube: SandboxKube, kube_activities_multi: KubernetesActivities, custom_api: Any
) -> None:
    assert kube_activities_multi.apply_baseline() is True
    assert kube_activities_multi.apply_baseline() is False
    stored = custom_api.get_cluster_custom_object(G, V, CCNP, "privnet-baseline")
    assert stored["spec"] == render_baseline_policy(["batch", "tasks"])["spec"]
    assert sandbox_kube.writes == {"create": 1}


def test_activities_run_in_an_activity_context(
    sandbox_kube: SandboxKube, kube_activities: KubernetesActivities
) -> None:
    env = ActivityEnvironment()
    heartbeats: list[Any] = []
    env.on_heartbeat = lambda *d: heartbeats.append(d)
    result = env.run(kube_activities.apply_policies, _inp())
    assert result.changed == ["tasks"]
    env.run(kube_activities.delete_policies, DeletePoliciesInput(org_id="acme", connection_id="db-1"))
    assert heartbeats == [("tasks",), ("tasks",)]
    assert sandbox_kube.policies() == []


# --------------------------------------------------------------------------- errors


def test_forbidden_is_non_retryable_and_names_the_rbac_to_install(
    sandbox_kube: SandboxKube, kube_activities: KubernetesActivities
) -> None:
    sandbox_kube.inject_error(403)
    with pytest.raises(ApplicationError) as info:
        kube_activities.apply_policies(_inp())
    assert info.value.type == "KUBERNETES_FORBIDDEN" and info.value.non_retryable
    assert "deploy/rbac.yaml" in info.value.message
    assert "privnet-policy-writer" in info.value.message


@pytest.mark.parametrize("code", [500, 503, 429])
def test_server_errors_are_retryable(
    sandbox_kube: SandboxKube, kube_activities: KubernetesActivities, code: int
) -> None:
    sandbox_kube.inject_error(code, method="POST")
    with pytest.raises(ApplicationError) as info:
        kube_activities.apply_policies(_inp())
    assert info.value.type == "TRANSIENT" and not info.value.non_retryable
    # The retry (Temporal's) then succeeds.
    assert kube_activities.apply_policies(_inp()).changed == ["tasks"]


def test_unreachable_api_server_is_retryable(sandbox_kube: SandboxKube) -> None:
    url = sandbox_kube.url
    sandbox_kube.stop()
    configuration = client.Configuration(host=url)
    configuration.retries = 0
    acts = KubernetesActivities(client.ApiClient(configuration), ["tasks"])
    with pytest.raises(ApplicationError) as info:
        acts.delete_policies(DeletePoliciesInput(org_id="acme", connection_id="db-1"))
    assert info.value.type == "TRANSIENT" and not info.value.non_retryable
    assert "cannot reach" in info.value.message


def test_missing_namespace_is_a_configuration_error(kube_api_client: client.ApiClient) -> None:
    acts = KubernetesActivities(kube_api_client, ["not-created"])
    with pytest.raises(ApplicationError) as info:
        acts.apply_policies(_inp())
    assert info.value.type == "CONFIGURATION_ERROR" and info.value.non_retryable
    assert "namespace" in info.value.message


def test_persistent_conflicts_end_in_a_retryable_error(
    sandbox_kube: SandboxKube, kube_activities: KubernetesActivities
) -> None:
    kube_activities.apply_policies(_inp())
    kube_activities.conflict_backoff = 0.001
    sandbox_kube.inject_error(409, method="PUT", times=100)
    with pytest.raises(ApplicationError) as info:
        kube_activities.apply_policies(_inp(ips=["10.0.7.7"]))
    assert info.value.type == "TRANSIENT" and not info.value.non_retryable
    assert sandbox_kube.writes["replace"] == kube_activities.conflict_retries + 1


def test_invalid_worker_configuration_is_refused() -> None:
    api = client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))
    with pytest.raises(ValueError, match="namespace"):
        KubernetesActivities(api, ["Tasks"])
    with pytest.raises(ValueError, match="task namespace"):
        KubernetesActivities(api, [])


# --------------------------------------------------------------------------- the sandbox


def test_sandbox_refuses_crd_invalid_bodies_with_422(
    sandbox_kube: SandboxKube, custom_api: Any, crd_errors: CrdErrors
) -> None:
    good = render_connection_policy("acme", "db-1", ["10.0.1.23"], [443], namespace="tasks")
    bad_bodies = []
    for mutate in (
        lambda b: b["spec"]["egress"][0].update(toCIDR=["10.0.1.23"]),
        lambda b: b["spec"]["egress"][0].update(toCIDR=["not-a-cidr/33"]),
        lambda b: b["spec"].pop("endpointSelector"),
        lambda b: b["spec"]["egress"][0]["toPorts"][0]["ports"][0].update(protocol="HTTP"),
        lambda b: b["spec"]["egress"][0]["toPorts"][0]["ports"][0].update(port=443),
        lambda b: b["spec"]["endpointSelector"]["matchLabels"].update(bad="no spaces allowed"),
        lambda b: b["spec"].update(egress="everything"),
        lambda b: b["spec"]["egress"][0].update(toCIDRSet=[{"except": ["10.0.0.0/8"]}]),
    ):
        body = json.loads(json.dumps(good))
        mutate(body)
        bad_bodies.append(body)
    for body in bad_bodies:
        assert crd_errors(CNP, body) != [], body  # the real CRD refuses it too
        with pytest.raises(ApiException) as info:
            custom_api.create_namespaced_custom_object(G, V, "tasks", CNP, body)
        assert info.value.status == 422, body
        assert json.loads(info.value.body or "{}")["reason"] == "Invalid"
    assert sandbox_kube.policies() == []
    # ... and an update to an invalid body is refused as well, leaving the object intact.
    custom_api.create_namespaced_custom_object(G, V, "tasks", CNP, good)
    with pytest.raises(ApiException) as info:
        custom_api.patch_namespaced_custom_object(
            G, V, "tasks", CNP, "privnet-db-1", {"spec": {"egress": [{"toCIDR": ["x"]}]}}
        )
    assert info.value.status == 422
    assert _stored(sandbox_kube)["spec"] == good["spec"]


def test_sandbox_accepts_what_the_crd_accepts(
    custom_api: Any, crd_errors: CrdErrors
) -> None:
    baseline = render_baseline_policy(["tasks"])
    assert crd_errors(CCNP, baseline) == []
    created = custom_api.create_cluster_custom_object(G, V, CCNP, baseline)
    assert created["metadata"]["name"] == "privnet-baseline"


def test_sandbox_optimistic_concurrency_and_existence(
    sandbox_kube: SandboxKube, custom_api: Any
) -> None:
    body = render_connection_policy("acme", "db-1", ["10.0.1.23"], namespace="tasks")
    created = custom_api.create_namespaced_custom_object(G, V, "tasks", CNP, body)
    rv = created["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as info:  # the name exists
        custom_api.create_namespaced_custom_object(G, V, "tasks", CNP, body)
    assert info.value.status == 409 and json.loads(info.value.body or "{}")["reason"] == "AlreadyExists"

    updated = json.loads(json.dumps(created))
    updated["spec"]["egress"][0]["toCIDR"] = ["10.0.1.24/32"]
    ok = custom_api.replace_namespaced_custom_object(G, V, "tasks", CNP, "privnet-db-1", updated)
    assert int(ok["metadata"]["resourceVersion"]) > int(rv)

    stale = json.loads(json.dumps(updated))  # still carries the old resourceVersion
    stale["spec"]["egress"][0]["toCIDR"] = ["10.0.1.25/32"]
    with pytest.raises(ApiException) as info:
        custom_api.replace_namespaced_custom_object(G, V, "tasks", CNP, "privnet-db-1", stale)
    assert info.value.status == 409 and json.loads(info.value.body or "{}")["reason"] == "Conflict"
    with pytest.raises(ApiException) as info:
        custom_api.patch_namespaced_custom_object(
            G, V, "tasks", CNP, "privnet-db-1", {"metadata": {"resourceVersion": rv}}
        )
    assert info.value.status == 409
    assert _stored(sandbox_kube)["spec"]["egress"][0]["toCIDR"] == ["10.0.1.24/32"]

    for call in (
        lambda: custom_api.get_namespaced_custom_object(G, V, "tasks", CNP, "missing"),
        lambda: custom_api.replace_namespaced_custom_object(G, V, "tasks", CNP, "missing", body),
        lambda: custom_api.patch_namespaced_custom_object(G, V, "tasks", CNP, "missing", {}),
        lambda: custom_api.delete_namespaced_custom_object(G, V, "tasks", CNP, "missing"),
    ):
        with pytest.raises(ApiException) as info:
            call()
        assert info.value.status == 404


def test_sandbox_no_op_write_keeps_the_resource_version(custom_api: Any) -> None:
    body = render_connection_policy("acme", "db-1", ["10.0.1.23"], namespace="tasks")
    created = custom_api.create_namespaced_custom_object(G, V, "tasks", CNP, body)
    same = custom_api.replace_namespaced_custom_object(G, V, "tasks", CNP, "privnet-db-1", created)
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert same["metadata"]["generation"] == 1


def test_sandbox_discovery_for_the_official_client(kube_api_client: client.ApiClient) -> None:
    groups = client.ApisApi(kube_api_client).get_api_versions()
    assert [g.name for g in groups.groups] == ["cilium.io"]
    resources = client.CustomObjectsApi(kube_api_client).get_api_resources(G, V)
    assert {(r.name, r.namespaced) for r in resources.resources} == {
        (CNP, True), (CCNP, False)
    }
    items = client.CoreV1Api(kube_api_client).list_namespace().items
    names = [n.metadata.name for n in items if n.metadata]
    assert {"tasks", "batch", "kube-system"} <= set(names)


def test_from_settings_with_kube_url_and_with_a_kubeconfig(
    sandbox_kube: SandboxKube, tmp_path: Path
) -> None:
    by_url = KubernetesActivities.from_settings(
        Settings(kube_url=sandbox_kube.url, task_namespaces=["tasks"])
    )
    assert by_url.apply_policies(_inp()).changed == ["tasks"]

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "sandbox", "cluster": {"server": sandbox_kube.url}},
                     {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "dev", "user": {"token": "t"}}],
        "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": "dev"}},
                     {"name": "other", "context": {"cluster": "nowhere", "user": "dev"}}],
    }))
    by_config = KubernetesActivities.from_settings(
        Settings(kubeconfig=str(kubeconfig), kube_context="sandbox",
                 task_namespaces=["tasks", "batch"], org_label_key="example.com/tenant")
    )
    result = by_config.apply_policies(_inp())
    assert result.changed == ["batch", "tasks"]  # tasks: the selector's label key changed
    assert _stored(sandbox_kube, "batch")["spec"]["endpointSelector"] == {
        "matchLabels": {"example.com/tenant": "acme"}
    }


def test_sandbox_runs_standalone() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.kube", "--port", "0", "--namespace", "jobs"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["kube_url"]
        with urllib.request.urlopen(f"{url}/api/v1/namespaces/jobs", timeout=5) as resp:
            assert json.load(resp)["metadata"]["name"] == "jobs"
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
