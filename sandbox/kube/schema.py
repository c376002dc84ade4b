"""The Cilium CRDs' structural schemas: loading, pruning, defaulting and validation.

The CRDs are vendored in ``crds/`` (see ``crds/SOURCE.md``), so a pip-installed sandbox
needs nothing beside the package. What the real API server does with a custom resource's
body, in its order (``apiextensions-apiserver/pkg/apiserver/schema/pruning``,
``.../schema/defaulting``, ``.../validation``), and what this module copies:

* **pruning** (fidelity row "unknown fields"): fields the structural schema does not
  declare are dropped silently, at any depth (a CRD with ``preserveUnknownFields: false``);
  ``metadata`` keeps only ``ObjectMeta`` fields; a ``null`` for a field that is not
  ``nullable`` is dropped. ``prune`` returns the dropped paths, so a request with
  ``fieldValidation=Strict`` is refused and ``Warn`` answers a ``Warning`` header;
* **defaulting**: ``default`` values of absent properties are filled in;
* **validation** (fidelity row "422 Invalid"): ``type``, ``x-kubernetes-int-or-string``,
  ``properties``/``additionalProperties``/``items``, ``required``, ``enum``, ``pattern``
  (RE2 searched, as Go does), ``format`` (``cidr``, ``date-time``, ``int32``/``int64``;
  other formats are not checked, as by the server), ``min/maxLength``, ``min/maxItems``,
  ``minimum``/``maximum``, ``oneOf``/``anyOf``. Messages follow the server's wording.
  Not modelled: CEL ``x-kubernetes-validations`` (the Cilium CRDs have none).
"""

from __future__ import annotations

import gzip
import ipaddress
import re
from datetime import datetime
from functools import cache
from importlib import resources as importlib_resources
from typing import Any

import yaml

from sandbox.kube.resources import ResourceType

Path = tuple[str, ...]
Cause = dict[str, str]

# ObjectMeta's fields: everything else under metadata is dropped, as decoding does.
META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields",
})


# --------------------------------------------------------------------------- loading


@cache
def crd_text(crd_file: str) -> str:
    """The vendored upstream CRD, uncompressed (byte-for-byte the upstream text)."""
    data = importlib_resources.files("sandbox.kube").joinpath("crds", crd_file).read_bytes()
    return gzip.decompress(data).decode()


@cache
def _crd(crd_file: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 20x faster
    doc = yaml.load(crd_text(crd_file), Loader=loader)  # noqa: S506 - a safe loader
    assert isinstance(doc, dict)
    return doc


def crd(rt: ResourceType) -> dict[str, Any] | None:
    return _crd(rt.crd_file) if rt.crd_file else None


@cache
def served_version(rt: ResourceType) -> dict[str, Any] | None:
    """The CRD's entry for ``rt.version`` (shared: never modify it)."""
    doc = crd(rt)
    if doc is None:
        return None
    (version,) = [v for v in doc["spec"]["versions"] if v["name"] == rt.version and v["served"]]
    return dict(version)


@cache
def schema_for(rt: ResourceType) -> dict[str, Any] | None:
    """The served version's ``openAPIV3Schema`` (None for built-in kinds; shared: never
    modify it)."""
    version = served_version(rt)
    return None if version is None else dict(version["schema"]["openAPIV3Schema"])


@cache
def has_status_subresource(rt: ResourceType) -> bool:
    version = served_version(rt)
    return bool(version and "status" in (version.get("subresources") or {}))


def child_schema(schema: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    """The schema of ``key`` inside an object schema (None = not declared)."""
    if schema is None:
        return None
    props = schema.get("properties")
    if isinstance(props, dict) and key in props:
        return props[key]  # type: ignore[no-any-return]
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        return extra
    return None


def is_atomic(schema: dict[str, Any] | None, value: Any) -> bool:
    """Whether server-side apply owns ``value`` as one field: lists (``atomic`` is the CRD
    default; ``set`` lists are treated as atomic too), atomic maps and scalars."""
    if not isinstance(value, dict):
        return True
    return bool(schema and schema.get("x-kubernetes-map-type") == "atomic")


# --------------------------------------------------------------------------- pruning


def _declares_children(schema: dict[str, Any]) -> bool:
    return "properties" in schema or isinstance(schema.get("additionalProperties"), dict)


def prune(schema: dict[str, Any] | None, obj: dict[str, Any]) -> list[str]:
    """Drop undeclared fields from ``obj`` in place (root: apiVersion, kind, metadata are
    the object's own); returns the dropped field paths (``.spec.foo``)."""
    dropped: list[str] = []
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for key in [k for k in meta if k not in META_FIELDS]:
            del meta[key]
            dropped.append(f".metadata.{key}")
    if schema is None:
        return dropped
    for key in [k for k in obj if k not in ("apiVersion", "kind", "metadata")]:
        sub = child_schema(schema, key)
        if sub is None:
            del obj[key]
            dropped.append(f".{key}")
        elif obj[key] is None and not sub.get("nullable"):
            del obj[key]
        else:
            obj[key] = _prune(sub, obj[key], f".{key}", dropped)
    return dropped


def _prune(schema: dict[str, Any], value: Any, path: str, dropped: list[str]) -> Any:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict) and _declares_children(schema):
        for key in list(value):
            sub = child_schema(schema, key)
            if sub is None:
                del value[key]
                dropped.append(f"{path}.{key}")
            elif value[key] is None and not sub.get("nullable"):
                del value[key]
            else:
                value[key] = _prune(sub, value[key], f"{path}.{key}", dropped)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value[:] = [_prune(schema["items"], v, f"{path}[{i}]", dropped)
                    for i, v in enumerate(value)]
    return value


def apply_defaults(schema: dict[str, Any] | None, value: Any) -> None:
    """Fill ``default`` values of absent properties, in place."""
    if schema is None:
        return
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = sub["default"]
        for key, item in value.items():
            sub = child_schema(schema, key)
            if sub is not None and key != "metadata":
                apply_defaults(sub, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)


# --------------------------------------------------------------------------- validation


def _go_value(value: Any) -> str:
    """How the server quotes a value in ``Invalid value: ...``."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    if value is None:
        return '"null"'
    return str(value)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_ok(schema: dict[str, Any], value: Any) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    want = schema.get("type")
    if want is None:
        return True
    have = _type_name(value)
    return have == want or (want == "number" and have == "integer")


def _is_cidr(value: str) -> bool:
    """Go's ``net.ParseCIDR``: an address, a slash, a decimal prefix length."""
    host, slash, prefix = value.partition("/")
    if not slash or not prefix.isdigit() or (len(prefix) > 1 and prefix[0] == "0"):
        return False
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return int(prefix) <= addr.max_prefixlen


def _is_date_time(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in value or "t" in value


_FORMATS = {
    "cidr": _is_cidr,
    "date-time": _is_date_time,
}
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    # RE2's \PC ("not in category Other") has no Python spelling: control characters are
    # the Other characters a manifest can carry, so exclude those.
    return re.compile(pattern.replace(r"\PC", r"[^\x00-\x1f\x7f-\x9f]"))


def validate(schema: dict[str, Any] | None, obj: dict[str, Any]) -> list[Cause]:
    """The schema errors of a pruned object (root metadata is checked elsewhere)."""
    causes: list[Cause] = []
    if schema is None:
        return causes
    for key in schema.get("required") or []:
        if key not in obj:
            causes.append(_required(key))
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    for key, value in body.items():
        sub = child_schema(schema, key)
        if sub is not None:
            _validate(sub, value, key, causes)
    return causes


def _required(field: str) -> Cause:
    return {"reason": "FieldValueRequired", "message": "Required value", "field": field}


def _invalid(field: str, value: Any, detail: str) -> Cause:
    return {"reason": "FieldValueInvalid",
            "message": f"Invalid value: {_go_value(value)}: {detail}", "field": field}


def _validate(schema: dict[str, Any], value: Any, path: str, causes: list[Cause]) -> None:
    if not _type_ok(schema, value):
        want = schema.get("type") or "integer or string"
        causes.append({"reason": "FieldValueTypeInvalid",
                       "message": f"Invalid value: {_go_value(value)}: {path} in body must be "
                                  f"of type {want}: \"{_type_name(value)}\"",
                       "field": path})
        return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(_go_value(v) for v in schema["enum"])
        causes.append({"reason": "FieldValueNotSupported",
                       "message": f"Unsupported value: {_go_value(value)}: supported values: "
                                  f"{allowed}", "field": path})
    if isinstance(value, str):
        _validate_string(schema, value, path, causes)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _validate_number(schema, value, path, causes)
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append({"reason": "FieldValueTooMany",
                           "message": f"Too many: {len(value)}: must have at most "
                                      f"{schema['maxItems']} items", "field": path})
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(_invalid(path, value, f"{path} in body should have at least "
                                                f"{schema['minItems']} items"))
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                _validate(schema["items"], item, f"{path}[{i}]", causes)
    elif isinstance(value, dict):
        for key in schema.get("required") or []:
            if key not in value:
                causes.append(_required(f"{path}.{key}"))
        for key, item in value.items():
            sub = child_schema(schema, key)
            if sub is not None:
                _validate(sub, item, f"{path}.{key}", causes)
    _validate_logic(schema, value, path, causes)


def _validate_string(schema: dict[str, Any], value: str, path: str, causes: list[Cause]) -> None:
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        causes.append({"reason": "FieldValueTooLong",
                       "message": f"Too long: may not be more than {schema['maxLength']} bytes",
                       "field": path})
    if "minLength" in schema and len(value) < schema["minLength"]:
        causes.append(_invalid(path, value, f"{path} in body should be at least "
                                            f"{schema['minLength']} chars long"))
    if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
        causes.append(_invalid(path, value,
                               f"{path} in body should match '{schema['pattern']}'"))
    check = _FORMATS.get(schema.get("format", ""))
    if check is not None and not check(value):
        causes.append(_invalid(path, value, f"{path} in body must be of type "
                                            f"{schema['format']}: {_go_value(value)}"))


def _validate_number(
    schema: dict[str, Any], value: float, path: str, causes: list[Cause]
) -> None:
    if "maximum" in schema and value > schema["maximum"]:
        causes.append(_invalid(path, value, f"{path} in body should be less than or equal "
                                            f"to {schema['maximum']}"))
    if "minimum" in schema and value < schema["minimum"]:
        causes.append(_invalid(path, value, f"{path} in body should be greater than or "
                                            f"equal to {schema['minimum']}"))
    bounds = _INT_RANGES.get(schema.get("format", ""))
    if bounds and isinstance(value, int) and not bounds[0] <= value <= bounds[1]:
        causes.append(_invalid(path, value, f"{path} in body must be of type "
                                            f"{schema['format']}"))


def _branch_ok(branch: dict[str, Any], value: Any, path: str) -> bool:
    found: list[Cause] = []
    if isinstance(value, dict):
        for key in branch.get("required") or []:
            if key not in value:
                return False
    _validate({**branch, "type": None} if "type" not in branch else branch, value, path, found)
    return not found


def _validate_logic(schema: dict[str, Any], value: Any, path: str, causes: list[Cause]) -> None:
    if "oneOf" in schema:
        valid = sum(_branch_ok(b, value, path) for b in schema["oneOf"])
        if valid != 1:
            found = "none valid" if valid == 0 else f"{valid} valid alternatives"
            causes.append(_invalid(path, value, f"{path} in body must validate one and only "
                                                f"one schema (oneOf). Found {found}"))
    if "anyOf" in schema and not any(_branch_ok(b, value, path) for b in schema["anyOf"]):
        causes.append(_invalid(path, value, f"{path} in body must validate at least one "
                                            "schema (anyOf)"))
