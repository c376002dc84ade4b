"""The Kubernetes activities through the official ``kubernetes`` client over HTTP against
sandbox Kubernetes (sandbox/kube/): convergence, ownership (NAME_CONFLICT), delete
preconditions and error classification. The sandbox's own behaviour is in
tests/test_sandbox_kube.py."""

from __future__ import annotations

import threading
import time
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
from workflows.contracts import ApplyPoliciesInput, DeletePoliciesInput, policy_name

pytest_plugins = ["tests.kube_fixtures"]

G, V, CNP, CCNP = "cilium.io", "v2", "ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"
REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = policy_name("acme", "db-1")


def _inp(org: str = "acme", conn: str = "db-1", ips: list[str] | None = None,
         ports: list[int] | None = None) -> ApplyPoliciesInput:
    return ApplyPoliciesInput(
        org_id=org, connection_id=conn, ips=ips or ["10.0.1.23"], ports=ports or []
    )


def _stored(kube: SandboxKube, ns: str = "tasks", name: str = NAME) -> dict[str, Any]:
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
        G, V, "tasks", CNP, NAME,
        {"metadata": {"labels": {"team": "netops"}},
         "spec": {"egress": [{"toCIDR": ["10.0.0.0/8"]}]}},
    )
    assert kube_activities.apply_policies(_inp()).changed == ["tasks"]
    stored = _stored(sandbox_kube)
    assert stored["spec"]["egress"] == [{"toCIDR": ["10.0.1.23/32"]}]
    assert stored["metadata"]["labels"]["team"] == "netops"
    # Deleted by hand: recreated.
    sandbox_kube.remove_object(CNP, "tasks", NAME)
    assert kube_activities.apply_policies(_inp()).changed == ["tasks"]
    assert _stored(sandbox_kube)["spec"]["egress"] == [{"toCIDR": ["10.0.1.23/32"]}]


def test_apply_in_every_configured_namespace(
    sandbox_kube: SandboxKube, kube_activities_multi: KubernetesActivities
) -> None:
    result = kube_activities_multi.apply_policies(_inp())
    assert result.namespaces == ["batch", "tasks"] and result.changed == ["batch", "tasks"]
    assert _stored(sandbox_kube, "tasks") and _stored(sandbox_kube, "batch")
    # One namespace drifted: only that one is written.
    sandbox_kube.remove_object(CNP, "batch", NAME)
    sandbox_kube.reset_counters()
    assert kube_activities_multi.apply_policies(_inp()).changed == ["batch"]
    assert sandbox_kube.writes == {"create": 1}
    kube_activities_multi.delete_policies(DeletePoliciesInput(org_id="acme", connection_id="db-1"))
    assert sandbox_kube.policies() == []


@pytest.mark.parametrize("existing", [False, True], ids=["create-race", "update-race"])
def test_concurrent_applies_resolve_the_conflict(
    sandbox_kube: SandboxKube, kube_api_client: client.ApiClient, existing: bool
) -> None:
    """Two workers read the same state, then both write: one gets a 409 (AlreadyExists or a
    stale resourceVersion), re-reads and converges. No write is served before both reads
    have been (a barrier on the reads alone would let one worker read, write and only then
    let the other read)."""
    if existing:
        KubernetesActivities(kube_api_client, ["tasks"]).apply_policies(_inp(ips=["10.0.9.9"]))

    def reads_done() -> int:
        return sum(1 for r in list(sandbox_kube.requests)
                   if r.method == "GET" and r.path.endswith(f"/{NAME}") and r.status)

    def hold_writes_until_both_read(method: str, path: str) -> None:
        if method in ("POST", "PUT") and CNP in path:
            deadline = time.monotonic() + 20
            while reads_done() < 2:
                assert time.monotonic() < deadline, "the second worker never read"
                time.sleep(0.002)

    sandbox_kube.on_request = hold_writes_until_both_read
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


def _squat(kube: SandboxKube, labels: dict[str, str] | None, ns: str = "tasks") -> dict[str, Any]:
    """Someone else's policy stored under privnet's name for acme/db-1."""
    body = render_connection_policy("globex", "db-1", ["10.0.9.9"], namespace=ns)
    body["metadata"] = {"name": NAME, "namespace": ns, **({"labels": labels} if labels else {})}
    return kube.put_object(CNP, body)


@pytest.mark.parametrize(
    "labels,owner_text",
    [
        ({"privnet.dev/org-id": "globex", "privnet.dev/connection-id": "db-1"},
         "org 'globex', connection 'db-1'"),
        ({"privnet.dev/org-id": "acme", "privnet.dev/connection-id": "db-2"},
         "org 'acme', connection 'db-2'"),
        (None, "no privnet.dev/org-id / privnet.dev/connection-id labels"),
    ],
    ids=["other-org", "other-connection", "unlabelled"],
)
def test_apply_never_changes_another_owners_object(
    sandbox_kube: SandboxKube, kube_activities: KubernetesActivities,
    labels: dict[str, str] | None, owner_text: str,
) -> None:
    before = _squat(sandbox_kube, labels)
    sandbox_kube.reset_counters()
    with pytest.raises(ApplicationError) as info:
        kube_activities.apply_policies(_inp())
    err = info.value
    assert err.type == "NAME_CONFLICT" and err.non_retryable
    assert f"tasks/{NAME}" in err.message  # the object
    assert owner_text in err.message  # the owner found
    assert f"kubectl delete ciliumnetworkpolicy -n tasks {NAME}" in err.message  # the fix
    assert sandbox_kube.write_count == 0
    assert _stored(sandbox_kube) == before


def test_delete_leaves_another_owners_object_and_succeeds(
    sandbox_kube: SandboxKube, kube_activities: KubernetesActivities,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = _squat(sandbox_kube, {"privnet.dev/org-id": "globex",
                                   "privnet.dev/connection-id": "db-1"})
    sandbox_kube.reset_counters()
    kube_activities.delete_policies(DeletePoliciesInput(org_id="acme", connection_id="db-1"))
    assert sandbox_kube.write_count == 0
    assert _stored(sandbox_kube) == before
    assert "belongs to org 'globex'" in caplog.text and "left in place" in caplog.text


def test_delete_carries_the_preconditions_it_read(
    sandbox_kube: SandboxKube, kube_activities: KubernetesActivities
) -> None:
    kube_activities.apply_policies(_inp())
    meta = _stored(sandbox_kube)["metadata"]
    sandbox_kube.reset_counters()
    kube_activities.delete_policies(DeletePoliciesInput(org_id="acme", connection_id="db-1"))
    (delete,) = [r for r in sandbox_kube.requests if r.method == "DELETE"]
    assert delete.body["preconditions"] == {
        "uid": meta["uid"], "resourceVersion": meta["resourceVersion"]
    }
    assert delete.status == 200 and sandbox_kube.policies() == []


@pytest.mark.parametrize("replacement", ["foreign", "ours-again"])
def test_delete_never_removes_an_object_replaced_in_between(
    sandbox_kube: SandboxKube, kube_activities: KubernetesActivities, replacement: str
) -> None:
    """Between privnet's GET and its DELETE the object is replaced (same name, new uid):
    the precondition fails (409), privnet reads again and decides again."""
    kube_activities.apply_policies(_inp())
    kube_activities.conflict_backoff = 0.001
    replaced: list[dict[str, Any]] = []

    def replace_before_the_first_delete(method: str, path: str) -> None:
        if method == "DELETE" and not replaced:
            sandbox_kube.remove_object(CNP, "tasks", NAME)
            labels = ({"privnet.dev/org-id": "globex", "privnet.dev/connection-id": "db-1"}
                      if replacement == "foreign" else None)
            if labels is None:
                body = render_connection_policy("acme", "db-1", ["10.0.1.23"], namespace="tasks")
                replaced.append(sandbox_kube.put_object(CNP, body))
            else:
                replaced.append(_squat(sandbox_kube, labels))

    sandbox_kube.on_request = replace_before_the_first_delete
    sandbox_kube.reset_counters()
    kube_activities.delete_policies(DeletePoliciesInput(org_id="acme", connection_id="db-1"))
    deletes = [r for r in sandbox_kube.requests if r.method == "DELETE"]
    assert deletes[0].status == 409  # the precondition named the object that was replaced
    if replacement == "foreign":
        assert len(deletes) == 1
        assert _stored(sandbox_kube) == replaced[0]  # never deleted, never changed
    else:
        assert [d.status for d in deletes] == [409, 200]
        assert deletes[1].body["preconditions"]["uid"] == replaced[0]["metadata"]["uid"]
        assert sandbox_kube.policies() == []



def test_delete_twice_succeeds(
    sandbox_kube: SandboxKube, kube_activities_multi: KubernetesActivities
) -> None:
    kube_activities_multi.apply_policies(_inp())
    kube_activities_multi.apply_policies(_inp(conn="other"))
    inp = DeletePoliciesInput(org_id="acme", connection_id="db-1")
    kube_activities_multi.delete_policies(inp)
    kube_activities_multi.delete_policies(inp)  # 404 in both namespaces = success
    assert sandbox_kube.writes["delete"] == 2  # the second delete found nothing to delete
    assert [p["metadata"]["name"] for p in sandbox_kube.policies()] == [
        policy_name("acme", "other")
    ] * 2


def test_list_policies_by_org_label(
    sandbox_kube: SandboxKube, kube_activities_multi: KubernetesActivities, custom_api: Any
) -> None:
    kube_activities_multi.apply_policies(_inp(org="acme", conn="a1"))
    kube_activities_multi.apply_policies(_inp(org="acme", conn="a2", ips=["10.0.1.2"]))
    kube_activities_multi.apply_policies(_inp(org="globex", conn="g1", ips=["10.0.1.3"]))
    a1, a2, g1 = policy_name("acme", "a1"), policy_name("acme", "a2"), policy_name("globex", "g1")
    acme = kube_activities_multi.list_policies("acme")
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in acme) == [
        ("batch", a1), ("batch", a2), ("tasks", a1), ("tasks", a2),
    ]
    assert [p["metadata"]["name"] for p in kube_activities_multi.list_policies("globex")] == [
        g1, g1
    ]
    assert kube_activities_multi.list_policies("nobody") == []
    everyone = kube_activities_multi.list_policies()  # the sweeper's view: every org
    assert sorted({(p["metadata"]["labels"]["privnet.dev/org-id"],
                    p["metadata"]["labels"]["privnet.dev/connection-id"]) for p in everyone}) == [
        ("acme", "a1"), ("acme", "a2"), ("globex", "g1")
    ]
    assert len(everyone) == 6

    def names(selector: str) -> list[str]:
        items = custom_api.list_namespaced_custom_object(
            G, V, "tasks", CNP, label_selector=selector
        )["items"]
        return sorted(i["metadata"]["name"] for i in items)

    assert names("privnet.dev/org-id!=acme") == [g1]
    assert names("privnet.dev/org-id in (acme, globex)") == sorted([a1, a2, g1])
    assert names("privnet.dev/org-id notin (acme),privnet.dev/connection-id") == [g1]
    assert names("!privnet.dev/org-id") == []
    assert names("privnet.dev/connection-id==a2") == [a2]
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


# --------------------------------------------------------------------------- settings


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


def test_apply_writes_the_status_it_passes_through_before_it_acts(
    sandbox_kube: SandboxKube, kube_api_client: client.ApiClient, tmp_path: Path
) -> None:
    """Release 4: apply_policies writes ApplyingPolicy first; a store that is down fails the
    attempt before any policy is written (the step retries, the write first again)."""
    from sqlalchemy.exc import OperationalError

    from activities.store import Store, record_checked
    from tests.kube_fixtures import LABEL_KEY
    from workflows.contracts import ConnectionStatus, StatusRecord

    up = Store(f"sqlite:///{tmp_path / 'store.db'}")
    up.create_schema()
    down = Store("postgresql+psycopg://privnet@127.0.0.1:1/test?connect_timeout=2")  # refused
    store = {"now": down}
    acts = KubernetesActivities(
        kube_api_client, ["tasks"], LABEL_KEY,
        status_writer=lambda rec: record_checked(store["now"], rec),
    )
    conn = "db-status-first"
    applying = _inp(conn=conn).model_copy(update={"status": StatusRecord(
        org_id="acme", connection_id=conn, seq=5, at="2026-11-27T00:00:00Z",
        status=ConnectionStatus.APPLYING_POLICY,
        endpoint_service_name="com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0",
        region="us-east-1", service_region="us-east-1", workflow_id=f"privnet-conn:acme:{conn}",
    )})
    with pytest.raises(OperationalError):
        acts.apply_policies(applying)
    assert sandbox_kube.get_object(CNP, "tasks", policy_name("acme", conn)) is None
    store["now"] = up
    assert acts.apply_policies(applying).changed == ["tasks"]
    assert _stored(sandbox_kube, name=policy_name("acme", conn))["spec"]
    view = up.get("acme", conn)
    assert view is not None and [e.status for e in view.timeline or []] == ["ApplyingPolicy"]
    acts.delete_policies(DeletePoliciesInput(org_id="acme", connection_id=conn))
