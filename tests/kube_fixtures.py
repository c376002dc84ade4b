"""Shared fixtures for the Kubernetes / Cilium tests: the sandbox API server, clients
pointed at it, and validators built from the upstream Cilium CRD schemas.

Use from a test module with ``pytest_plugins = ["tests.kube_fixtures"]`` (test modules
import nothing from here, so pytest can load it as a plugin with assertion rewriting).
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from kubernetes import client

from activities.kubernetes import KubernetesActivities
from sandbox.kube import SandboxKube

REPO_ROOT = Path(__file__).resolve().parents[1]
# The folder ../shared beside the repository (CI copies shared/ beside a fresh clone).
SHARED_CILIUM = Path(__file__).resolve().parents[2] / "shared" / "cilium"
VENDORED_CRDS = REPO_ROOT / "sandbox" / "kube" / "crds"
CRD_FILES = {
    "ciliumnetworkpolicies": "ciliumnetworkpolicies.yaml",
    "ciliumclusterwidenetworkpolicies": "ciliumclusterwidenetworkpolicies.yaml",
}
TASK_NAMESPACES = ["tasks", "batch"]
LABEL_KEY = "privnet.dev/org-id"

# The upstream CRDs: ../shared/cilium when present, else the byte-identical copy vendored
# in sandbox/kube/crds (tests/test_sandbox_kube_schema.py checks they are the same).
CRDS_PRESENT = all((SHARED_CILIUM / f).is_file() for f in CRD_FILES.values())


def crd_text(plural: str) -> str:
    if CRDS_PRESENT:
        return (SHARED_CILIUM / CRD_FILES[plural]).read_text()
    return gzip.decompress((VENDORED_CRDS / f"{CRD_FILES[plural]}.gz").read_bytes()).decode()


_format_checker = FormatChecker()


@_format_checker.checks("cidr", raises=ValueError)
def _is_cidr(value: object) -> bool:
    # Kubernetes' "cidr" format is Go's net.ParseCIDR: an address with a prefix length.
    if not isinstance(value, str):
        return True
    if "/" not in value:
        raise ValueError(f"{value!r} has no prefix length")
    ipaddress.ip_network(value, strict=False)
    return True


@cache
def crd_validator(plural: str) -> Draft202012Validator:
    """A jsonschema validator for the served version's openAPIV3Schema of one CRD."""
    crd = yaml.load(crd_text(plural), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v2" and v["served"]]
    schema = version["schema"]["openAPIV3Schema"]
    return Draft202012Validator(schema, format_checker=_format_checker)


def _crd_errors(plural: str, obj: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in crd_validator(plural).iter_errors(obj)
    ]


@pytest.fixture(scope="session")
def crd_errors() -> Callable[[str, dict[str, Any]], list[str]]:
    """``crd_errors(plural, obj)`` → the CRD schema violations of ``obj`` (empty = valid),
    by jsonschema over the upstream CRD (independent of the sandbox's validator)."""
    return _crd_errors


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def sandbox_kube() -> Iterator[SandboxKube]:
    kube = SandboxKube(["default", "kube-system", *TASK_NAMESPACES])
    kube.start()
    try:
        yield kube
    finally:
        kube.stop()


@dataclass
class HttpResult:
    status: int
    body: Any
    headers: dict[str, str]


@pytest.fixture
def kube_http(sandbox_kube: SandboxKube) -> Callable[..., HttpResult]:
    """``kube_http(method, path, body=None, content_type=..., headers=...)``: one raw HTTP
    request to the sandbox (status codes and headers as a client sees them)."""

    def call(method: str, path: str, body: Any = None,
             content_type: str = "application/json", headers: dict[str, str] | None = None,
             ) -> HttpResult:
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        req = urllib.request.Request(f"{sandbox_kube.url}{path}", data=data, method=method,
                                     headers={"Content-Type": content_type, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
        except urllib.error.HTTPError as e:
            raw, status, hdrs = e.read(), e.code, dict(e.headers)
        return HttpResult(status, json.loads(raw) if raw else None, hdrs)

    return call


@pytest.fixture
def kube_api_client(sandbox_kube: SandboxKube) -> Iterator[client.ApiClient]:
    api_client = client.ApiClient(client.Configuration(host=sandbox_kube.url))
    try:
        yield api_client
    finally:
        api_client.close()


@pytest.fixture
def custom_api(kube_api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api_client)


@pytest.fixture
def kube_activities(kube_api_client: client.ApiClient) -> KubernetesActivities:
    """Activities for the single task namespace ``tasks``."""
    return KubernetesActivities(kube_api_client, ["tasks"], LABEL_KEY)


@pytest.fixture
def kube_activities_multi(kube_api_client: client.ApiClient) -> KubernetesActivities:
    """Activities for two task namespaces (``tasks``, ``batch``)."""
    return KubernetesActivities(kube_api_client, list(TASK_NAMESPACES), LABEL_KEY)
