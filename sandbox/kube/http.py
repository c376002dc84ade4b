"""HTTP: the routes of the API server the sandbox serves, and its admin surface.

API routes (fidelity rows "discovery", "OpenAPI", "CRUD", "watch"): ``/version``,
discovery (``/api``, ``/api/v1``, ``/apis``, ``/apis/cilium.io``, ``/apis/cilium.io/v2``),
``/openapi/v3[/<gv>]``, ``namespaces`` (core v1), namespaced ``ciliumnetworkpolicies``
(also listed across namespaces) and cluster-scoped ``ciliumclusterwidenetworkpolicies``.
Query parameters: ``dryRun``, ``fieldManager``, ``fieldValidation``, ``force``,
``labelSelector``, ``fieldSelector``, ``watch``, ``resourceVersion``,
``allowWatchBookmarks``, ``timeoutSeconds``. Bodies are JSON, or YAML for
``application/apply-patch+yaml`` and ``application/yaml``. Not modelled: pagination
(``limit`` is ignored: one page), Table output (kubectl prints its default columns),
protobuf, subresources (``/status`` is a 404), ``deletecollection``, auth.

Admin routes for other processes (the soak driving ``privnet dev up``), never faulted:
``GET /_sandbox/objects[?plural=]`` (the inventory), ``DELETE /_sandbox/objects`` (every
object but the namespaces), ``GET|POST|DELETE /_sandbox/faults``
(read, set, clear the fault configuration; see faults.py), ``GET /_sandbox/stats``.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from pydantic import ValidationError

from sandbox.kube import openapi, validation, watch
from sandbox.kube.apply import manager_from_user_agent
from sandbox.kube.faults import WRITES, FaultConfig
from sandbox.kube.resources import (
    CCNP,
    CILIUM_RESOURCES,
    CNP,
    GROUP,
    GROUP_VERSION,
    NAMESPACES,
    SERVER_VERSION,
    STALE,
    VERBS,
    VERSION,
    ApiError,
    ResourceType,
    already_exists,
    bad_request,
    conflict,
)
from sandbox.kube.selectors import parse_field_selector, parse_label_selector
from sandbox.kube.store import WriteOptions

if TYPE_CHECKING:
    from sandbox.kube.server import SandboxKube


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int = 0


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-able, or bytes sent as application/json
    headers: dict[str, str] = field(default_factory=dict)
    # A watch: called with "has the client gone?" to produce the events to stream.
    stream: Callable[[Callable[[], bool]], Iterator[dict[str, Any]]] | None = None


@dataclass(frozen=True)
class Target:
    rt: ResourceType
    namespace: str | None
    name: str | None


def _q(query: dict[str, list[str]], key: str, default: str = "") -> str:
    return query.get(key, [default])[0]


def _parse_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    try:
        if "yaml" in content_type:
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as e:
        raise bad_request(f"the request body is not valid {content_type}: {e}") from None


# --------------------------------------------------------------------------- routing


def target(method: str, parts: list[str]) -> Target | None:
    """The resource a URL names (None: not a resource URL)."""
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
        return Target(NAMESPACES, None, parts[3] if len(parts) == 4 else None)
    if parts[:3] != ["apis", GROUP, VERSION]:
        return None
    rest = parts[3:]
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] == CNP.plural:
        if len(rest) > 4:
            raise ApiError(404, "NotFound", "the server could not find the requested resource "
                           "(subresources are not modelled)")
        return Target(CNP, rest[1], rest[3] if len(rest) == 4 else None)
    if rest and rest[0] in CILIUM_RESOURCES and len(rest) <= 2:
        rt = CILIUM_RESOURCES[rest[0]]
        name = rest[1] if len(rest) == 2 else None
        if rt.namespaced and (name is not None or method != "GET"):
            raise ApiError(405, "MethodNotAllowed",
                           "the server does not allow this method on the requested resource")
        return Target(rt, None, name)
    return None


def discovery(parts: list[str]) -> dict[str, Any] | None:
    def resource(rt: ResourceType) -> dict[str, Any]:
        out = {"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
               "kind": rt.kind, "verbs": VERBS, "shortNames": list(rt.short_names)}
        if rt.categories:
            out["categories"] = list(rt.categories)
        return out

    group = {
        "name": GROUP,
        "versions": [{"groupVersion": GROUP_VERSION, "version": VERSION}],
        "preferredVersion": {"groupVersion": GROUP_VERSION, "version": VERSION},
    }
    if parts == []:
        return {"paths": ["/api", "/api/v1", "/apis", f"/apis/{GROUP}",
                          f"/apis/{GROUP_VERSION}", "/openapi/v3", "/version"]}
    if parts == ["version"]:
        return SERVER_VERSION
    if parts == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
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


def dispatch(kube: SandboxKube, method: str, raw_path: str, raw_body: bytes,
             headers: dict[str, str]) -> Response:
    split = urlsplit(raw_path)
    path = split.path
    query = parse_qs(split.query, keep_blank_values=True)
    parts = [unquote(p) for p in path.strip("/").split("/") if p]
    if parts[:1] == ["_sandbox"]:
        return admin(kube, method, parts[1:], query, raw_body)
    if method == "GET":
        if parts[:2] == ["openapi", "v3"]:
            gv = "/".join(parts[2:])
            if not gv:
                return Response(200, openapi.index_document())
            if gv in openapi.RESOURCES_BY_GV:
                return Response(200, openapi.group_version_document(gv),
                                {"Cache-Control": "public, immutable"} if "hash" in query
                                else {})
        found = discovery(parts)
        if found is not None:
            return Response(200, found)
    content_type = headers.get("content-type", "application/json").split(";")[0].strip()
    rec = RecordedRequest(method, path, query, None)
    with kube.lock:
        kube.requests.append(rec)
        if method in WRITES:
            kube.writes[_WRITE_NAMES[method]] += 1
    hook = kube.on_request
    if hook is not None:
        hook(method, path)
    try:
        rec.body = _parse_body(raw_body, content_type)
        tgt = target(method, parts)
        if tgt is None:
            raise ApiError(404, "NotFound", "the server could not find the requested "
                           f"resource ({method} {path})")
        watching = method == "GET" and _q(query, "watch") in ("true", "1")
        decision = None if watching else kube.faults.decide(method, path)
        if decision is not None and decision.delay:
            time.sleep(decision.delay)
        if decision is not None and decision.code is not None:
            raise _injected(decision.code, decision.reason, tgt, method, path)
        response = resource_request(kube, tgt, method, query, rec.body, content_type,
                                    headers, watching)
        if decision is not None and decision.lose_response:
            raise ApiError(500, "InternalError", "injected: the change was made but the "
                           "response was lost")
    except ApiError as e:
        if e.code == 409:
            with kube.lock:
                kube.conflicts += 1
        response = Response(e.code, e.status())
    rec.status = response.status
    return response


_WRITE_NAMES = {"POST": "create", "PUT": "replace", "PATCH": "patch", "DELETE": "delete"}


def _injected(code: int, reason: str, tgt: Target, method: str, path: str) -> ApiError:
    name = tgt.name or ""
    if code == 409 and method == "POST":
        return already_exists(tgt.rt, name or "(injected)")
    if code == 409:
        return conflict(tgt.rt, name, STALE)
    return ApiError(code, reason, f"injected error {code} for {method} {path}")


def resource_request(kube: SandboxKube, tgt: Target, method: str,
                     query: dict[str, list[str]], body: Any, content_type: str,
                     headers: dict[str, str], watching: bool) -> Response:
    rt, ns, name = tgt.rt, tgt.namespace, tgt.name
    store = kube.store
    if method == "GET" and name is None:
        labels = parse_label_selector(_q(query, "labelSelector"))
        fields = parse_field_selector(_q(query, "fieldSelector"))
        if watching:
            req = watch.WatchRequest(
                rt, ns, labels, fields, _q(query, "resourceVersion"),
                _q(query, "allowWatchBookmarks") in ("true", "1"),
                float(_q(query, "timeoutSeconds") or watch.DEFAULT_TIMEOUT))
            return Response(200, stream=lambda gone: watch.stream(
                store, req, kube.stopping, kube.bookmark_interval, gone))
        items, rv = store.list_objects(rt, ns, labels, fields)
        return Response(200, {"apiVersion": rt.api_version, "kind": f"{rt.kind}List",
                              "metadata": {"resourceVersion": str(rv)}, "items": items})
    if method == "GET":
        return Response(200, store.get(rt, ns, name or ""))
    dry_run = _q(query, "dryRun") == "All"
    if method == "DELETE" and name is not None:
        options = body if isinstance(body, dict) else {}
        pre = options.get("preconditions") or {}
        dry_run = dry_run or "All" in (options.get("dryRun") or [])
        return Response(200, store.delete(rt, ns, name, pre, dry_run))
    opts = WriteOptions(
        manager=_q(query, "fieldManager")
        or manager_from_user_agent(headers.get("user-agent", "")),
        dry_run=dry_run,
        field_validation=validation.field_validation(query),
        force=_q(query, "force") in ("true", "1"),
    )
    if method == "POST" and name is None:
        obj, warnings = store.create(rt, ns, body, opts)
        return Response(201, obj, _warning_headers(warnings))
    if method == "PUT" and name is not None:
        obj, warnings = store.replace(rt, ns, name, body, opts)
        return Response(200, obj, _warning_headers(warnings))
    if method == "PATCH" and name is not None:
        if content_type == "application/apply-patch+yaml":
            opts.manager = validation.raise_if_apply_without_manager(query)
        existed = store.exists((rt.plural, ns, name))
        obj, warnings = store.patch(rt, ns, name, body, content_type, opts)
        status = 201 if content_type == "application/apply-patch+yaml" and not existed else 200
        return Response(status, obj, _warning_headers(warnings))
    raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed here")


def _warning_headers(warnings: list[str]) -> dict[str, str]:
    if not warnings:
        return {}
    # One header value per warning would be more faithful; http.server joins them badly.
    return {"Warning": ", ".join(f'299 - {json.dumps(w)}' for w in warnings)}


def admin(kube: SandboxKube, method: str, parts: list[str], query: dict[str, list[str]],
          raw_body: bytes) -> Response:
    if parts == ["objects"] and method == "DELETE":
        kube.clear()  # every object but the namespaces (a fresh cluster for the next run)
        return Response(200, {"items": [], "resourceVersion": str(kube.store.rv)})
    if parts == ["objects"] and method == "GET":
        plural = _q(query, "plural") or None
        with kube.lock:
            items = [{"plural": p, "namespace": ns, "name": n, "object": o}
                     for (p, ns, n), o in sorted(kube.objects.items(),
                                                 key=lambda kv: (kv[0][0], kv[0][1] or "",
                                                                 kv[0][2]))
                     if plural is None or p == plural]
        return Response(200, {"items": items, "resourceVersion": str(kube.store.rv)})
    if parts == ["faults"]:
        if method == "POST":
            try:
                config = FaultConfig.model_validate_json(raw_body or b"{}")
            except ValidationError as e:
                return Response(400, {"error": str(e)})
            kube.faults.configure(config)
        elif method == "DELETE":
            kube.faults.clear()
        elif method != "GET":
            return Response(405, {"error": "use GET, POST or DELETE"})
        return Response(200, kube.faults.state())
    if parts == ["stats"] and method == "GET":
        with kube.lock:
            return Response(200, {"writes": dict(kube.writes), "conflicts": kube.conflicts,
                                  "requests": len(kube.requests),
                                  "resourceVersion": str(kube.store.rv)})
    return Response(404, {"error": f"no admin route {method} /_sandbox/{'/'.join(parts)}"})


# --------------------------------------------------------------------------- the handler


class Handler(BaseHTTPRequestHandler):
    kube: SandboxKube
    protocol_version = "HTTP/1.1"
    server_version = "privnet-sandbox-kube/2"
    disable_nagle_algorithm = True  # else keep-alive requests wait ~40 ms for delayed ACKs

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            response = dispatch(self.kube, self.command, self.path, raw, headers)
        except Exception as e:  # never drop the connection without an answer
            response = Response(500, ApiError(500, "InternalError", repr(e)).status())
        if response.stream is not None:
            self._stream(response.stream(self._client_gone))
        else:
            self._send(response)

    def _send(self, response: Response) -> None:
        body = response.body
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(response.status, HTTPStatus(response.status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in response.headers.items():
            self.send_header(key, value)
        # end_headers() + write(), in one send: a second small write costs a round trip.
        self._headers_buffer.append(b"\r\n" + data)  # type: ignore[attr-defined]
        self.flush_headers()

    def _stream(self, events: Iterator[dict[str, Any]]) -> None:
        """A watch: one JSON event per chunk until the stream ends or the client leaves."""
        self.send_response(200, "OK")
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            for event in events:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

