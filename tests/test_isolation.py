"""Provable isolation between organizations.

An *oracle* — a small, independent evaluator of Cilium's egress semantics — answers
"may a pod (namespace + labels) reach IP x on TCP port p" for a set of rendered policies:

* a policy (namespaced ``CiliumNetworkPolicy`` or ``CiliumClusterwideNetworkPolicy``)
  applies to a pod when its ``endpointSelector`` selects the pod's identity (its labels as
  ``k8s:<key>`` plus ``k8s:io.kubernetes.pod.namespace``); a namespaced policy only ever
  selects pods of its own namespace; an empty selector selects every pod in scope;
* a pod selected by any policy with an ``egress``/``egressDeny`` section is in default-deny
  egress; a pod selected by none may go anywhere;
* allow rules are additive across rules and policies; ``egressDeny`` beats every allow;
* within a rule: L3 = ``toCIDR`` ∪ ``toCIDRSet`` (each with its own ``except``) ∪
  ``toEntities`` world/all; a rule with *no* L3 selector matches every destination; L4
  ``toPorts`` (absent = every port; port "0"/absent = every port; protocol TCP/ANY/absent
  matches TCP); ``toEndpoints`` selects pods, never external IPs.

The property: for random organizations, connections, endpoint IPs and destinations
(own endpoint IPs, other orgs' endpoint IPs, unallocated private IPs, public addresses),
a pod of org A in a task namespace reaches x on port p **iff** x is one of A's endpoint
IPs (and p is allowed by that connection's ports) or x is public.

The oracle judges what the cluster stores, not what privnet meant to store: each example
runs the real ``KubernetesActivities`` over HTTP against sandbox Kubernetes (apply, new
endpoint IPs, delete), then reads the stored objects, which are keyed by name as in a
cluster. The generator reuses connection ids across orgs on purpose (two orgs with a
connection ``db`` is the common case), so a name that is not unique per (org, connection)
shows up as one org losing its path or gaining another's (issue 11).
"""

from __future__ import annotations

import copy
import ipaddress
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from kubernetes import client
from temporalio.exceptions import ApplicationError

from activities.kubernetes import KubernetesActivities
from activities.policy import render_baseline_policy, render_connection_policy
from sandbox.kube import SandboxKube
from workflows.contracts import ApplyPoliciesInput, DeletePoliciesInput, policy_name

LABEL_KEY = "privnet.dev/org-id"
NS_LABEL = "k8s:io.kubernetes.pod.namespace"
THOROUGH = os.environ.get("PRIVNET_HYPOTHESIS_PROFILE") == "thorough"
ISOLATION_EXAMPLES = 10_000 if THOROUGH else 2_000

# Independent of activities.policy.PRIVATE_RANGES on purpose: the oracle's notion of
# "private" must not be taken from the code under test.
PRIVATE = [
    ipaddress.IPv4Network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")
]


def is_private(ip: str) -> bool:
    addr = ipaddress.IPv4Address(ip)
    return any(addr in n for n in PRIVATE)


# --------------------------------------------------------------------------- the oracle


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def identity(self) -> dict[str, str]:
        ident = {f"k8s:{k}": v for k, v in self.labels.items()}
        ident[NS_LABEL] = self.namespace
        return ident


def _label(ident: Mapping[str, str], key: str) -> str | None:
    """Cilium label lookup: ``src:key`` matches that source; a bare key (or ``any:``)
    matches any source."""
    if key.startswith("any:"):
        key = key[4:]
    if ":" in key.split("/")[0]:
        return ident.get(key)
    for k, v in ident.items():
        if k.split(":", 1)[-1] == key:
            return v
    return None


def selects(selector: Mapping[str, Any], ident: Mapping[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if _label(ident, key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        have = _label(ident, expr["key"])
        values = set(expr.get("values") or [])
        ok = {
            "In": have is not None and have in values,
            "NotIn": have is None or have not in values,
            "Exists": have is not None,
            "DoesNotExist": have is None,
        }[expr["operator"]]
        if not ok:
            return False
    return True


_addr = cache(ipaddress.IPv4Address)


@cache
def _net(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr, strict=False)


def _in(ip: ipaddress.IPv4Address, cidr: str) -> bool:
    return ip in _net(cidr)


def l3_matches(rule: Mapping[str, Any], ip: str) -> bool:
    addr = _addr(ip)
    l3_keys = ("toCIDR", "toCIDRSet", "toEndpoints", "toEntities", "toFQDNs", "toServices",
               "toGroups", "toNodes")
    if not any(k in rule for k in l3_keys):
        return True  # L4-only (or empty) rule: every destination
    if any(_in(addr, c) for c in rule.get("toCIDR") or []):
        return True
    for s in rule.get("toCIDRSet") or []:
        if _in(addr, s["cidr"]) and not any(_in(addr, e) for e in s.get("except") or []):
            return True
    entities = set(rule.get("toEntities") or [])
    return bool(entities & {"all", "world", "world-ipv4"})


def l4_matches(rule: Mapping[str, Any], port: int) -> bool:
    port_rules = rule.get("toPorts")
    if not port_rules:
        return True
    for pr in port_rules:
        entries = pr.get("ports") or [{}]
        for e in entries:
            proto_ok = e.get("protocol", "ANY") in ("TCP", "ANY", "")
            p = e.get("port", "0")
            end = e.get("endPort")
            port_ok = p in ("0", "") or (
                int(p) <= port <= int(end) if end else int(p) == port
            )
            if proto_ok and port_ok:
                return True
    return False


def _specs(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    specs = list(policy.get("specs") or [])
    if "spec" in policy:
        specs.append(policy["spec"])
    return specs


def applicable_specs(policies: Iterable[Mapping[str, Any]], pod: Pod) -> list[Mapping[str, Any]]:
    ident = pod.identity()
    result = []
    for policy in policies:
        if policy["kind"] == "CiliumNetworkPolicy":
            if policy["metadata"]["namespace"] != pod.namespace:
                continue
        elif policy["kind"] != "CiliumClusterwideNetworkPolicy":
            raise AssertionError(f"not a Cilium policy: {policy['kind']}")
        for spec in _specs(policy):
            if "endpointSelector" in spec and selects(spec["endpointSelector"], ident):
                result.append(spec)
    return result


def may_reach(policies: Iterable[Mapping[str, Any]], pod: Pod, ip: str, port: int) -> bool:
    """Cilium's egress verdict for ``pod`` → external ``ip``:``port``/TCP."""
    return verdict(applicable_specs(policies, pod), ip, port)


def verdict(specs: list[Mapping[str, Any]], ip: str, port: int) -> bool:
    """The egress verdict given the policy specs that apply to the source pod."""
    default_deny = any(
        ("egress" in s or "egressDeny" in s)
        and (s.get("enableDefaultDeny") or {}).get("egress", True)
        for s in specs
    )
    for s in specs:
        for rule in s.get("egressDeny") or []:
            if l3_matches(rule, ip) and l4_matches(rule, port):
                return False
    if not default_deny:
        return True
    return any(
        l3_matches(rule, ip) and l4_matches(rule, port)
        for s in specs
        for rule in s.get("egress") or []
    )


# --------------------------------------------------------------------------- worlds


@dataclass
class Connection:
    org: str
    connection_id: str
    ips: list[str]
    ports: list[int]


@dataclass
class World:
    namespaces: list[str]
    connections: list[Connection]  # live at the end
    # extra destinations beyond the live endpoint IPs: unallocated private and public IPs,
    # and the IPs of deleted connections and of replaced endpoints (reachable by nobody)
    extra_ips: list[str]
    probe_ports: list[int]
    # what the activities do, in order: ("apply" | "delete", connection as of that step)
    ops: list[tuple[str, Connection]] = field(default_factory=list)

    @property
    def orgs(self) -> list[str]:
        return sorted({c.org for c in self.connections} | {c.org for _, c in self.ops})

    def policies(self) -> list[dict[str, Any]]:
        """The rendered policies of the live connections (no cluster involved)."""
        result = [render_baseline_policy(self.namespaces, LABEL_KEY)]
        for c in self.connections:
            for ns in self.namespaces:
                result.append(
                    render_connection_policy(
                        c.org, c.connection_id, c.ips, c.ports, namespace=ns, label_key=LABEL_KEY
                    )
                )
        return result

    def expected(self, org: str | None, ip: str, port: int) -> bool:
        """The promise: own endpoint IPs (on the connection's ports) and the internet."""
        if not is_private(ip):
            return True
        return any(
            c.org == org and ip in c.ips and (not c.ports or port in c.ports)
            for c in self.connections
        )


def violations(world: World, policies: list[dict[str, Any]] | None = None) -> list[str]:
    """Every (pod, destination) where the oracle's verdict breaks the promise."""
    policies = world.policies() if policies is None else policies
    destinations = [ip for c in world.connections for ip in c.ips] + world.extra_ips
    found = []
    pods: list[tuple[str | None, Pod]] = [
        (org, Pod(ns, {LABEL_KEY: org})) for org in world.orgs for ns in world.namespaces
    ]
    pods += [(None, Pod(ns, {"app": "task"})) for ns in world.namespaces]  # no org label
    for org, pod in pods:
        specs = applicable_specs(policies, pod)
        for ip in destinations:
            for port in world.probe_ports:
                got = verdict(specs, ip, port)
                if got != world.expected(org, ip, port):
                    found.append(f"{pod} -> {ip}:{port} allowed={got}")
    return found


# Org ids with '.', '_' and a long one (hashed policy names); connection ids from a small
# pool, so that two orgs use the same connection id most of the time.
_org_ids = st.sampled_from(["acme", "globex", "initech", "org-1", "a", "x.y_z",
                            "tenant.with_a-rather-long-organization-identifier"])
_connection_ids = st.sampled_from(["db", "api", "c1", "a-connection-id-of-forty-characters-long"])
_ports = st.integers(1, 65535)


# Strategies are built once: building them inside the composite costs more than drawing.
_private_ips = st.one_of([  # each endpoint range as likely as the others
    st.integers(1, net.num_addresses - 2).map(lambda offset, net=net: str(
        net.network_address + offset))
    for net in PRIVATE[:4]  # endpoint IPs: never link-local
])
_namespaces = st.sampled_from([["tasks"], ["batch"], ["batch", "tasks"]])
_org_sets = st.lists(_org_ids, min_size=2, max_size=3, unique=True)
_connection_id_sets = st.lists(_connection_ids, min_size=1, max_size=3, unique=True)
_port_lists = st.lists(_ports, max_size=2, unique=True)
_any_ipv4 = st.ip_addresses(v=4).map(str)
_network_plus_one = st.sampled_from([str(n.network_address + 1) for n in PRIVATE])


@cache
def _indexes(n: int, max_size: int, min_size: int = 0) -> st.SearchStrategy[list[int]]:
    """Distinct positions in a list of ``n`` (cached: no strategy is built per draw)."""
    return st.lists(st.integers(0, n - 1), min_size=min_size, max_size=max_size, unique=True)


def _unused(ip: str, used: set[str]) -> str:
    """``ip`` or the next free host address of its private range (ENI IPs are unique)."""
    addr = ipaddress.IPv4Address(ip)
    net = next(n for n in PRIVATE if addr in n)
    while str(addr) in used or addr in (net.network_address, net.broadcast_address):
        addr = addr + 1 if addr + 1 < net.broadcast_address else net.network_address + 1
    return str(addr)


def _endpoint_ips(draw: st.DrawFn, used: set[str]) -> list[str]:
    ips = []
    for _ in range(draw(st.integers(1, 2))):  # one ENI per AZ: one or two AZs
        ip = _unused(draw(_private_ips), used)
        used.add(ip)
        ips.append(ip)
    return ips


@st.composite
def worlds(draw: st.DrawFn) -> World:
    """Connections of several orgs (reusing connection ids across orgs on purpose) applied
    in random order; then some get new endpoint IPs and some are deleted."""
    namespaces = draw(_namespaces)
    orgs = draw(_org_sets)
    # Per connection id, the orgs that use it: usually more than one.
    pairs = [(orgs[i], conn) for conn in draw(_connection_id_sets)
             for i in draw(_indexes(len(orgs), len(orgs), min_size=1))][:3]
    used: set[str] = set()
    live = [Connection(org, conn, _endpoint_ips(draw, used), draw(_port_lists))
            for org, conn in pairs]
    ops: list[tuple[str, Connection]] = [("apply", copy.deepcopy(c)) for c in live]
    extra: list[str] = []
    for i in draw(_indexes(len(live), 1)):
        c = live[i]
        extra += c.ips  # the endpoint's IPs changed: the old ones must close
        c.ips = _endpoint_ips(draw, used)
        ops.append(("apply", copy.deepcopy(c)))
    for i in sorted(draw(_indexes(len(live), 1)), reverse=True):
        c = live.pop(i)
        extra += c.ips
        ops.append(("delete", c))
    extra += [draw(_private_ips) for _ in range(draw(st.integers(0, 2)))]
    extra.append(draw(_any_ipv4))  # anything: public, reserved, private
    if draw(st.booleans()):
        extra.append(draw(_network_plus_one))
    extra = [ip for ip in extra if not any(ip in c.ips for c in live)]
    probe = sorted({p for _, c in ops for p in c.ports} | {draw(_ports)})
    return World(namespaces, live, extra, probe, ops)


# --------------------------------------------------------------------------- the cluster

ALL_NAMESPACES = ["tasks", "batch"]
CNP_PLURAL, CCNP_PLURAL = "ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[SandboxKube, client.ApiClient]]:
    """One sandbox for the module (hypothesis runs many examples per test); each example
    starts from a cluster without connection policies."""
    kube = SandboxKube(["default", "kube-system", *ALL_NAMESPACES])
    kube.start()
    api_client = client.ApiClient(client.Configuration(host=kube.url))
    try:
        yield kube, api_client
    finally:
        api_client.close()
        kube.stop()


def stored_policies(kube: SandboxKube, api_client: client.ApiClient, world: World
                    ) -> list[dict[str, Any]]:
    """Run the world's operations through the real ``KubernetesActivities`` over HTTP and
    return what the cluster stored (keyed by name, as a cluster is)."""
    kube.clear(CNP_PLURAL)  # a cluster without connections; the baseline stays
    acts = KubernetesActivities(api_client, world.namespaces, LABEL_KEY)
    acts.apply_baseline()  # writes only when the world's namespaces differ from the last
    for op, c in world.ops:
        if op == "apply":
            acts.apply_policies(ApplyPoliciesInput(
                org_id=c.org, connection_id=c.connection_id, ips=c.ips, ports=c.ports))
        else:
            acts.delete_policies(DeletePoliciesInput(org_id=c.org, connection_id=c.connection_id))
    return kube.objects_of(CCNP_PLURAL) + kube.objects_of(CNP_PLURAL)


# --------------------------------------------------------------------------- the property


@pytest.mark.timeout(900 if THOROUGH else 120)
@settings(max_examples=ISOLATION_EXAMPLES)
@given(worlds())
def test_an_org_reaches_exactly_its_own_endpoints_and_the_internet(
    cluster: tuple[SandboxKube, client.ApiClient], world: World
) -> None:
    """The oracle judges what the cluster stored after the activities ran."""
    stored = stored_policies(*cluster, world)
    # One policy per live connection and namespace, none left by a deleted one.
    assert len(stored) == 1 + len(world.connections) * len(world.namespaces)
    assert violations(world, stored) == []


# --------------------------------------------------------------------------- fixed cases

WORLD = World(
    namespaces=["tasks"],
    connections=[
        Connection("acme", "db", ["10.0.1.10", "10.0.2.10"], [5432]),
        Connection("acme", "api", ["10.0.1.11"], []),
        Connection("globex", "db", ["172.16.0.20"], []),
    ],
    extra_ips=["10.9.9.9", "192.168.1.1", "100.64.0.5", "169.254.169.254", "8.8.8.8"],
    probe_ports=[443, 5432],
)


def test_fixed_world_verdicts() -> None:
    policies = WORLD.policies()
    acme = Pod("tasks", {LABEL_KEY: "acme"})
    globex = Pod("tasks", {LABEL_KEY: "globex"})
    assert may_reach(policies, acme, "10.0.1.10", 5432)
    assert not may_reach(policies, acme, "10.0.1.10", 443)  # the connection's ports only
    assert may_reach(policies, acme, "10.0.1.11", 443)
    assert not may_reach(policies, acme, "172.16.0.20", 443)  # globex's endpoint
    assert may_reach(policies, globex, "172.16.0.20", 443)
    assert not may_reach(policies, globex, "10.0.1.11", 443)  # acme's endpoint
    assert may_reach(policies, acme, "8.8.8.8", 443)
    assert not may_reach(policies, acme, "169.254.169.254", 80)  # instance metadata
    assert violations(WORLD) == []


def test_a_task_pod_without_the_org_label_reaches_no_private_ip() -> None:
    policies = WORLD.policies()
    unlabelled = Pod("tasks", {"app": "task"})
    for ip in [ip for c in WORLD.connections for ip in c.ips] + WORLD.extra_ips:
        assert may_reach(policies, unlabelled, ip, 443) == (not is_private(ip)), ip
    # A pod labelled with an org that has no connection is no different.
    stranger = Pod("tasks", {LABEL_KEY: "nobody"})
    assert not any(may_reach(policies, stranger, ip, 5432) for c in WORLD.connections
                   for ip in c.ips)


def test_policies_are_scoped_to_their_namespace() -> None:
    policies = World(["tasks", "batch"], WORLD.connections, [], [443]).policies()
    only_tasks = [p for p in policies if p["metadata"].get("namespace") != "batch"]
    acme_in_batch = Pod("batch", {LABEL_KEY: "acme"})
    assert may_reach(policies, acme_in_batch, "10.0.1.11", 443)
    assert not may_reach(only_tasks, acme_in_batch, "10.0.1.11", 443)


def test_pods_outside_the_task_namespaces_are_not_touched() -> None:
    policies = WORLD.policies()
    assert may_reach(policies, Pod("monitoring", {"app": "prom"}), "10.0.1.10", 9090)


# --------------------------------------------------------------------------- the oracle bites


def _broken(mutate: Any) -> list[dict[str, Any]]:
    policies = copy.deepcopy(WORLD.policies())
    mutate(policies)
    return policies


def _connection_policy(policies: list[dict[str, Any]], org: str, conn: str) -> dict[str, Any]:
    (p,) = [
        p for p in policies
        if p["kind"] == "CiliumNetworkPolicy"
        and p["metadata"]["labels"]["privnet.dev/org-id"] == org
        and p["metadata"]["labels"]["privnet.dev/connection-id"] == conn
    ]
    return p


def _baseline(policies: list[dict[str, Any]]) -> dict[str, Any]:
    (p,) = [p for p in policies if p["kind"] == "CiliumClusterwideNetworkPolicy"]
    return p


BROKEN = {
    "a /8 instead of /32s": lambda ps: _connection_policy(ps, "acme", "api")["spec"]["egress"][0]
    .update(toCIDR=["10.0.0.0/8"]),
    "selector without the org label": lambda ps: _connection_policy(ps, "globex", "db")["spec"]
    .update(endpointSelector={}),
    "selector on another label": lambda ps: _connection_policy(ps, "globex", "db")["spec"]
    .update(endpointSelector={"matchLabels": {"app": "task"}}),
    "rule without L3 (ports only)": lambda ps: _connection_policy(ps, "acme", "db")["spec"]
    ["egress"][0].pop("toCIDR"),
    "baseline without except": lambda ps: _baseline(ps)["spec"]["egress"][0]["toCIDRSet"][0]
    .pop("except"),
    "baseline missing 100.64.0.0/10": lambda ps: _baseline(ps)["spec"]["egress"][0]["toCIDRSet"]
    [0]["except"].remove("100.64.0.0/10"),
    "baseline selecting by org label": lambda ps: _baseline(ps)["spec"].update(
        endpointSelector={"matchExpressions": [{"key": LABEL_KEY, "operator": "Exists"}]}
    ),
    "no baseline": lambda ps: ps.remove(_baseline(ps)),
    "baseline as egressDeny": lambda ps: _baseline(ps)["spec"].update(
        egress=[{"toCIDR": ["0.0.0.0/0"]}],
        egressDeny=[{"toCIDR": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]}],
    ),
    "policy in the wrong namespace": lambda ps: _connection_policy(ps, "acme", "api")["metadata"]
    .update(namespace="other"),
}


@pytest.mark.parametrize("mutate", list(BROKEN.values()), ids=list(BROKEN))
def test_the_oracle_catches_a_broken_policy_set(mutate: Any) -> None:
    assert violations(WORLD) == []
    assert violations(WORLD, _broken(mutate)) != []


def test_deny_rules_beat_allows_in_the_oracle() -> None:
    """Why the baseline must not use egressDeny: no per-org /32 could open."""
    policies = _broken(BROKEN["baseline as egressDeny"])
    assert not may_reach(policies, Pod("tasks", {LABEL_KEY: "acme"}), "10.0.1.11", 443)


@pytest.mark.timeout(900 if THOROUGH else 120)
@given(worlds(), st.data())
def test_the_property_fails_when_one_policy_is_widened(world: World, data: st.DataObject) -> None:
    """Widen one rendered /32 to its /16 and put another private destination in that /16:
    the isolation check reports a violation every time."""
    assume(world.connections)
    policies = world.policies()
    victim = data.draw(st.sampled_from([p for p in policies if p["kind"] == "CiliumNetworkPolicy"]))
    host = victim["spec"]["egress"][0]["toCIDR"][0].split("/")[0]
    wide = ipaddress.IPv4Network(f"{host}/16", strict=False)
    victim["spec"]["egress"][0]["toCIDR"].append(str(wide))
    org = victim["metadata"]["labels"]["privnet.dev/org-id"]
    own = {ip for c in world.connections if c.org == org for ip in c.ips}
    neighbour = next(
        str(a) for a in (wide.network_address + k for k in range(1, 300)) if str(a) not in own
    )
    world.extra_ips.append(neighbour)
    assert violations(world, policies) != []


# --------------------------------------------------------------------------- issue 11


def _ops(*steps: tuple[str, Connection]) -> list[tuple[str, Connection]]:
    return list(steps)


ACME_DB = Connection("acme", "db", ["10.0.1.10"], [5432])
GLOBEX_DB = Connection("globex", "db", ["172.16.0.20"], [])


def test_two_orgs_with_the_same_connection_id_keep_their_own_policies(
    cluster: tuple[SandboxKube, client.ApiClient],
) -> None:
    """Regression (issue 11): acme/db and globex/db are two objects with their own
    selectors and IPs; deleting globex/db leaves acme/db byte-for-byte as it was."""
    kube, api_client = cluster
    world = World(["tasks"], [ACME_DB, GLOBEX_DB], [], [5432],
                  _ops(("apply", ACME_DB), ("apply", GLOBEX_DB)))
    stored = stored_policies(kube, api_client, world)
    assert violations(world, stored) == []
    acme = kube.get_object(CNP_PLURAL, "tasks", policy_name("acme", "db"))
    globex = kube.get_object(CNP_PLURAL, "tasks", policy_name("globex", "db"))
    assert acme is not None and globex is not None
    assert acme["metadata"]["name"] != globex["metadata"]["name"]
    assert acme["spec"]["endpointSelector"] == {"matchLabels": {LABEL_KEY: "acme"}}
    assert globex["spec"]["endpointSelector"] == {"matchLabels": {LABEL_KEY: "globex"}}
    assert acme["spec"]["egress"][0]["toCIDR"] == ["10.0.1.10/32"]
    assert globex["spec"]["egress"][0]["toCIDR"] == ["172.16.0.20/32"]

    acts = KubernetesActivities(api_client, ["tasks"], LABEL_KEY)
    acts.delete_policies(DeletePoliciesInput(org_id="globex", connection_id="db"))
    assert kube.get_object(CNP_PLURAL, "tasks", policy_name("acme", "db")) == acme
    assert kube.get_object(CNP_PLURAL, "tasks", policy_name("globex", "db")) is None
    after = World(["tasks"], [ACME_DB], GLOBEX_DB.ips, [5432])
    assert violations(after, [o for (p, _, _), o in kube.objects.items()
                              if p in (CNP_PLURAL, CCNP_PLURAL)]) == []

    # A hand-made object squatting globex/db's name: refused, and left as it was.
    squatter = render_connection_policy("acme", "db", ["10.0.1.10"], namespace="tasks")
    squatter["metadata"]["name"] = policy_name("globex", "db")
    squatter = kube.put_object(CNP_PLURAL, squatter)
    with pytest.raises(ApplicationError) as info:
        acts.apply_policies(ApplyPoliciesInput(org_id="globex", connection_id="db",
                                               ips=GLOBEX_DB.ips))
    assert info.value.type == "NAME_CONFLICT" and info.value.non_retryable
    assert kube.get_object(CNP_PLURAL, "tasks", policy_name("globex", "db")) == squatter


def test_the_stored_oracle_catches_one_name_for_two_orgs(
    cluster: tuple[SandboxKube, client.ApiClient],
) -> None:
    """The bug of issue 11, reproduced in the cluster: both orgs' policies under one name
    (the last write wins). The oracle, reading what is stored, reports acme's lost path."""
    kube, api_client = cluster
    world = World(["tasks"], [ACME_DB, GLOBEX_DB], [], [5432],
                  _ops(("apply", ACME_DB), ("apply", GLOBEX_DB)))
    stored_policies(kube, api_client, world)
    for policy in kube.policies():
        kube.remove_object(CNP_PLURAL, "tasks", policy["metadata"]["name"])
    for c in (ACME_DB, GLOBEX_DB):  # what a connection-id-only name did
        body = render_connection_policy(c.org, c.connection_id, c.ips, c.ports,
                                        namespace="tasks", label_key=LABEL_KEY)
        body["metadata"]["name"] = f"privnet-{c.connection_id}"
        kube.put_object(CNP_PLURAL, body)
    stored = [o for (p, _, _), o in kube.objects.items() if p in (CNP_PLURAL, CCNP_PLURAL)]
    found = violations(world, stored)
    assert any("acme" in v and "10.0.1.10" in v for v in found), found
