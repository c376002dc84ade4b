"""Field ownership: ``metadata.managedFields`` and server-side apply (fidelity rows
"managedFields" and "server-side apply").

Copied from the API server's field manager (``apiserver/pkg/endpoints/handlers/
fieldmanager``, ``structured-merge-diff``) at the granularity privnet and kubectl use:

* every write records who set which fields in ``metadata.managedFields`` (``FieldsV1``:
  ``{"f:spec": {"f:egress": {}}}``), one entry per (manager, operation). An update
  (create / PUT / merge or JSON patch) gives its manager (``?fieldManager=``, else the
  User-Agent up to the first ``/``) the fields it changed and takes them from the others;
* ``PATCH`` with ``application/apply-patch+yaml`` and ``?fieldManager=`` (required) merges
  the applied configuration: fields whose value would change while another manager owns
  them are a 409 ``Conflict`` naming each manager and field, unless ``?force=true`` (then
  ownership moves to the applier); fields the applier set before and omits now are
  removed when nobody else owns them; applying the same configuration again writes
  nothing. Apply creates the object when it does not exist;
* the stripped fields are as upstream: ``apiVersion``, ``kind``, ``metadata`` except
  labels, annotations, ownerReferences and finalizers, and ``status`` (a subresource).

Granularity: objects recurse per field; lists are atomic (the CRD default, and ``set``
lists are treated as atomic too); ``x-kubernetes-map-type: atomic`` maps (Cilium's label
selectors) are one field. Not modelled: associative (``map``) lists, the ``.`` (the map
itself) entries, and the ``subresource`` field of entries.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from sandbox.kube import schema
from sandbox.kube.resources import ApiError, ResourceType

Path = tuple[str, ...]
_MISSING = object()
_OWNED_META = ("labels", "annotations", "ownerReferences", "finalizers")


def manager_from_user_agent(user_agent: str) -> str:
    """The API server's default field manager: the User-Agent up to the first ``/``."""
    return (user_agent.split("/", 1)[0] or "unknown")[:128]


def managed_leaves(rt: ResourceType, obj: dict[str, Any]) -> dict[Path, Any]:
    """Every field a manager can own in ``obj``, with its value."""
    leaves: dict[Path, Any] = {}
    meta = obj.get("metadata") or {}
    for key in _OWNED_META:
        value = meta.get(key)
        if key in ("labels", "annotations") and isinstance(value, dict):
            for k, v in value.items():
                leaves[("metadata", key, k)] = v
        elif value is not None:
            leaves[("metadata", key)] = value
    root = schema.schema_for(rt)
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "metadata"):
            continue
        if key == "status" and schema.has_status_subresource(rt):
            continue
        _leaves(schema.child_schema(root, key), value, (key,), leaves)
    return leaves


def _leaves(sch: dict[str, Any] | None, value: Any, path: Path, out: dict[Path, Any]) -> None:
    if schema.is_atomic(sch, value) or not value:
        out[path] = value
        return
    for key, item in value.items():
        _leaves(schema.child_schema(sch, key), item, (*path, key), out)


def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


def from_fields_v1(tree: Any, prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    if not isinstance(tree, dict):
        return paths
    for key, sub in tree.items():
        if not key.startswith("f:"):
            continue  # ".", "k:", "v:", "i:" entries are not modelled
        path = (*prefix, key[2:])
        children = from_fields_v1(sub, path)
        paths |= children or {path}
    return paths


class _Entry:
    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.fields = from_fields_v1(raw.get("fieldsV1"))
        self.before = set(self.fields)

    @property
    def ident(self) -> tuple[str, str]:
        return (str(self.raw.get("manager", "")), str(self.raw.get("operation", "")))

    def describe(self) -> str:
        """``printManager`` of the upstream conflict message."""
        name = json.dumps(self.raw.get("manager", ""))
        if self.raw.get("operation") == "Update":
            return f"{name} using {self.raw.get('apiVersion')} at {self.raw.get('time')}"
        return name


def _entries(obj: dict[str, Any] | None) -> list[_Entry]:
    raw = ((obj or {}).get("metadata") or {}).get("managedFields") or []
    return [_Entry(copy.deepcopy(e)) for e in raw if isinstance(e, dict)]


def _store_entries(rt: ResourceType, obj: dict[str, Any], entries: list[_Entry],
                   at: str) -> None:
    result = []
    for e in entries:
        if not e.fields:
            continue
        if e.fields != e.before or "time" not in e.raw:
            e.raw["time"] = at
        e.raw.update(apiVersion=rt.api_version, fieldsType="FieldsV1",
                     fieldsV1=to_fields_v1(e.fields))
        result.append(e.raw)
    meta = obj.setdefault("metadata", {})
    if result:
        meta["managedFields"] = result
    else:
        meta.pop("managedFields", None)


def _entry(entries: list[_Entry], manager: str, operation: str) -> _Entry:
    for e in entries:
        if e.ident == (manager, operation):
            return e
    e = _Entry({"manager": manager, "operation": operation})
    entries.append(e)
    return e


def record_update(rt: ResourceType, old: dict[str, Any] | None, new: dict[str, Any],
                  manager: str, at: str) -> None:
    """Set ``new``'s managedFields after ``manager`` wrote ``new`` over ``old``.

    As upstream (``decodeLiveOrNew``): managedFields sent in the request replace the live
    ones (kubectl's migration from client-side apply does this), ``[]`` resets them, and a
    request without them keeps the live ones."""
    before = managed_leaves(rt, old) if old is not None else {}
    after = managed_leaves(rt, new)
    changed = {p for p, v in after.items() if before.get(p, _MISSING) != v}
    removed = set(before) - set(after)
    sent = (new.get("metadata") or {}).get("managedFields")
    entries = _entries(new) if isinstance(sent, list) else _entries(old)
    for e in entries:
        e.fields -= changed | removed
    if changed:
        _entry(entries, manager, "Update").fields |= changed
    _store_entries(rt, new, entries, at)


def server_side_apply(rt: ResourceType, live: dict[str, Any], config: dict[str, Any],
                      manager: str, force: bool, at: str) -> dict[str, Any]:
    """The object after ``manager`` applied ``config`` (a pruned partial object) to
    ``live``; raises the 409 conflict error upstream answers."""
    wanted = managed_leaves(rt, config)
    have = managed_leaves(rt, live)
    entries = _entries(live)
    mine = _entry(entries, manager, "Apply")
    conflicts = [
        (e, path)
        for path, value in sorted(wanted.items())
        if have.get(path, _MISSING) != value
        for e in entries
        if e is not mine and path in e.fields
    ]
    if conflicts and not force:
        raise _conflict_error(conflicts)
    for e, path in conflicts:
        e.fields.discard(path)
    result = copy.deepcopy(live)
    for path, value in wanted.items():
        _set(result, path, copy.deepcopy(value))
    others = set().union(*(e.fields for e in entries if e is not mine))
    for path in mine.fields - set(wanted) - others:
        _remove(result, path)
    mine.fields = set(wanted)
    _store_entries(rt, result, entries, at)
    return result


def _conflict_error(conflicts: list[tuple[_Entry, Path]]) -> ApiError:
    def dotted(path: Path) -> str:
        return "".join(f".{k}" for k in path)

    causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {e.describe()}",
               "field": dotted(p)} for e, p in conflicts]
    if len(conflicts) == 1:
        e, p = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {e.describe()}: {dotted(p)}"
    else:
        by_manager: dict[str, list[str]] = {}
        for e, p in conflicts:
            by_manager.setdefault(e.describe(), []).append(dotted(p))
        lines = []
        for name in sorted(by_manager):
            lines.append(f"conflicts with {name}:")
            lines += [f"- {p}" for p in by_manager[name]]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApiError(409, "Conflict", message, {"causes": causes})


def _set(obj: dict[str, Any], path: Path, value: Any) -> None:
    node = obj
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value


def _remove(obj: dict[str, Any], path: Path) -> None:
    """Delete ``path`` and the maps it leaves empty (never ``metadata`` itself)."""
    trail = [obj]
    for key in path[:-1]:
        child = trail[-1].get(key)
        if not isinstance(child, dict):
            return
        trail.append(child)
    trail[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):
        if trail[depth] or path[:depth] == ("metadata",):
            break
        trail[depth - 1].pop(path[depth - 1], None)
