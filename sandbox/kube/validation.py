"""What a write's body goes through before it is stored: decode checks, pruning,
defaulting, metadata validation and the CRD schema (fidelity rows "400 BadRequest",
"unknown fields", "422 Invalid").

``fieldValidation`` (``Strict`` | ``Warn`` | ``Ignore``; default ``Warn``, as since
Kubernetes 1.27): an unknown field is a 400 under ``Strict`` (kubectl's default), a
``Warning`` header under ``Warn``, and silently dropped under ``Ignore``; it is dropped
from the stored object in every case.
"""

from __future__ import annotations

import re
from typing import Any

from sandbox.kube import schema
from sandbox.kube.resources import NAMESPACES, ApiError, ResourceType, bad_request, invalid

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
FIELD_VALIDATION = ("Strict", "Warn", "Ignore")

SUBDOMAIN_HELP = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    r"regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*"
    r"[a-z0-9])?)*')"
)
LABEL_HELP = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


def field_validation(query: dict[str, list[str]]) -> str:
    value = query.get("fieldValidation", ["Warn"])[0] or "Warn"
    if value not in FIELD_VALIDATION:
        raise bad_request(f'fieldValidation must be one of "Ignore", "Warn", or "Strict", '
                          f'got "{value}"')
    return value


def check_type(rt: ResourceType, obj: Any) -> dict[str, Any]:
    """The decode step: a JSON object of this resource's apiVersion and kind."""
    if not isinstance(obj, dict):
        raise bad_request("the body of the request must be a JSON or YAML object")
    if obj.get("apiVersion") not in (None, rt.api_version) or obj.get("kind") not in (
        None, rt.kind
    ):
        raise bad_request(
            f"the API version in the data ({obj.get('apiVersion')}) does not match the "
            f"expected API version ({rt.api_version})"
            if obj.get("apiVersion") != rt.api_version
            else f"the kind in the data ({obj.get('kind')}) does not match the expected "
            f"kind ({rt.kind})"
        )
    if "metadata" in obj and not isinstance(obj["metadata"], dict):
        raise bad_request("metadata must be an object")
    obj.setdefault("apiVersion", rt.api_version)
    obj.setdefault("kind", rt.kind)
    return obj


def prepare(rt: ResourceType, obj: dict[str, Any], mode: str, *, defaults: bool = True
            ) -> list[str]:
    """Prune (and default) ``obj`` in place; returns the warnings for dropped fields (or
    raises 400 under ``Strict``)."""
    dropped = schema.prune(schema.schema_for(rt), obj)
    if defaults:
        schema.apply_defaults(schema.schema_for(rt), obj)
    if dropped and mode == "Strict":
        fields = ", ".join(f'unknown field "{d.lstrip(".")}"' for d in dropped)
        raise bad_request(f"strict decoding error: {fields}")
    return [f'unknown field "{d.lstrip(".")}"' for d in dropped] if mode == "Warn" else []


def validate(rt: ResourceType, obj: dict[str, Any], url_namespace: str | None) -> None:
    """Raise 400 / 422 for a body the real server (and the CRD) would refuse."""
    meta = obj.setdefault("metadata", {})
    name = meta.get("name") or ""
    if rt.namespaced and meta.get("namespace") not in (None, "", url_namespace):
        raise bad_request("the namespace of the provided object does not match the namespace "
                          "sent on the request")
    causes: list[dict[str, str]] = []

    def bad(field: str, value: Any, detail: str) -> None:
        causes.append({"reason": "FieldValueInvalid",
                       "message": f'Invalid value: "{value}": {detail}', "field": field})

    if not name:
        causes.append({"reason": "FieldValueRequired", "field": "metadata.name",
                       "message": "Required value: name or generateName is required"})
    elif rt is NAMESPACES and not _DNS_LABEL.match(name):
        bad("metadata.name", name, "a lowercase RFC 1123 label must consist of lower case "
            "alphanumeric characters or '-', and must start and end with an alphanumeric "
            "character")
    elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        bad("metadata.name", name, SUBDOMAIN_HELP)
    for field in ("labels", "annotations"):
        values = meta.get(field)
        if values is None:
            continue
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            bad(f"metadata.{field}", "object", "must be a map of string keys to string values")
            continue
        for key, value in values.items():
            if not _qualified_name_ok(key):
                bad(f"metadata.{field}", key, "name part must consist of alphanumeric "
                    "characters, '-', '_' or '.', and must start and end with an alphanumeric "
                    "character, with an optional DNS subdomain prefix and '/'")
            if field == "labels" and (len(value) > 63 or not _LABEL_VALUE.match(value)):
                bad("metadata.labels", value, LABEL_HELP)
    causes += schema.validate(schema.schema_for(rt), obj)
    if causes:
        raise invalid(rt, name, causes)


def _qualified_name_ok(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def raise_if_apply_without_manager(query: dict[str, list[str]]) -> str:
    manager = query.get("fieldManager", [""])[0]
    if not manager:
        raise ApiError(422, "Invalid",
                       'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                       "is required for apply patch",
                       {"group": "meta.k8s.io", "kind": "PatchOptions",
                        "causes": [{"reason": "FieldValueRequired", "field": "fieldManager",
                                    "message": "Required value: is required for apply patch"}]})
    return manager
