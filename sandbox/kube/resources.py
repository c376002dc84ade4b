"""The resource types the sandbox serves and the API errors it answers with.

Every error leaves the server as a ``meta.k8s.io/v1`` ``Status`` object with the code,
reason and message shapes the real API server uses (``staging/src/k8s.io/apimachinery/
pkg/api/errors/errors.go``), so clients that branch on them (the official Python client,
kubectl) behave as against a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GROUP = "cilium.io"
VERSION = "v2"
GROUP_VERSION = f"{GROUP}/{VERSION}"
SERVER_VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0-privnet-sandbox",
                  "gitCommit": "0000000000000000000000000000000000000000",
                  "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                  "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64"}


@dataclass(frozen=True)
class ResourceType:
    plural: str
    singular: str
    kind: str
    namespaced: bool
    group: str
    version: str
    short_names: tuple[str, ...] = ()
    crd_file: str | None = None  # vendored CRD (schema, printer columns); None = built in
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``plural.group`` as the API server names it in messages (``plural`` for core)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


CNP = ResourceType(
    "ciliumnetworkpolicies", "ciliumnetworkpolicy", "CiliumNetworkPolicy", True, GROUP,
    VERSION, ("cnp", "ciliumnp"), "ciliumnetworkpolicies.yaml.gz", ("cilium", "ciliumpolicy"),
)
CCNP = ResourceType(
    "ciliumclusterwidenetworkpolicies", "ciliumclusterwidenetworkpolicy",
    "CiliumClusterwideNetworkPolicy", False, GROUP, VERSION, ("ccnp",),
    "ciliumclusterwidenetworkpolicies.yaml.gz", ("cilium", "ciliumpolicy"),
)
NAMESPACES = ResourceType("namespaces", "namespace", "Namespace", False, "", "v1", ("ns",))
CILIUM_RESOURCES = {CNP.plural: CNP, CCNP.plural: CCNP}
ALL_RESOURCES = {NAMESPACES.plural: NAMESPACES, **CILIUM_RESOURCES}

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease", "tasks")

Key = tuple[str, str | None, str]  # (plural, namespace or None, name)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def _details(rt: ResourceType, name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "group": rt.group, "kind": rt.plural, **extra}


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.group_resource} "{name}" not found',
                    _details(rt, name))


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{rt.group_resource} "{name}" already exists',
                    _details(rt, name))


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    """``errors.NewConflict``: a stale write or a failed precondition."""
    return ApiError(409, "Conflict",
                    f'Operation cannot be fulfilled on {rt.group_resource} "{name}": {why}',
                    _details(rt, name))


STALE = ("the object has been modified; please apply your changes to the latest version "
         "and try again")


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(rt: ResourceType, name: str, causes: list[dict[str, str]]) -> ApiError:
    """``errors.NewInvalid``: 422 with one cause per field error."""
    summary = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    if len(causes) > 1:
        summary = f"[{summary}]"
    kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {summary}',
                    {"name": name, "group": rt.group, "kind": rt.kind, "causes": causes})
