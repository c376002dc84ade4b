"""Rendering and validation of privnet's Cilium policies (activities/policy.py), checked
against the upstream Cilium CRD schemas, and the deploy/ manifests that carry them."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from temporalio.exceptions import ApplicationError

from activities.kubernetes import KubernetesActivities
from activities.policy import (
    BASELINE_NAME,
    PRIVATE_RANGES,
    PolicyValidationError,
    render_baseline_policy,
    render_connection_policy,
)
from sandbox.kube import SandboxKube
from workflows.contracts import (
    CONNECTION_ID_RE,
    ORG_ID_RE,
    ApplyPoliciesInput,
    InvalidInput,
    policy_name,
)

pytest_plugins = ["tests.kube_fixtures"]

CrdErrors = Callable[[str, dict[str, Any]], list[str]]
REPO_ROOT = Path(__file__).resolve().parents[1]
CNP = "ciliumnetworkpolicies"
CCNP = "ciliumclusterwidenetworkpolicies"


def _render(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "org_id": "acme",
        "connection_id": "db-1",
        "ips": ["10.0.1.23", "10.0.2.45"],
        "ports": (),
        "namespace": "tasks",
    }
    args.update(kw)
    return render_connection_policy(
        args.pop("org_id"), args.pop("connection_id"), args.pop("ips"), args.pop("ports"), **args
    )


# --------------------------------------------------------------------------- CRD schema


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"ports": [5432]},
        {"ports": [443, 80, 8443]},
        {"ips": ["192.168.0.7"], "label_key": "tenant"},
        {"ips": ["172.16.5.5/32", "100.64.0.9"], "org_id": "a.b_c-d"},
    ],
)
def test_connection_policy_validates_against_the_cilium_crd(
    kw: dict[str, Any], crd_errors: CrdErrors
) -> None:
    policy = _render(**kw)
    assert crd_errors(CNP, policy) == []


@pytest.mark.parametrize("namespaces", [["tasks"], ["tasks", "batch", "jobs-2"]])
def test_baseline_validates_against_the_cilium_clusterwide_crd(
    namespaces: list[str], crd_errors: CrdErrors
) -> None:
    assert crd_errors(CCNP, render_baseline_policy(namespaces, "privnet.dev/org-id")) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p["spec"]["egress"][0].update(toCIDR=["10.0.1.23"]),  # no prefix length
        lambda p: p["spec"]["egress"][0].update(
            toPorts=[{"ports": [{"port": "443", "protocol": "HTTP"}]}]
        ),
        lambda p: p["spec"].pop("endpointSelector"),
        lambda p: p["spec"]["endpointSelector"]["matchLabels"].update(x="Not Valid!"),
        lambda p: p["spec"].update(egress="everything"),
    ],
)
def test_the_crd_schema_check_rejects_broken_policies(mutate: Any, crd_errors: CrdErrors) -> None:
    """The schema check used above is not vacuous: it refuses what the CRD refuses."""
    policy = _render(ports=[443])
    mutate(policy)
    assert crd_errors(CNP, policy) != []


@given(
    org=st.from_regex(r"\A[a-z0-9]([-a-z0-9_.]{0,20}[a-z0-9])?\Z"),
    conn=st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?\Z"),
    hosts=st.sets(st.integers(1, 2**24 - 2), min_size=1, max_size=6),
    ports=st.lists(st.integers(1, 65535), max_size=8),
)
def test_any_valid_input_renders_a_crd_valid_host_only_policy(
    crd_errors: CrdErrors, org: str, conn: str, hosts: set[int], ports: list[int]
) -> None:
    ips = [str(ipaddress.IPv4Address(0x0A000000 + h)) for h in hosts]  # inside 10.0.0.0/8
    policy = render_connection_policy(org, conn, ips, ports, namespace="tasks")
    assert crd_errors(CNP, policy) == []
    (rule,) = policy["spec"]["egress"]
    assert sorted(rule["toCIDR"]) == sorted(f"{ip}/32" for ip in ips)
    assert policy["spec"]["endpointSelector"] == {"matchLabels": {"privnet.dev/org-id": org}}
    if ports:
        assert [int(p["port"]) for p in rule["toPorts"][0]["ports"]] == sorted(set(ports))
    else:
        assert "toPorts" not in rule


# --------------------------------------------------------------------------- names

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _ids(middle: str, min_middle: int, max_middle: int) -> st.SearchStrategy[str]:
    """Ids from a tiny alphabet (alphanumeric ends), so that separators, dots, underscores,
    long ids and near-collisions come up often."""
    ends = st.sampled_from("ab1")
    return st.builds(lambda a, m, b: a + m + b, ends,
                     st.text(middle, min_size=min_middle, max_size=max_middle), ends)


_org_ids = st.one_of(st.from_regex(ORG_ID_RE, fullmatch=True), st.sampled_from("ab"),
                     _ids("ab-._", 0, 6), _ids("a-", 38, 61))
_connection_ids = st.one_of(st.from_regex(CONNECTION_ID_RE, fullmatch=True),
                            st.sampled_from("ab"), _ids("ab-", 0, 6), _ids("b-", 18, 38))


@given(_org_ids, _connection_ids)
def test_policy_name_is_a_deterministic_dns_label(org: str, conn: str) -> None:
    assert ORG_ID_RE.match(org) and CONNECTION_ID_RE.match(conn)  # the generators are valid
    name = policy_name(org, conn)
    assert _DNS_LABEL.match(name), name
    assert name == policy_name(org, conn)
    if "--" not in name:  # the hashed form: the hash is of both ids, never cut from them
        digest = hashlib.sha256(f"{org}/{conn}".encode()).hexdigest()[:20]
        assert name.endswith(f"-{digest}")
    else:  # the readable form reads back to the pair
        assert name == f"privnet-{org}--{conn}"
        assert name.removeprefix("privnet-").split("--", 1) == [org, conn]


@given(st.lists(st.tuples(_org_ids, _connection_ids), min_size=2, max_size=40, unique=True))
def test_policy_name_is_injective(pairs: list[tuple[str, str]]) -> None:
    names = [policy_name(org, conn) for org, conn in pairs]
    assert len(set(names)) == len(pairs), sorted(zip(names, pairs, strict=True))


@pytest.mark.parametrize(
    "pairs",
    [
        [("a-b", "c"), ("a", "b-c")],
        [("a--b", "c"), ("a", "b--c")],
        [("x.y", "z"), ("x-y", "z"), ("x_y", "z")],
        [("acme", "db"), ("globex", "db")],
        [("o" * 63, "c" * 39 + "1"), ("o" * 63, "c" * 39 + "2"), ("o" * 62 + "p", "c" * 40)],
    ],
)
def test_policy_names_of_lookalike_pairs_differ(pairs: list[tuple[str, str]]) -> None:
    names = {policy_name(org, conn) for org, conn in pairs}
    assert len(names) == len(pairs) and all(_DNS_LABEL.match(n) for n in names)


def test_policy_name_examples() -> None:
    assert policy_name("acme", "db") == "privnet-acme--db"
    assert policy_name("acme-corp", "orders-db") == "privnet-acme-corp--orders-db"
    hashed = policy_name("x.y_z", "c0")
    assert hashed.startswith("privnet-x-y-z-c0-") and len(hashed) == 37
    assert len(policy_name("o" * 63, "c" * 40)) <= 63


# --------------------------------------------------------------------------- structure


def test_connection_policy_structure() -> None:
    policy = _render(ports=[5432, 443, 5432], label_key="privnet.dev/org-id")
    assert policy["apiVersion"] == "cilium.io/v2"
    assert policy["kind"] == "CiliumNetworkPolicy"
    assert policy["metadata"] == {
        "name": "privnet-acme--db-1",
        "namespace": "tasks",
        "labels": {
            "privnet.dev/org-id": "acme",
            "privnet.dev/connection-id": "db-1",
            "app.kubernetes.io/managed-by": "privnet",
        },
    }
    spec = policy["spec"]
    assert spec["endpointSelector"] == {"matchLabels": {"privnet.dev/org-id": "acme"}}
    assert spec["egress"] == [
        {
            "toCIDR": ["10.0.1.23/32", "10.0.2.45/32"],
            "toPorts": [
                {"ports": [{"port": "443", "protocol": "TCP"}, {"port": "5432", "protocol": "TCP"}]}
            ],
        }
    ]
    assert "egressDeny" not in spec and "ingress" not in spec


def test_rendering_is_deterministic_in_ip_order_and_spelling() -> None:
    a = _render(ips=["10.0.2.45", "10.0.1.23/32"])
    b = _render(ips=["10.0.1.23", "10.0.2.45"])
    assert a == b


def test_custom_label_key_is_used_in_the_selector_only() -> None:
    policy = _render(label_key="example.com/tenant")
    assert policy["spec"]["endpointSelector"] == {"matchLabels": {"example.com/tenant": "acme"}}
    assert policy["metadata"]["labels"]["privnet.dev/org-id"] == "acme"


def test_baseline_structure() -> None:
    policy = render_baseline_policy(["tasks", "batch", "tasks"], "privnet.dev/org-id")
    assert policy["kind"] == "CiliumClusterwideNetworkPolicy"
    assert policy["metadata"]["name"] == BASELINE_NAME
    spec = policy["spec"]
    # Selects by namespace, so a task pod without the org label is selected too.
    assert spec["endpointSelector"] == {
        "matchExpressions": [
            {
                "key": "k8s:io.kubernetes.pod.namespace",
                "operator": "In",
                "values": ["batch", "tasks"],
            }
        ]
    }
    world, dns = spec["egress"]
    assert world == {
        "toCIDRSet": [
            {
                "cidr": "0.0.0.0/0",
                "except": [
                    "10.0.0.0/8",
                    "172.16.0.0/12",
                    "192.168.0.0/16",
                    "100.64.0.0/10",
                    "169.254.0.0/16",
                ],
            }
        ]
    }
    assert dns["toEndpoints"] == [
        {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": "kube-dns"}}
    ]
    assert {(p["port"], p["protocol"]) for p in dns["toPorts"][0]["ports"]} == {
        ("53", "UDP"),
        ("53", "TCP"),
    }
    assert "egressDeny" not in spec and "ingressDeny" not in spec


def test_deploy_baseline_file_equals_the_renderer() -> None:
    text = (REPO_ROOT / "deploy" / "baseline-policy.yaml").read_text()
    assert yaml.safe_load(text) == render_baseline_policy(["tasks"], "privnet.dev/org-id")


def test_deploy_rbac_grants_only_cilium_policies() -> None:
    docs = list(yaml.safe_load_all((REPO_ROOT / "deploy" / "rbac.yaml").read_text()))
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    (sa,) = by_kind["ServiceAccount"]
    assert sa["metadata"]["name"] == "privnet-worker"
    (role,) = by_kind["Role"]
    assert role["metadata"]["namespace"] == "tasks"
    assert role["rules"] == [
        {
            "apiGroups": ["cilium.io"],
            "resources": ["ciliumnetworkpolicies"],
            "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"],
        }
    ]
    (cluster_role,) = by_kind["ClusterRole"]
    for rule in cluster_role["rules"]:
        assert rule["apiGroups"] == ["cilium.io"]
        assert rule["resources"] == ["ciliumclusterwidenetworkpolicies"]
        # Only `create` (which RBAC cannot restrict by name) lacks resourceNames.
        if rule.get("resourceNames") != ["privnet-baseline"]:
            assert rule["verbs"] == ["create"]
    for binding in by_kind["RoleBinding"] + by_kind["ClusterRoleBinding"]:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "privnet-worker", "namespace": "privnet"}
        ]


def test_deploy_worker_runs_privnet_worker_as_non_root() -> None:
    docs = list(yaml.safe_load_all((REPO_ROOT / "deploy" / "worker-deployment.yaml").read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "privnet-worker"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["command"] == ["privnet", "worker"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    sources = {next(iter(e)) for e in container["envFrom"]}
    assert sources == {"configMapRef", "secretRef"}


# --------------------------------------------------------------------------- refusals

BAD_CONNECTION_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("org uppercase", {"org_id": "Acme"}, "not a valid Kubernetes label value"),
    ("org 64 chars", {"org_id": "a" * 64}, "1-63 lowercase"),
    ("org with slash", {"org_id": "acme/prod"}, "not a valid Kubernetes label value"),
    ("org empty", {"org_id": ""}, "not a valid Kubernetes label value"),
    ("org leading dash", {"org_id": "-acme"}, "starting and ending"),
    ("connection id invalid", {"connection_id": "DB_1"}, "connection id"),
    ("ip unspecified", {"ips": ["0.0.0.0"]}, "unspecified"),
    ("ip /8 prefix", {"ips": ["10.0.0.0/8"]}, "only single hosts (/32)"),
    ("ip /31 prefix", {"ips": ["10.0.1.2/31"]}, "only single hosts (/32)"),
    ("ip /0", {"ips": ["0.0.0.0/0"]}, "only single hosts (/32)"),
    ("ipv6", {"ips": ["fd00::1"]}, "IPv6"),
    ("ipv6 prefix", {"ips": ["fd00::1/128"]}, "only single hosts"),
    ("duplicate ips", {"ips": ["10.0.1.23", "10.0.1.23/32"]}, "listed twice"),
    ("empty ip list", {"ips": []}, "at least one endpoint"),
    ("not an ip", {"ips": ["db.internal"]}, "not an IPv4 address"),
    ("leading zeros", {"ips": ["10.0.01.2"]}, "not an IPv4 address"),
    ("public ip", {"ips": ["8.8.8.8"]}, "not private"),
    ("loopback", {"ips": ["127.0.0.1"]}, "loopback"),
    ("link-local metadata", {"ips": ["169.254.169.254"]}, "link-local"),
    ("multicast", {"ips": ["224.0.0.1"]}, "multicast"),
    ("broadcast", {"ips": ["255.255.255.255"]}, "broadcast"),
    ("private network address", {"ips": ["10.0.0.0"]}, "network or broadcast"),
    ("ips as a string", {"ips": "10.0.1.23"}, "must be a list"),
    ("port 0", {"ports": [0]}, "between 1 and 65535"),
    ("port 65536", {"ports": [65536]}, "between 1 and 65535"),
    ("port as string", {"ports": ["443"]}, "between 1 and 65535"),
    ("too many ports", {"ports": list(range(1, 42))}, "limit of 40"),
    ("namespace uppercase", {"namespace": "Tasks"}, "namespace name"),
    ("namespace with dot", {"namespace": "tasks.prod"}, "namespace name"),
    ("namespace empty", {"namespace": ""}, "namespace name"),
    ("empty selector key", {"label_key": ""}, "empty pod selector"),
    ("selector key invalid", {"label_key": "privnet.dev/org id"}, "not a valid label key"),
    ("selector key bad prefix", {"label_key": "Privnet.Dev/org"}, "invalid prefix"),
]


@pytest.mark.parametrize(
    "kw,fragment", [(kw, f) for _, kw, f in BAD_CONNECTION_INPUTS],
    ids=[i for i, _, _ in BAD_CONNECTION_INPUTS],
)
def test_bad_connection_inputs_are_refused_with_a_clear_message(
    kw: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(PolicyValidationError) as info:
        _render(**kw)
    assert isinstance(info.value, InvalidInput)
    assert info.value.code == "POLICY_INVALID"
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "namespaces,fragment",
    [
        ([], "no task namespace"),
        (["kube-system"], "cannot be task namespaces"),
        (["tasks", "Bad_NS"], "namespace name"),
        ("tasks", "must be a list"),
    ],
)
def test_bad_baseline_inputs_are_refused(namespaces: Any, fragment: str) -> None:
    with pytest.raises(PolicyValidationError) as info:
        render_baseline_policy(namespaces, "privnet.dev/org-id")
    assert fragment in info.value.message


# Everything an ApplyPoliciesInput can carry (namespaces and label key are worker config).
_API_BAD = [
    kw
    for _, kw, _ in BAD_CONNECTION_INPUTS
    if set(kw) <= {"org_id", "connection_id", "ips", "ports"}
]


@pytest.mark.parametrize("kw", _API_BAD)
def test_bad_inputs_are_refused_before_any_api_call(
    kw: dict[str, Any], sandbox_kube: SandboxKube, kube_activities: KubernetesActivities
) -> None:
    raw: dict[str, Any] = {"org_id": "acme", "connection_id": "db-1", "ips": ["10.0.1.23"]}
    raw.update(kw)
    inp = ApplyPoliciesInput.model_construct(**{"ports": [], **raw})
    with pytest.raises(ApplicationError) as info:
        kube_activities.apply_policies(inp)
    assert info.value.type == "POLICY_INVALID"
    assert info.value.non_retryable
    assert sandbox_kube.requests == []
    assert sandbox_kube.policies() == []


def test_the_private_ranges_are_the_documented_ones() -> None:
    assert set(PRIVATE_RANGES) == {
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    }


@given(st.integers(0, 2**32 - 1), st.integers(0, 31))
def test_no_prefix_broader_than_a_host_is_ever_accepted(addr: int, prefix: int) -> None:
    cidr = f"{ipaddress.IPv4Address(addr)}/{prefix}"
    with pytest.raises(PolicyValidationError):
        _render(ips=[cidr])


@given(st.integers(0, 2**32 - 1))
def test_only_private_host_addresses_are_accepted(addr: int) -> None:
    ip = ipaddress.IPv4Address(addr)
    private = [ipaddress.IPv4Network(c) for c in ("10.0.0.0/8", "172.16.0.0/12",
                                                   "192.168.0.0/16", "100.64.0.0/10")]
    net = next((n for n in private if ip in n), None)
    acceptable = net is not None and ip not in (net.network_address, net.broadcast_address)
    if acceptable:
        assert _render(ips=[str(ip)])["spec"]["egress"][0]["toCIDR"] == [f"{ip}/32"]
    else:
        with pytest.raises(PolicyValidationError):
            _render(ips=[str(ip)])


def test_policy_module_does_no_io() -> None:
    source = Path(__file__).resolve().parents[1].joinpath("activities", "policy.py").read_text()
    for forbidden in ("import kubernetes", "import boto3", "open(", "requests", "socket"):
        assert forbidden not in source
