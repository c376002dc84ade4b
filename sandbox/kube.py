"""A Kubernetes API emulator serving the Cilium policy CRDs, for tests and the dev stack.

Serves over plain HTTP (no auth), enough of the API for the official ``kubernetes``
client: discovery (``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/cilium.io``,
``/apis/cilium.io/v2``), ``namespaces``, ``cilium.io/v2`` ``ciliumnetworkpolicies``
(namespaced) and ``ciliumclusterwidenetworkpolicies`` (cluster scoped).

Behaviour copied from the real API server:

* create → 201 with the stored body, server-set ``uid``, ``resourceVersion``,
  ``creationTimestamp``, ``generation``; an existing name → 409 ``AlreadyExists``;
  a missing namespace → 404.
* get / replace (PUT) / patch / delete on a missing object → 404 ``NotFound``.
* replace and patch with a ``metadata.resourceVersion`` that is not the current one →
  409 ``Conflict`` (optimistic concurrency); without one, the write is unconditional
  (custom resources allow unconditional updates). A write that changes nothing keeps the
  resourceVersion; ``generation`` grows only when ``spec`` changes.
* patch: ``application/merge-patch+json`` (RFC 7386, the client's default) and
  ``application/json-patch+json`` (RFC 6902: add/remove/replace/test); strategic merge
  and server-side apply → 415, as for custom resources without SSA support here.
* list with ``labelSelector`` (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``,
  ``k in (a,b)``, ``k notin (a,b)``); an unparsable selector → 400.
* a body the CRD would reject → 422 ``Invalid`` with the field path. The check is a
  minimal structural validation in code of what privnet and the CRD's
  ``openAPIV3Schema`` care about (required fields, types, enums, CIDR format, port
  pattern, label value format, ``endpointSelector``/``nodeSelector`` exactly one, at least
  one rule section); the full CRD schema check lives in the tests, so the sandbox does
  not depend on ``../shared`` at runtime.

Not emulated: watch, field selectors, pagination, finalizers, admission, auth/RBAC
(use ``inject_error`` for 403 / 5xx), status subresources.

Why not ``kmock``: its ``KubernetesEmulator`` mutates its object store in ``_handle``
*before* any user reaction runs, so a reaction cannot refuse a stale resourceVersion or a
CRD-invalid body without the store already having changed; it treats every PATCH as a
naive dict merge and has no PUT (replace) at all; and it is asyncio/aiohttp-bound (an
event loop per server plus a process-wide aiohttp DNS interceptor), while the official
client and the worker's activities are synchronous. A small threaded ``http.server`` with
one lock around one dict is easier to read and to trust than overriding kmock's core.

Tests reach the stored objects through ``SandboxKube.objects``/``get_object``, the request
log through ``requests`` and the write counters through ``writes`` (create/patch/replace/
delete), so "re-apply unchanged = no write" is assertable. ``on_request`` lets a test
hold requests (e.g. make two writers read the same version).

Standalone: ``python -m sandbox.kube --port 8001 [--namespace tasks ...]``.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import json
import re
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

GROUP = "cilium.io"
VERSION = "v2"
GROUP_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class ResourceType:
    plural: str
    singular: str
    kind: str
    namespaced: bool
    group: str
    version: str
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


CNP = ResourceType(
    "ciliumnetworkpolicies", "ciliumnetworkpolicy", "CiliumNetworkPolicy", True, GROUP,
    VERSION, ("cnp", "ciliumnp"),
)
CCNP = ResourceType(
    "ciliumclusterwidenetworkpolicies", "ciliumclusterwidenetworkpolicy",
    "CiliumClusterwideNetworkPolicy", False, GROUP, VERSION, ("ccnp",),
)
NAMESPACES = ResourceType("namespaces", "namespace", "Namespace", False, "", "v1", ("ns",))
CILIUM_RESOURCES = {CNP.plural: CNP, CCNP.plural: CCNP}

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease", "tasks")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
# The CRD's pattern for toPorts[].ports[].port (a number or a named port).
_PORT = re.compile(
    r"^(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
    r"|([a-zA-Z0-9]-?)*[a-zA-Z](-?[a-zA-Z0-9])*$"
)
_PROTOCOLS = {"TCP", "UDP", "SCTP", "VRRP", "IGMP", "ANY"}
_OPERATORS = {"In", "NotIn", "Exists", "DoesNotExist"}


class ApiError(Exception):
    """Rendered as a Kubernetes ``Status`` object."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- validation


class _Invalid:
    """Collects field errors; ``raise_if_any`` turns them into a 422."""

    def __init__(self) -> None:
        self.causes: list[dict[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.causes.append({"reason": "FieldValueInvalid", "message": message, "field": field})

    def raise_if_any(self, rt: ResourceType, name: str) -> None:
        if self.causes:
            summary = "; ".join(f"{c['field']}: {c['message']}" for c in self.causes)
            raise ApiError(
                422,
                "Invalid",
                f'{rt.kind}.{rt.group} "{name}" is invalid: {summary}',
                {"name": name, "group": rt.group, "kind": rt.kind, "causes": self.causes},
            )


def _is_cidr(value: Any) -> bool:
    if not isinstance(value, str) or "/" not in value:
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _check_selector(sel: Any, path: str, err: _Invalid) -> None:
    if not isinstance(sel, dict):
        err.add(path, "must be an object")
        return
    labels = sel.get("matchLabels", {})
    if not isinstance(labels, dict):
        err.add(f"{path}.matchLabels", "must be an object")
    else:
        for k, v in labels.items():
            if not isinstance(v, str) or len(v) > 63 or not _LABEL_VALUE.match(v):
                err.add(f"{path}.matchLabels.{k}", f"invalid label value {v!r}")
    exprs = sel.get("matchExpressions", [])
    if not isinstance(exprs, list):
        err.add(f"{path}.matchExpressions", "must be an array")
        return
    for i, e in enumerate(exprs):
        p = f"{path}.matchExpressions[{i}]"
        if not isinstance(e, dict):
            err.add(p, "must be an object")
            continue
        if not isinstance(e.get("key"), str):
            err.add(f"{p}.key", "Required value")
        if e.get("operator") not in _OPERATORS:
            err.add(f"{p}.operator", f"must be one of {sorted(_OPERATORS)}")
        values = e.get("values", [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            err.add(f"{p}.values", "must be an array of strings")


def _check_ports(rules: Any, path: str, err: _Invalid) -> None:
    if not isinstance(rules, list):
        err.add(path, "must be an array")
        return
    for i, r in enumerate(rules):
        if not isinstance(r, dict):
            err.add(f"{path}[{i}]", "must be an object")
            continue
        ports = r.get("ports", [])
        if not isinstance(ports, list) or len(ports) > 40:
            err.add(f"{path}[{i}].ports", "must be an array of at most 40 items")
            continue
        for j, p in enumerate(ports):
            pp = f"{path}[{i}].ports[{j}]"
            if not isinstance(p, dict):
                err.add(pp, "must be an object")
                continue
            if "port" in p and (not isinstance(p["port"], str) or not _PORT.match(p["port"])):
                err.add(f"{pp}.port", f"must be a port number string, got {p['port']!r}")
            if "protocol" in p and p["protocol"] not in _PROTOCOLS:
                err.add(f"{pp}.protocol", f"must be one of {sorted(_PROTOCOLS)}")


def _check_rules(rules: Any, path: str, err: _Invalid, prefix: str) -> None:
    if not isinstance(rules, list):
        err.add(path, "must be an array")
        return
    for i, rule in enumerate(rules):
        rp = f"{path}[{i}]"
        if not isinstance(rule, dict):
            err.add(rp, "must be an object")
            continue
        cidrs = rule.get(f"{prefix}CIDR", [])
        if not isinstance(cidrs, list):
            err.add(f"{rp}.{prefix}CIDR", "must be an array")
        else:
            for j, c in enumerate(cidrs):
                if not _is_cidr(c):
                    err.add(f"{rp}.{prefix}CIDR[{j}]", f"must be a CIDR, got {c!r}")
        sets = rule.get(f"{prefix}CIDRSet", [])
        if not isinstance(sets, list):
            err.add(f"{rp}.{prefix}CIDRSet", "must be an array")
        else:
            for j, s in enumerate(sets):
                sp = f"{rp}.{prefix}CIDRSet[{j}]"
                if not isinstance(s, dict):
                    err.add(sp, "must be an object")
                    continue
                refs = [k for k in ("cidr", "cidrGroupRef", "cidrGroupSelector") if k in s]
                if len(refs) != 1:
                    err.add(sp, "exactly one of cidr, cidrGroupRef, cidrGroupSelector")
                if "cidr" in s and not _is_cidr(s["cidr"]):
                    err.add(f"{sp}.cidr", f"must be a CIDR, got {s['cidr']!r}")
                exc = s.get("except", [])
                if not isinstance(exc, list) or not all(_is_cidr(c) for c in exc):
                    err.add(f"{sp}.except", "must be an array of CIDRs")
        eps = rule.get(f"{prefix}Endpoints", [])
        if not isinstance(eps, list):
            err.add(f"{rp}.{prefix}Endpoints", "must be an array")
        else:
            for j, sel in enumerate(eps):
                _check_selector(sel, f"{rp}.{prefix}Endpoints[{j}]", err)
        if "toPorts" in rule:  # ingress rules use toPorts too
            _check_ports(rule["toPorts"], f"{rp}.toPorts", err)


def validate_object(rt: ResourceType, obj: Any, *, url_namespace: str | None) -> None:
    """Raise a 400/422 ``ApiError`` for a body the real server or CRD would refuse."""
    if not isinstance(obj, dict):
        raise ApiError(400, "BadRequest", "the request body must be a JSON object")
    meta = obj.get("metadata")
    name = meta.get("name", "") if isinstance(meta, dict) else ""
    err = _Invalid()
    if obj.get("apiVersion") != rt.api_version:
        err.add("apiVersion", f"must be {rt.api_version!r}")
    if obj.get("kind") != rt.kind:
        err.add("kind", f"must be {rt.kind!r}")
    if not isinstance(meta, dict):
        err.add("metadata", "Required value")
        err.raise_if_any(rt, name)
        return
    if not isinstance(name, str) or not name:
        err.add("metadata.name", "Required value: name is required")
    elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        err.add("metadata.name", f"{name!r} is not a lowercase RFC 1123 subdomain")
    if rt.namespaced and meta.get("namespace") not in (None, url_namespace):
        raise ApiError(
            400, "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the "
            "request",
        )
    for field in ("labels", "annotations"):
        values = meta.get(field, {})
        if values is None:
            continue
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            err.add(f"metadata.{field}", "must be a map of strings")
            continue
        for k, v in values.items():
            _, _, key_name = k.rpartition("/")
            if not _LABEL_NAME.match(key_name):
                err.add(f"metadata.{field}", f"invalid key {k!r}")
            if field == "labels" and (len(v) > 63 or not _LABEL_VALUE.match(v)):
                err.add(f"metadata.labels.{k}", f"invalid label value {v!r}")
    if rt is NAMESPACES:
        if isinstance(name, str) and name and not _DNS_LABEL.match(name):
            err.add("metadata.name", f"{name!r} is not a DNS-1123 label")
        err.raise_if_any(rt, name)
        return

    specs: list[tuple[str, Any]] = []
    if "spec" in obj:
        specs.append(("spec", obj["spec"]))
    if "specs" in obj:
        if not isinstance(obj["specs"], list):
            err.add("specs", "must be an array")
        else:
            specs += [(f"specs[{i}]", s) for i, s in enumerate(obj["specs"])]
    if not specs:
        err.add("spec", "Required value: a policy needs spec or specs")
    for path, spec in specs:
        if not isinstance(spec, dict):
            err.add(path, "must be an object")
            continue
        selectors = [k for k in ("endpointSelector", "nodeSelector") if k in spec]
        if len(selectors) != 1:
            err.add(path, "exactly one of endpointSelector or nodeSelector is required")
        for k in selectors:
            _check_selector(spec[k], f"{path}.{k}", err)
        sections = [k for k in ("ingress", "ingressDeny", "egress", "egressDeny") if k in spec]
        if not sections:
            err.add(path, "at least one of ingress, ingressDeny, egress, egressDeny is required")
        for k in ("egress", "egressDeny"):
            if k in spec:
                _check_rules(spec[k], f"{path}.{k}", err, "to")
        for k in ("ingress", "ingressDeny"):
            if k in spec:
                _check_rules(spec[k], f"{path}.{k}", err, "from")
        if "description" in spec and not isinstance(spec["description"], str):
            err.add(f"{path}.description", "must be a string")
    err.raise_if_any(rt, name)


# --------------------------------------------------------------------------- selectors

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_SELECTOR_KEY = re.compile(r"^[A-Za-z0-9_./-]+$")


Requirement = tuple[str, str, frozenset[str]]  # (operator, key, values)


def parse_label_selector(text: str) -> list[Requirement]:
    """Kubernetes label selector syntax → requirements (ANDed). Raises 400 when invalid."""
    parts: list[str] = []
    depth, cur = 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    reqs: list[Requirement] = []
    for raw in parts:
        part = raw.strip()
        if not part:
            if text.strip():
                raise ApiError(400, "BadRequest", f"unable to parse requirement: {text!r}")
            continue
        if m := _SET_RE.match(part):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append((m.group(2), m.group(1), values))
        elif "!=" in part:
            key, _, value = (s.strip() for s in part.partition("!="))
            reqs.append(("!=", key, frozenset({value})))
        elif "=" in part:
            sep = "==" if "==" in part else "="
            key, _, value = (s.strip() for s in part.partition(sep))
            if not key or "=" in value:
                raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
            reqs.append(("=", key, frozenset({value})))
        elif part.startswith("!") and _SELECTOR_KEY.match(part[1:].strip()):
            reqs.append(("!", part[1:].strip(), frozenset()))
        elif _SELECTOR_KEY.match(part):
            reqs.append(("exists", part, frozenset()))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
    return reqs


def selector_matches(reqs: list[Requirement], labels: dict[str, str]) -> bool:
    for op, key, values in reqs:
        value = labels.get(key)
        ok = {
            "in": value in values,
            "=": value in values,
            "notin": value not in values,
            "!=": value not in values,
            "exists": key in labels,
            "!": key not in labels,
        }[op]
        if not ok:
            return False
    return True


# --------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test)."""
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be an array of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "path" not in op or "op" not in op:
            raise ApiError(400, "BadRequest", f"invalid JSON patch operation {op!r}")
        tokens = [
            t.replace("~1", "/").replace("~0", "~") for t in str(op["path"]).split("/")[1:]
        ]
        if not tokens:
            raise ApiError(422, "Invalid", "JSON patch on the whole document is not supported")
        parent = doc
        try:
            for t in tokens[:-1]:
                parent = parent[int(t)] if isinstance(parent, list) else parent[t]
            last = tokens[-1]
            kind = op["op"]
            if kind == "test":
                cur = parent[int(last)] if isinstance(parent, list) else parent[last]
                if cur != op.get("value"):
                    raise ApiError(422, "Invalid", f"JSON patch test failed at {op['path']}")
            elif kind in ("add", "replace"):
                if isinstance(parent, list):
                    if last == "-":
                        parent.append(op.get("value"))
                    elif kind == "add":
                        parent.insert(int(last), op.get("value"))
                    else:
                        parent[int(last)] = op.get("value")
                else:
                    if kind == "replace" and last not in parent:
                        raise KeyError(last)
                    parent[last] = op.get("value")
            elif kind == "remove":
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            else:
                raise ApiError(422, "Invalid", f"unsupported JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(
                422, "Invalid", f"JSON patch path {op['path']!r} does not exist"
            ) from None
    return doc


# --------------------------------------------------------------------------- the store


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int = 0


_WRITE_VERBS = {"POST": "create", "PUT": "replace", "PATCH": "patch", "DELETE": "delete"}
Key = tuple[str, str | None, str]  # (plural, namespace or None, name)


class SandboxKube:
    """A threaded HTTP Kubernetes API emulator (see the module docstring)."""

    def __init__(self, namespaces: Iterable[str] = DEFAULT_NAMESPACES) -> None:
        self._lock = threading.RLock()
        self._objects: dict[Key, dict[str, Any]] = {}
        self._rv = 0
        self.writes: Counter[str] = Counter()  # create / patch / replace / delete
        self.conflicts = 0  # 409s served (stale resourceVersion or existing name)
        self.requests: list[RecordedRequest] = []
        self.on_request: Callable[[str, str], None] | None = None
        self._injected: list[tuple[int, str | None, str | None, int]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for ns in namespaces:
            self.add_namespace(ns)

    # ------------------------------------------------------------------ lifecycle

    def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        if self._server is not None:
            raise RuntimeError("SandboxKube is already started")
        owner = self

        class Handler(_Handler):
            kube = owner

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # fast stop() in tests
            name="sandbox-kube",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SandboxKube:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("SandboxKube is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # ------------------------------------------------------------------ test access

    def add_namespace(self, name: str) -> None:
        with self._lock:
            key: Key = (NAMESPACES.plural, None, name)
            if key not in self._objects:
                body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
                self._objects[key] = self._stamp_new(body)

    @property
    def objects(self) -> dict[Key, dict[str, Any]]:
        """A deep copy of every stored object by (plural, namespace, name)."""
        with self._lock:
            return copy.deepcopy(self._objects)

    def get_object(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._objects.get((plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def policies(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Stored CiliumNetworkPolicies (of one namespace, or all)."""
        with self._lock:
            return [
                copy.deepcopy(o)
                for (plural, ns, _), o in sorted(
                    self._objects.items(), key=lambda kv: (kv[0][1] or "", kv[0][2])
                )
                if plural == CNP.plural and (namespace is None or ns == namespace)
            ]

    def put_object(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` directly (bypassing HTTP, validation and counters)."""
        rt = CILIUM_RESOURCES.get(plural, NAMESPACES)
        meta = obj["metadata"]
        key: Key = (plural, meta.get("namespace") if rt.namespaced else None, meta["name"])
        with self._lock:
            self._objects[key] = self._stamp_new(copy.deepcopy(obj))
            return copy.deepcopy(self._objects[key])

    def remove_object(self, plural: str, namespace: str | None, name: str) -> None:
        """Delete directly (e.g. "an operator deleted the policy by hand")."""
        with self._lock:
            self._objects.pop((plural, namespace, name), None)

    def inject_error(
        self,
        code: int,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests with ``code`` (403, 500, 503...)."""
        with self._lock:
            self._injected.append((code, method, path_contains, times))

    def reset_counters(self) -> None:
        with self._lock:
            self.writes.clear()
            self.conflicts = 0
            self.requests.clear()

    @property
    def write_count(self) -> int:
        return sum(self.writes.values())

    # ------------------------------------------------------------------ internals

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _stamp_new(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        meta.pop("resourceVersion", None)
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = self._next_rv()
        meta["creationTimestamp"] = _now()
        if "spec" in obj or "specs" in obj:
            meta["generation"] = 1
        return obj

    def _take_injected(self, method: str, path: str) -> int | None:
        with self._lock:
            for i, (code, m, frag, times) in enumerate(self._injected):
                if (m is None or m == method) and (frag is None or frag in path):
                    if times <= 1:
                        del self._injected[i]
                    else:
                        self._injected[i] = (code, m, frag, times - 1)
                    return code
        return None

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, content_type: str
    ) -> tuple[int, Any]:
        """Serve one request; returns (status, JSON body)."""
        rec = RecordedRequest(method, path, query, body)
        with self._lock:
            self.requests.append(rec)
        hook = self.on_request
        if hook is not None:
            hook(method, path)
        write = _WRITE_VERBS.get(method)
        if write is not None:
            with self._lock:
                self.writes[write] += 1
        try:
            code = self._take_injected(method, path)
            if code is not None:
                reason = {
                    401: "Unauthorized", 403: "Forbidden", 429: "TooManyRequests"
                }.get(code, "InternalError")
                raise ApiError(code, reason, f"injected error {code} for {method} {path}")
            status, result = self._route(method, path, query, body, content_type)
        except ApiError as e:
            if e.code == 409:
                with self._lock:
                    self.conflicts += 1
            status, result = e.code, e.status()
        rec.status = status
        return status, result

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, content_type: str
    ) -> tuple[int, Any]:
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        if method == "GET":
            discovered = self._discovery(parts)
            if discovered is not None:
                return 200, discovered
        # /api/v1/namespaces[/name]
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
            return self._dispatch(NAMESPACES, None, parts[3] if len(parts) == 4 else None,
                                  method, query, body, content_type)
        if parts[:3] == ["apis", GROUP, VERSION]:
            rest = parts[3:]
            if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] == CNP.plural:
                if len(rest) > 4:
                    raise ApiError(404, "NotFound", "the server could not find the requested "
                                   "resource (subresources are not emulated)")
                ns = rest[1]
                with self._lock:
                    if (NAMESPACES.plural, None, ns) not in self._objects and method == "POST":
                        raise ApiError(404, "NotFound", f'namespaces "{ns}" not found',
                                       {"name": ns, "kind": "namespaces"})
                return self._dispatch(CNP, ns, rest[3] if len(rest) == 4 else None,
                                      method, query, body, content_type)
            if rest and rest[0] in CILIUM_RESOURCES and len(rest) <= 2:
                rt = CILIUM_RESOURCES[rest[0]]
                name = rest[1] if len(rest) == 2 else None
                if rt.namespaced and (name is not None or method != "GET"):
                    raise ApiError(405, "MethodNotAllowed", "the server does not allow this "
                                   "method on the requested resource")
                return self._dispatch(rt, None, name, method, query, body, content_type)
        raise ApiError(404, "NotFound", f"the server could not find the requested resource "
                       f"({method} {path})")

    def _discovery(self, parts: list[str]) -> dict[str, Any] | None:
        def resource(rt: ResourceType) -> dict[str, Any]:
            return {
                "name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
                "kind": rt.kind, "verbs": VERBS, "shortNames": list(rt.short_names),
            }

        group = {
            "name": GROUP,
            "versions": [{"groupVersion": GROUP_VERSION, "version": VERSION}],
            "preferredVersion": {"groupVersion": GROUP_VERSION, "version": VERSION},
        }
        if parts == []:
            return {"paths": ["/api", "/api/v1", "/apis", f"/apis/{GROUP}",
                              f"/apis/{GROUP_VERSION}", "/version"]}
        if parts == ["version"]:
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-privnet-sandbox",
                    "platform": "linux/amd64"}
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": []}
        if parts == ["api", "v1"]:
            return {"kind": "APIResourceList", "groupVersion": "v1",
                    "resources": [resource(NAMESPACES)]}
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}
        if parts == ["apis", GROUP]:
            return {"kind": "APIGroup", "apiVersion": "v1", **group}
        if parts == ["apis", GROUP, VERSION]:
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION,
                    "resources": [resource(CNP), resource(CCNP)]}
        return None

    def _dispatch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str | None,
        method: str,
        query: dict[str, list[str]],
        body: Any,
        content_type: str,
    ) -> tuple[int, Any]:
        if name is None:
            if method == "GET":
                return 200, self._list(rt, namespace, query)
            if method == "POST":
                return 201, self._create(rt, namespace, body)
        else:
            if method == "GET":
                return 200, self._get(rt, namespace, name)
            if method == "PUT":
                return 200, self._replace(rt, namespace, name, body)
            if method == "PATCH":
                return 200, self._patch(rt, namespace, name, body, content_type)
            if method == "DELETE":
                return 200, self._delete(rt, namespace, name)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed here")

    def _not_found(self, rt: ResourceType, name: str) -> ApiError:
        return ApiError(404, "NotFound", f'{rt.plural}.{rt.group or "core"} "{name}" not found'
                        if rt.group else f'{rt.plural} "{name}" not found',
                        {"name": name, "group": rt.group, "kind": rt.plural})

    def _list(self, rt: ResourceType, namespace: str | None, query: dict[str, list[str]]
              ) -> dict[str, Any]:
        reqs = parse_label_selector(query.get("labelSelector", [""])[0])
        with self._lock:
            items = [
                copy.deepcopy(o)
                for (plural, ns, _), o in sorted(
                    self._objects.items(), key=lambda kv: (kv[0][1] or "", kv[0][2])
                )
                if plural == rt.plural
                and (namespace is None or ns == namespace)
                and selector_matches(reqs, o.get("metadata", {}).get("labels") or {})
            ]
            rv = str(self._rv)
        return {"apiVersion": rt.api_version, "kind": f"{rt.kind}List",
                "metadata": {"resourceVersion": rv}, "items": items}

    def _get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        with self._lock:
            obj = self._objects.get((rt.plural, namespace, name))
            if obj is None:
                raise self._not_found(rt, name)
            return copy.deepcopy(obj)

    def _create(self, rt: ResourceType, namespace: str | None, body: Any) -> dict[str, Any]:
        validate_object(rt, body, url_namespace=namespace)
        obj = copy.deepcopy(body)
        meta = obj["metadata"]
        if rt.namespaced:
            meta["namespace"] = namespace
        for server_field in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
            meta.pop(server_field, None)
        if meta.get("resourceVersion"):
            raise ApiError(500, "InternalError",
                           "resourceVersion should not be set on objects to be created")
        key: Key = (rt.plural, namespace, meta["name"])
        with self._lock:
            if key in self._objects:
                raise ApiError(409, "AlreadyExists",
                               f'{rt.plural}.{rt.group} "{meta["name"]}" already exists',
                               {"name": meta["name"], "group": rt.group, "kind": rt.plural})
            self._objects[key] = self._stamp_new(obj)
            return copy.deepcopy(self._objects[key])

    def _update(self, rt: ResourceType, namespace: str | None, name: str, new: Any,
                requested_rv: Any) -> dict[str, Any]:
        """Store ``new`` over the current object (lock held by the caller)."""
        key: Key = (rt.plural, namespace, name)
        current = self._objects[key]
        cur_meta = current["metadata"]
        if requested_rv not in (None, "") and str(requested_rv) != cur_meta["resourceVersion"]:
            raise ApiError(
                409, "Conflict",
                f'Operation cannot be fulfilled on {rt.plural}.{rt.group} "{name}": the object '
                "has been modified; please apply your changes to the latest version and try "
                "again",
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
            raise ApiError(400, "BadRequest", "the body must be an object with metadata")
        if new["metadata"].get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name "
                           "on the URL")
        validate_object(rt, new, url_namespace=namespace)
        new = copy.deepcopy(new)
        meta = new["metadata"]
        if rt.namespaced:
            meta["namespace"] = namespace
        for server_field in ("uid", "creationTimestamp", "resourceVersion", "generation"):
            if server_field in cur_meta:
                meta[server_field] = cur_meta[server_field]
            else:
                meta.pop(server_field, None)
        if new == current:
            return copy.deepcopy(current)  # a no-op write keeps the resourceVersion
        if (new.get("spec"), new.get("specs")) != (current.get("spec"), current.get("specs")):
            meta["generation"] = int(cur_meta.get("generation", 0)) + 1
        meta["resourceVersion"] = self._next_rv()
        self._objects[key] = new
        return copy.deepcopy(new)

    def _replace(self, rt: ResourceType, namespace: str | None, name: str, body: Any
                 ) -> dict[str, Any]:
        with self._lock:
            if (rt.plural, namespace, name) not in self._objects:
                raise self._not_found(rt, name)
            rv = body.get("metadata", {}).get("resourceVersion") if isinstance(body, dict) else None
            return self._update(rt, namespace, name, body, rv)

    def _patch(self, rt: ResourceType, namespace: str | None, name: str, body: Any,
               content_type: str) -> dict[str, Any]:
        ctype = content_type.split(";")[0].strip().lower()
        with self._lock:
            current = self._objects.get((rt.plural, namespace, name))
            if current is None:
                raise self._not_found(rt, name)
            if ctype == "application/merge-patch+json":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
                new = merge_patch(current, body)
                rv = (body.get("metadata") or {}).get("resourceVersion")
            elif ctype == "application/json-patch+json":
                new = json_patch(current, body)
                rv = (new.get("metadata") or {}).get("resourceVersion")
                if rv == current["metadata"]["resourceVersion"]:
                    rv = None
            else:
                raise ApiError(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format ({ctype}); "
                               "accepted: application/merge-patch+json, "
                               "application/json-patch+json")
            return self._update(rt, namespace, name, new, rv)

    def _delete(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        with self._lock:
            obj = self._objects.pop((rt.plural, namespace, name), None)
            if obj is None:
                raise self._not_found(rt, name)
            if rt is NAMESPACES:
                for key in [k for k in self._objects if k[1] == name]:
                    del self._objects[key]
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": rt.group, "kind": rt.plural,
                            "uid": obj["metadata"].get("uid")}}


class _Handler(BaseHTTPRequestHandler):
    kube: SandboxKube
    protocol_version = "HTTP/1.1"
    server_version = "privnet-sandbox-kube/1"
    disable_nagle_algorithm = True  # else keep-alive requests wait ~40 ms for delayed ACKs

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass

    def _serve(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        status: int
        result: Any
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                status, result = 400, ApiError(400, "BadRequest", "invalid JSON body").status()
                self._send(status, result)
                return
        try:
            status, result = self.kube.handle(
                self.command, split.path, parse_qs(split.query), body,
                self.headers.get("Content-Type", "application/json"),
            )
        except Exception as e:  # never drop the connection without an answer
            status, result = 500, ApiError(500, "InternalError", repr(e)).status()
        self._send(status, result)

    def _send(self, status: int, result: Any) -> None:
        data = json.dumps(result).encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.kube",
        description="Kubernetes API emulator serving the Cilium policy CRDs (no auth)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--namespace", action="append", dest="namespaces",
                        help="namespace to create (repeatable); default: "
                        + ", ".join(DEFAULT_NAMESPACES))
    args = parser.parse_args(argv)
    namespaces = list(DEFAULT_NAMESPACES)
    if args.namespaces:
        namespaces = sorted(set(args.namespaces) | {"default", "kube-system"})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    kube = SandboxKube(namespaces)
    url = kube.start(port=args.port, host=args.host)
    print(json.dumps({"kube_url": url}), flush=True)
    stop.wait()
    kube.stop()


if __name__ == "__main__":
    main()
