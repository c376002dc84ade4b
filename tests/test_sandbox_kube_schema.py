"""The vendored CRDs, the sandbox's schema validation against an independent validator
(jsonschema over the upstream CRD), and the OpenAPI v3 documents kubectl reads."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activities.policy import render_baseline_policy, render_connection_policy
from sandbox.kube import SandboxKube, schema
from sandbox.kube.resources import CCNP, CNP

pytest_plugins = ["tests.kube_fixtures"]

SHARED_CILIUM = Path(__file__).resolve().parents[2] / "shared" / "cilium"
VENDORED = Path(schema.__file__).parent / "crds"
CrdErrors = Callable[[str, dict[str, Any]], list[str]]
Http = Callable[..., Any]


@pytest.mark.parametrize("plural", [CNP.plural, CCNP.plural])
def test_vendored_crds_match_the_upstream_copy(plural: str) -> None:
    vendored = gzip.decompress((VENDORED / f"{plural}.yaml.gz").read_bytes())
    source = (VENDORED / "SOURCE.md").read_text()
    assert hashlib.sha256(vendored).hexdigest() in source  # SOURCE.md names this content
    assert "Apache" in source
    upstream = SHARED_CILIUM / f"{plural}.yaml"
    if not upstream.is_file():
        pytest.skip(f"{upstream} not present: nothing to compare the vendored copy with")
    assert vendored == upstream.read_bytes()


# --------------------------------------------------------------------------- validation

_scalars = st.one_of(st.text(max_size=12), st.integers(-5, 70000), st.booleans(),
                     st.sampled_from(["10.0.0.1/32", "10.0.0.1", "300.1.1.1/8", "TCP", "HTTP",
                                      "443", "0", "a b", "In", "Exists", ""]))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(
        ["toCIDR", "toPorts", "ports", "port", "protocol", "key", "operator", "values",
         "matchLabels", "cidr", "except", "x"]), inner, max_size=3)), max_leaves=6)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


@st.composite
def mutated_policies(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A privnet policy with a few fields replaced, removed or added at random."""
    if draw(st.booleans()):
        kind = CNP.plural
        body = render_connection_policy("acme", "db", ["10.0.1.5", "10.0.2.6"],
                                        draw(st.lists(st.integers(1, 65535), max_size=3)),
                                        namespace="tasks")
    else:
        kind, body = CCNP.plural, render_baseline_policy(["tasks"])
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(body["spec"]) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = body["spec"]
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "remove":
            del parent[path[-1]]
        elif action == "replace" or not isinstance(parent[path[-1]], dict):
            parent[path[-1]] = draw(_values)
        else:
            parent[path[-1]][draw(st.sampled_from(["toCIDR", "toPorts", "nodeSelector",
                                                   "egressDeny", "x"]))] = draw(_values)
    return kind, body


@given(mutated_policies())
def test_schema_validation_agrees_with_jsonschema(
    crd_errors: CrdErrors, case: tuple[str, dict[str, Any]]
) -> None:
    """After pruning (which a real server does first), the sandbox refuses exactly what an
    independent JSON-schema validator of the upstream CRD refuses."""
    plural, body = case
    rt = CNP if plural == CNP.plural else CCNP
    pruned = copy.deepcopy(body)
    schema.prune(schema.schema_for(rt), pruned)
    ours = schema.validate(schema.schema_for(rt), pruned)
    theirs = crd_errors(plural, pruned)
    assert bool(ours) == bool(theirs), (ours, theirs, pruned)


def test_pruning_drops_only_undeclared_fields() -> None:
    body = render_connection_policy("acme", "db", ["10.0.1.5"], [443], namespace="tasks")
    clean = copy.deepcopy(body)
    body["spec"]["egress"][0]["toPorts"][0]["ports"][0]["bogus"] = 1
    body["spec"]["endpointSelector"]["matchLabels"]["x"] = "y"  # a map: every key is declared
    body["spec"]["extra"] = {"a": 1}
    body["spec"]["description"] = None  # null for a non-nullable field: dropped
    body["metadata"]["surprise"] = True
    dropped = schema.prune(schema.schema_for(CNP), body)
    assert sorted(dropped) == [".metadata.surprise", ".spec.egress[0].toPorts[0].ports[0].bogus",
                               ".spec.extra"]
    del clean["spec"]["description"]
    clean["spec"]["endpointSelector"]["matchLabels"]["x"] = "y"
    assert body == clean


# --------------------------------------------------------------------------- OpenAPI


def test_openapi_v3_documents(sandbox_kube: SandboxKube, kube_http: Http) -> None:
    index = kube_http("GET", "/openapi/v3").body
    assert set(index["paths"]) == {"api/v1", "apis/cilium.io/v2"}
    url = index["paths"]["apis/cilium.io/v2"]["serverRelativeURL"]
    doc = kube_http("GET", url)
    assert doc.status == 200 and doc.headers.get("Cache-Control") == "public, immutable"
    body = doc.body
    raw = json.dumps(body).encode()
    assert url.endswith(hashlib.sha512(raw).hexdigest().upper())
    schemas = body["components"]["schemas"]
    cnp = schemas["io.cilium.v2.CiliumNetworkPolicy"]
    assert cnp["x-kubernetes-group-version-kind"] == [
        {"group": "cilium.io", "version": "v2", "kind": "CiliumNetworkPolicy"}]
    assert cnp["properties"]["spec"] == schema.schema_for(CNP)["properties"]["spec"]
    assert cnp["properties"]["metadata"]["allOf"] == [
        {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}]
    item = body["paths"]["/apis/cilium.io/v2/namespaces/{namespace}/ciliumnetworkpolicies/{name}"]
    patch = item["patch"]
    assert patch["x-kubernetes-group-version-kind"]["kind"] == "CiliumNetworkPolicy"
    assert {p["name"] for p in patch["parameters"]} >= {"fieldValidation", "fieldManager",
                                                        "force", "dryRun"}
    assert set(patch["requestBody"]["content"]) == {
        "application/apply-patch+yaml", "application/json-patch+json",
        "application/merge-patch+json"}  # no strategic merge for custom resources
    ccnp = body["paths"]["/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies/{name}"]
    assert ccnp["get"]["x-kubernetes-action"] == "get"
    assert kube_http("GET", "/openapi/v2").status == 404
