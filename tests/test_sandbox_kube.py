"""Sandbox Kubernetes behaves like the real API server, row by row of the fidelity table in
sandbox/kube/__init__.py: driven over HTTP by the official Python client and by raw
requests (status codes, headers, Status bodies as a client sees them)."""

from __future__ import annotations

import http.client
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from activities.policy import render_baseline_policy, render_connection_policy
from sandbox.kube import SandboxKube

pytest_plugins = ["tests.kube_fixtures"]

G, V, CNP, CCNP = "cilium.io", "v2", "ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"
REPO_ROOT = Path(__file__).resolve().parents[1]
BASE = f"/apis/{G}/{V}/namespaces/tasks/{CNP}"
CrdErrors = Callable[[str, dict[str, Any]], list[str]]
Http = Callable[..., Any]


def _policy(name: str = "p1", org: str = "acme", ips: tuple[str, ...] = ("10.0.1.23",),
            ports: tuple[int, ...] = ()) -> dict[str, Any]:
    body = render_connection_policy(org, "c1", list(ips), list(ports), namespace="tasks")
    body["metadata"]["name"] = name
    return body


def _status(e: ApiException) -> dict[str, Any]:
    return dict(json.loads(e.body or "{}"))


# --------------------------------------------------------------------------- discovery


def test_discovery_for_the_official_client(kube_api_client: client.ApiClient) -> None:
    groups = client.ApisApi(kube_api_client).get_api_versions()
    assert [g.name for g in groups.groups] == ["cilium.io"]
    resources = client.CustomObjectsApi(kube_api_client).get_api_resources(G, V)
    assert {(r.name, r.namespaced, tuple(r.short_names)) for r in resources.resources} == {
        (CNP, True, ("cnp", "ciliumnp")), (CCNP, False, ("ccnp",))
    }
    items = client.CoreV1Api(kube_api_client).list_namespace().items
    names = [n.metadata.name for n in items if n.metadata]
    assert {"tasks", "batch", "kube-system"} <= set(names)


# --------------------------------------------------------------------------- CRUD


def test_crud_status_codes_and_server_fields(sandbox_kube: SandboxKube, kube_http: Http) -> None:
    body = _policy()
    body["status"] = {"conditions": [{"type": "Valid", "status": "True"}]}
    created = kube_http("POST", BASE, body)
    assert created.status == 201
    meta = created.body["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    assert meta["generation"] == 1 and meta["namespace"] == "tasks"
    assert "status" not in created.body  # the status subresource owns it
    again = kube_http("POST", BASE, body)
    assert (again.status, again.body["reason"]) == (409, "AlreadyExists")
    assert again.body["details"] == {"name": "p1", "group": G, "kind": CNP}

    generated = kube_http("POST", BASE, {**_policy(), "metadata": {"generateName": "gen-"}})
    assert generated.status == 201 and generated.body["metadata"]["name"].startswith("gen-")

    elsewhere = kube_http("POST", f"/apis/{G}/{V}/namespaces/other/{CNP}", _policy())
    assert elsewhere.status == 400 and "does not match the namespace" in elsewhere.body[
        "message"]
    unnamespaced = _policy()
    del unnamespaced["metadata"]["namespace"]
    missing_ns = kube_http("POST", f"/apis/{G}/{V}/namespaces/nowhere/{CNP}", unnamespaced)
    assert (missing_ns.status, missing_ns.body["message"]) == (
        404, 'namespaces "nowhere" not found')
    got = kube_http("GET", f"{BASE}/p1")
    assert got.status == 200 and got.body == created.body
    absent = kube_http("GET", f"{BASE}/nope")
    assert (absent.status, absent.body["reason"], absent.body["message"]) == (
        404, "NotFound", f'{CNP}.{G} "nope" not found')
    # Custom resources are never created by an update; the URL names the object.
    assert kube_http("PUT", f"{BASE}/nope", _policy("nope")).status == 404
    mismatch = kube_http("PUT", f"{BASE}/p1", _policy("p2"))
    assert mismatch.status == 400 and "does not match the name on the URL" in mismatch.body[
        "message"]
    gone = kube_http("DELETE", f"{BASE}/p1")
    assert gone.status == 200 and gone.body["status"] == "Success"
    assert gone.body["details"]["uid"] == meta["uid"]
    assert kube_http("DELETE", f"{BASE}/p1").status == 404
    # A cluster-scoped kind is not served under a namespace.
    assert kube_http("GET", f"/apis/{G}/{V}/namespaces/tasks/{CCNP}").status == 404


def test_optimistic_concurrency_and_no_op_writes(
    sandbox_kube: SandboxKube, custom_api: Any
) -> None:
    created = custom_api.create_namespaced_custom_object(G, V, "tasks", CNP, _policy())
    rv = created["metadata"]["resourceVersion"]
    same = custom_api.replace_namespaced_custom_object(G, V, "tasks", CNP, "p1", created)
    assert same["metadata"]["resourceVersion"] == rv  # nothing changed, nothing written
    relabel = custom_api.patch_namespaced_custom_object(
        G, V, "tasks", CNP, "p1", {"metadata": {"labels": {"team": "net"}}})
    assert relabel["metadata"]["generation"] == 1  # metadata only: same generation
    updated = json.loads(json.dumps(relabel))
    updated["spec"]["egress"][0]["toCIDR"] = ["10.0.1.24/32"]
    ok = custom_api.replace_namespaced_custom_object(G, V, "tasks", CNP, "p1", updated)
    assert int(ok["metadata"]["resourceVersion"]) > int(relabel["metadata"]["resourceVersion"])
    assert ok["metadata"]["generation"] == 2 and ok["metadata"]["uid"] == created["metadata"][
        "uid"]

    stale = json.loads(json.dumps(updated))  # still carries the older resourceVersion
    stale["spec"]["egress"][0]["toCIDR"] = ["10.0.1.25/32"]
    with pytest.raises(ApiException) as info:
        custom_api.replace_namespaced_custom_object(G, V, "tasks", CNP, "p1", stale)
    status = _status(info.value)
    assert (info.value.status, status["reason"]) == (409, "Conflict")
    assert status["message"] == (
        f'Operation cannot be fulfilled on {CNP}.{G} "p1": the object has been modified; '
        "please apply your changes to the latest version and try again")
    with pytest.raises(ApiException) as info:
        custom_api.patch_namespaced_custom_object(
            G, V, "tasks", CNP, "p1", {"metadata": {"resourceVersion": rv}})
    assert info.value.status == 409
    # Without a resourceVersion a write is unconditional.
    del stale["metadata"]["resourceVersion"]
    custom_api.replace_namespaced_custom_object(G, V, "tasks", CNP, "p1", stale)
    assert sandbox_kube.get_object(CNP, "tasks", "p1")["spec"]["egress"][0]["toCIDR"] == [
        "10.0.1.25/32"]


def test_delete_preconditions(sandbox_kube: SandboxKube, custom_api: Any) -> None:
    created = custom_api.create_namespaced_custom_object(G, V, "tasks", CNP, _policy())
    meta = created["metadata"]
    for pre, text in [
        (client.V1Preconditions(uid="0000-other"),
         f"Precondition failed: UID in precondition: 0000-other, UID in object meta: "
         f"{meta['uid']}"),
        (client.V1Preconditions(resource_version="1"),
         "Precondition failed: ResourceVersion in precondition: 1, ResourceVersion in object "
         f"meta: {meta['resourceVersion']}"),
    ]:
        with pytest.raises(ApiException) as info:
            custom_api.delete_namespaced_custom_object(
                G, V, "tasks", CNP, "p1", body=client.V1DeleteOptions(preconditions=pre))
        status = _status(info.value)
        assert (info.value.status, status["kind"], status["reason"]) == (409, "Status",
                                                                         "Conflict")
        assert status["message"] == (
            f'Operation cannot be fulfilled on {CNP}.{G} "p1": {text}')
        assert sandbox_kube.get_object(CNP, "tasks", "p1") == created  # nothing deleted
    custom_api.delete_namespaced_custom_object(
        G, V, "tasks", CNP, "p1", body=client.V1DeleteOptions(preconditions=client.V1Preconditions(
            uid=meta["uid"], resource_version=meta["resourceVersion"])))
    assert sandbox_kube.get_object(CNP, "tasks", "p1") is None


def test_patch_formats(kube_http: Http) -> None:
    kube_http("POST", BASE, _policy())
    merged = kube_http("PATCH", f"{BASE}/p1", {"spec": {"description": "merged"}},
                       "application/merge-patch+json")
    assert merged.status == 200 and merged.body["spec"]["description"] == "merged"
    patched = kube_http("PATCH", f"{BASE}/p1", [
        {"op": "test", "path": "/spec/description", "value": "merged"},
        {"op": "replace", "path": "/spec/egress/0/toCIDR/0", "value": "10.0.1.99/32"},
        {"op": "add", "path": "/metadata/labels/x", "value": "y"},
        {"op": "remove", "path": "/spec/description"},
    ], "application/json-patch+json")
    assert patched.status == 200
    assert patched.body["spec"]["egress"][0]["toCIDR"] == ["10.0.1.99/32"]
    assert patched.body["metadata"]["labels"]["x"] == "y"
    assert "description" not in patched.body["spec"]
    failed = kube_http("PATCH", f"{BASE}/p1", [{"op": "test", "path": "/spec/x", "value": 1}],
                       "application/json-patch+json")
    assert failed.status == 422
    strategic = kube_http("PATCH", f"{BASE}/p1", {"spec": {}},
                          "application/strategic-merge-patch+json")
    assert strategic.status == 415 and strategic.body["reason"] == "UnsupportedMediaType"


# --------------------------------------------------------------------------- ownership


def _managers(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["manager"], e["operation"]): e["fieldsV1"]
            for e in obj["metadata"].get("managedFields", [])}


def test_managed_fields_follow_updates(custom_api: Any) -> None:
    created = custom_api.create_namespaced_custom_object(
        G, V, "tasks", CNP, _policy(), field_manager="alice")
    alice = _managers(created)[("alice", "Update")]
    assert alice["f:spec"]["f:egress"] == {} and alice["f:spec"]["f:endpointSelector"] == {}
    assert alice["f:metadata"]["f:labels"]["f:privnet.dev/org-id"] == {}
    entry = created["metadata"]["managedFields"][0]
    assert entry["apiVersion"] == f"{G}/{V}" and entry["fieldsType"] == "FieldsV1"
    changed = json.loads(json.dumps(created))
    changed["spec"]["egress"] = [{"toCIDR": ["10.0.2.2/32"]}]
    after = custom_api.replace_namespaced_custom_object(
        G, V, "tasks", CNP, "p1", changed, field_manager="bob")
    owners = _managers(after)
    assert owners[("bob", "Update")] == {"f:spec": {"f:egress": {}}}
    assert "f:egress" not in owners[("alice", "Update")]["f:spec"]
    # Without ?fieldManager= the manager is the User-Agent's product name.
    custom_api.patch_namespaced_custom_object(G, V, "tasks", CNP, "p1",
                                              {"spec": {"description": "x"}})
    assert ("OpenAPI-Generator", "Update") in _managers(
        custom_api.get_namespaced_custom_object(G, V, "tasks", CNP, "p1"))


def _apply(kube_http: Http, config: dict[str, Any], manager: str | None, force: bool = False
           ) -> Any:
    query = "&".join(q for q in (f"fieldManager={manager}" if manager else "",
                                 "force=true" if force else "") if q)
    return kube_http("PATCH", f"{BASE}/{config['metadata']['name']}?{query}",
                     yaml.safe_dump(config), "application/apply-patch+yaml")


def test_server_side_apply_semantics(sandbox_kube: SandboxKube, kube_http: Http) -> None:
    config = _policy()
    config["metadata"]["labels"]["team"] = "net"
    required = _apply(kube_http, config, None)
    assert required.status == 422 and "fieldManager: Required value" in required.body["message"]

    first = _apply(kube_http, config, "ops")
    assert first.status == 201  # apply creates
    rv = first.body["metadata"]["resourceVersion"]
    again = _apply(kube_http, config, "ops")
    assert again.status == 200 and again.body["metadata"]["resourceVersion"] == rv  # no-op
    assert again.body == first.body

    # Another manager: the same values are shared, a different value is a conflict.
    rival = _policy()
    rival["spec"]["description"] = "rival's words"
    conflict = _apply(kube_http, rival, "rival")
    assert conflict.status == 409 and conflict.body["reason"] == "Conflict"
    assert conflict.body["message"] == (
        'Apply failed with 1 conflict: conflict with "ops": .spec.description')
    assert conflict.body["details"]["causes"] == [{
        "reason": "FieldManagerConflict", "message": 'conflict with "ops"',
        "field": ".spec.description"}]
    assert sandbox_kube.get_object(CNP, "tasks", "p1")["metadata"]["resourceVersion"] == rv
    forced = _apply(kube_http, rival, "rival", force=True)
    assert forced.status == 200 and forced.body["spec"]["description"] == "rival's words"
    owners = _managers(forced.body)
    assert owners[("rival", "Apply")]["f:spec"]["f:description"] == {}
    assert "f:description" not in owners[("ops", "Apply")]["f:spec"]
    assert owners[("rival", "Apply")]["f:spec"]["f:egress"] == {}  # shared with ops

    # ops re-applies its old description: rival owns it now, so that is a conflict.
    assert _apply(kube_http, config, "ops").status == 409
    # ops drops the label it alone set (and the fields it lost or shares): the server
    # removes the label; the shared egress stays.
    config["metadata"]["labels"].pop("team")
    del config["spec"]["egress"], config["spec"]["description"]
    dropped = _apply(kube_http, config, "ops")
    assert dropped.status == 200
    assert "team" not in dropped.body["metadata"]["labels"]
    assert dropped.body["spec"]["egress"] == rival["spec"]["egress"]

    # An Update manager's fields conflict too, and the message names when it wrote.
    kube_http("PATCH", f"{BASE}/p1?fieldManager=editor", {"spec": {"description": "edited"}},
              "application/merge-patch+json")
    clash = _apply(kube_http, rival, "rival")
    assert clash.status == 409
    assert clash.body["message"].startswith(
        'Apply failed with 1 conflict: conflict with "editor" using cilium.io/v2 at ')


# --------------------------------------------------------------------------- bodies


def test_unknown_fields_are_pruned_or_refused(sandbox_kube: SandboxKube, kube_http: Http
                                              ) -> None:
    body = _policy()
    body["spec"]["bogus"] = 1
    body["spec"]["egress"][0]["toNowhere"] = ["x"]
    body["metadata"]["color"] = "blue"
    strict = kube_http("POST", f"{BASE}?fieldValidation=Strict", body)
    assert strict.status == 400 and strict.body["message"].startswith("strict decoding error")
    assert 'unknown field "spec.bogus"' in strict.body["message"]
    assert 'unknown field "spec.egress[0].toNowhere"' in strict.body["message"]
    assert sandbox_kube.policies() == []
    warned = kube_http("POST", BASE, body)  # Warn is the default
    assert warned.status == 201
    assert 'unknown field \\"spec.bogus\\"' in warned.headers["Warning"]
    stored = sandbox_kube.get_object(CNP, "tasks", "p1")
    assert "bogus" not in stored["spec"] and "toNowhere" not in stored["spec"]["egress"][0]
    assert "color" not in stored["metadata"]
    ignored = kube_http("PUT", f"{BASE}/p1?fieldValidation=Ignore", {**body, "metadata": {
        **body["metadata"], "labels": {"a": "b"}}})
    assert ignored.status == 200 and "Warning" not in ignored.headers
    assert "bogus" not in ignored.body["spec"]


def test_crd_invalid_bodies_are_422(
    sandbox_kube: SandboxKube, custom_api: Any, crd_errors: CrdErrors
) -> None:
    good = _policy(ports=(443,))
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
        lambda b: b["spec"].update(nodeSelector={}),  # oneOf: both selectors
        lambda b: b["spec"].pop("egress"),  # anyOf: no rule section
    ):
        body = json.loads(json.dumps(good))
        mutate(body)
        bad_bodies.append(body)
    for body in bad_bodies:
        assert crd_errors(CNP, body) != [], body  # the real CRD refuses it too
        with pytest.raises(ApiException) as info:
            custom_api.create_namespaced_custom_object(G, V, "tasks", CNP, body)
        status = _status(info.value)
        assert info.value.status == 422 and status["reason"] == "Invalid", body
        assert status["message"].startswith('CiliumNetworkPolicy.cilium.io "p1" is invalid: ')
        assert status["details"]["causes"]
    for bad_name in ("Bad_Name", "-x"):
        with pytest.raises(ApiException) as info:
            custom_api.create_namespaced_custom_object(
                G, V, "tasks", CNP, {**good, "metadata": {"name": bad_name}})
        assert info.value.status == 422 and "RFC 1123 subdomain" in _status(info.value)["message"]
    assert sandbox_kube.policies() == []
    # ... an update to an invalid body is refused as well, leaving the object intact.
    custom_api.create_namespaced_custom_object(G, V, "tasks", CNP, good)
    with pytest.raises(ApiException) as info:
        custom_api.patch_namespaced_custom_object(
            G, V, "tasks", CNP, "p1", {"spec": {"egress": [{"toCIDR": ["x"]}]}})
    assert info.value.status == 422
    assert sandbox_kube.get_object(CNP, "tasks", "p1")["spec"] == good["spec"]
    # What the CRD accepts is accepted (the baseline, cluster scoped).
    baseline = render_baseline_policy(["tasks"])
    assert crd_errors(CCNP, baseline) == []
    assert custom_api.create_cluster_custom_object(G, V, CCNP, baseline)["metadata"][
        "name"] == "privnet-baseline"


def test_label_and_field_selectors(custom_api: Any) -> None:
    for name, org, tier in [("a", "acme", "db"), ("b", "acme", None), ("c", "globex", "db")]:
        body = _policy(name, org)
        if tier:
            body["metadata"]["labels"]["tier"] = tier
        custom_api.create_namespaced_custom_object(G, V, "tasks", CNP, body)

    def names(labels: str = "", fields: str = "") -> list[str]:
        items = custom_api.list_namespaced_custom_object(
            G, V, "tasks", CNP, label_selector=labels, field_selector=fields)["items"]
        return [i["metadata"]["name"] for i in items]

    assert names("privnet.dev/org-id=acme") == ["a", "b"]
    assert names("privnet.dev/org-id==globex") == ["c"]
    assert names("tier!=db") == ["b"]  # != also matches objects without the label
    assert names("privnet.dev/org-id in (acme,globex),tier") == ["a", "c"]
    assert names("privnet.dev/org-id notin (acme)") == ["c"]
    assert names("!tier") == ["b"]
    assert names(fields="metadata.name=b") == ["b"]
    assert names("tier", "metadata.name!=a") == ["c"]
    for bad_labels, bad_fields in [("tier in (db", ""), ("", "spec.description=x")]:
        with pytest.raises(ApiException) as info:
            names(bad_labels, bad_fields)
        assert info.value.status == 400
    every = custom_api.list_cluster_custom_object(G, V, CNP, label_selector="tier=db")
    assert [i["metadata"]["name"] for i in every["items"]] == ["a", "c"]


def test_dry_run_writes_nothing(sandbox_kube: SandboxKube, kube_http: Http) -> None:
    made = kube_http("POST", f"{BASE}?dryRun=All", _policy())
    assert made.status == 201 and made.body["metadata"]["name"] == "p1"
    assert sandbox_kube.policies() == []
    real = kube_http("POST", BASE, _policy()).body
    changed = _policy(ips=("10.0.7.7",))
    assert kube_http("PUT", f"{BASE}/p1?dryRun=All", changed).body["spec"] == changed["spec"]
    assert sandbox_kube.get_object(CNP, "tasks", "p1") == real
    applied = kube_http("PATCH", f"{BASE}/p2?fieldManager=x&dryRun=All",
                        yaml.safe_dump({**changed, "metadata": {"name": "p2"}}),
                        "application/apply-patch+yaml")
    assert applied.status == 201 and sandbox_kube.get_object(CNP, "tasks", "p2") is None
    assert kube_http("DELETE", f"{BASE}/p1?dryRun=All").status == 200
    assert kube_http("DELETE", f"{BASE}/p1", {"dryRun": ["All"]}).status == 200
    assert sandbox_kube.get_object(CNP, "tasks", "p1") == real


# --------------------------------------------------------------------------- watch


class _Watch:
    """A raw watch stream read line by line in a thread (each line one event)."""

    def __init__(self, url: str, path: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self.conn.request("GET", path)
        self.response = self.conn.getresponse()
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.response:
                self.events.put(json.loads(line))
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass
        self.events.put(None)  # end of stream

    def next(self, timeout: float = 10) -> dict[str, Any] | None:
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        if self.conn.sock is not None:  # unblock the reader first, then close
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def _summary(event: dict[str, Any] | None) -> tuple[str, str] | None:
    if event is None:
        return None
    return (event["type"], event["object"]["metadata"].get("name", ""))


def test_watch_streams_changes(sandbox_kube: SandboxKube, kube_http: Http) -> None:
    kube_http("POST", BASE, _policy("old"))
    listed = kube_http("GET", BASE).body["metadata"]["resourceVersion"]
    url = sandbox_kube.url
    w = _Watch(url, f"{BASE}?watch=true&resourceVersion={listed}"
                    "&labelSelector=privnet.dev/org-id%3Dacme")
    assert w.response.status == 200
    assert w.response.getheader("Transfer-Encoding") == "chunked"
    try:
        kube_http("POST", BASE, _policy("p1"))
        kube_http("POST", BASE, _policy("other-org", org="globex"))  # filtered out
        kube_http("PATCH", f"{BASE}/p1", {"spec": {"description": "v2"}},
                  "application/merge-patch+json")
        kube_http("PATCH", f"{BASE}/old", {"metadata": {"labels": {
            "privnet.dev/org-id": "globex"}}}, "application/merge-patch+json")
        kube_http("DELETE", f"{BASE}/p1")
        seen = [_summary(w.next()) for _ in range(4)]
        assert seen == [("ADDED", "p1"), ("MODIFIED", "p1"), ("DELETED", "old"),
                        ("DELETED", "p1")]
    finally:
        w.close()
    # From "0": the current state first, then changes.
    w = _Watch(url, f"{BASE}?watch=true&resourceVersion=0&timeoutSeconds=1")
    try:
        assert sorted(_summary(w.next()) for _ in range(2)) == [  # type: ignore[type-var]
            ("ADDED", "old"), ("ADDED", "other-org")]
        assert w.next(timeout=10) is None  # timeoutSeconds ended the stream
    finally:
        w.close()


def test_watch_bookmarks_and_expired_versions() -> None:
    kube = SandboxKube(["tasks"], bookmark_interval=0.2, event_log_size=3)
    url = kube.start()
    try:
        api = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=url)))
        first = api.create_namespaced_custom_object(G, V, "tasks", CNP, _policy("p0"))
        w = _Watch(url, f"{BASE}?watch=true&allowWatchBookmarks=true&resourceVersion="
                        f"{first['metadata']['resourceVersion']}")
        try:
            bookmark = w.next()
            assert bookmark is not None and bookmark["type"] == "BOOKMARK"
            assert bookmark["object"]["metadata"]["resourceVersion"] == first["metadata"][
                "resourceVersion"]
        finally:
            w.close()
        for i in range(1, 5):  # more events than the log keeps
            api.create_namespaced_custom_object(G, V, "tasks", CNP, _policy(f"p{i}"))
        w = _Watch(url, f"{BASE}?watch=true&resourceVersion="
                        f"{first['metadata']['resourceVersion']}")
        try:
            error = w.next()
            assert error is not None and error["type"] == "ERROR"
            assert (error["object"]["code"], error["object"]["reason"]) == (410, "Expired")
            assert w.next() is None
        finally:
            w.close()
    finally:
        kube.stop()


# --------------------------------------------------------------------------- faults, admin


def _admin(kube: SandboxKube, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{kube.url}/_sandbox/{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def test_seeded_faults_and_admin_surface(sandbox_kube: SandboxKube, kube_http: Http) -> None:
    def run() -> list[int]:
        sandbox_kube.clear()
        config = {"seed": 7, "conflict_rate": 0.3, "error_rate": 0.2,
                  "lost_response_rate": 0.2, "latency_rate": 0.1, "latency_seconds": 0.01}
        state = _admin(sandbox_kube, "POST", "faults", config)
        assert state["config"] == config
        statuses = []
        for i in range(40):
            statuses.append(kube_http("POST", BASE, _policy(f"p{i}")).status)
            statuses.append(kube_http("GET", f"{BASE}/p{i}").status)
        _admin(sandbox_kube, "DELETE", "faults")
        return statuses

    first, second = run(), run()
    assert first == second  # the seed fixes the faults
    assert {201, 200, 409, 500} <= set(first)
    injected = _admin(sandbox_kube, "GET", "faults")["injected"]
    assert {"conflict_409", "error_500", "lost_response", "latency"} <= set(injected)
    # A lost response: 500 to the client, yet the object exists (the change was made).
    lost = [i for i in range(40) if first[2 * i] == 500 and first[2 * i + 1] == 200]
    assert lost, first
    inventory = _admin(sandbox_kube, "GET", f"objects?plural={CNP}")
    assert {o["name"] for o in inventory["items"]} == {
        p["metadata"]["name"] for p in sandbox_kube.policies()}
    stats = _admin(sandbox_kube, "GET", "stats")
    assert stats["writes"]["create"] == 80 and stats["conflicts"] >= 1
    assert kube_http("POST", BASE, _policy("after")).status == 201  # faults are off
    with pytest.raises(urllib.error.HTTPError) as info:
        _admin(sandbox_kube, "POST", "faults", {"error_rate": 2})
    assert info.value.code == 400


def test_snapshot_restore_keeps_identity(sandbox_kube: SandboxKube, custom_api: Any) -> None:
    created = custom_api.create_namespaced_custom_object(G, V, "tasks", CNP, _policy())
    later = SandboxKube(["default"])
    later.restore(sandbox_kube.snapshot())
    url = later.start()
    try:
        api = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=url)))
        assert api.get_namespaced_custom_object(G, V, "tasks", CNP, "p1") == created
        # A precondition read before the restart still holds after it.
        meta = created["metadata"]
        api.delete_namespaced_custom_object(G, V, "tasks", CNP, "p1", body=client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=meta["uid"],
                                                 resource_version=meta["resourceVersion"])))
        made = api.create_namespaced_custom_object(G, V, "tasks", CNP, _policy("p2"))
        assert int(made["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    finally:
        later.stop()


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


def test_stop_ends_open_watches(sandbox_kube: SandboxKube) -> None:
    w = _Watch(sandbox_kube.url, f"{BASE}?watch=true")
    t0 = time.monotonic()
    sandbox_kube.stop()
    assert w.next(timeout=10) is None
    assert time.monotonic() - t0 < 5
