"""The object store: one lock around one dict, a resourceVersion counter, and the event
log that list and watch read (the sandbox's etcd plus the registry's write semantics).

Fidelity rows implemented here (tests in tests/test_sandbox_kube.py):

* **create**: 201 with server-set ``uid``, ``resourceVersion``, ``creationTimestamp``,
  ``generation`` 1; ``generateName``; an existing name is 409 ``AlreadyExists``; a missing
  namespace 404; ``status`` is dropped (the CRDs have a status subresource).
* **update / patch**: 404 when absent (custom resources never create on update); a
  ``metadata.resourceVersion`` that is not the current one is 409 ``Conflict``; without
  one the write is unconditional; a write that changes nothing keeps the resourceVersion;
  ``generation`` grows only when something outside metadata and status changes;
  ``status`` changes are ignored.
* **delete preconditions**: ``DeleteOptions.preconditions`` ``uid`` / ``resourceVersion``
  that do not match are 409 ``Conflict`` ("Precondition failed: UID in precondition: …"),
  and nothing is deleted; the answer is a ``Status`` Success with the deleted uid; a
  namespace's objects go with it.
* **dryRun=All** on every write: validated and answered, nothing stored.
* **resourceVersion** is one counter for all objects (etcd's revision); every change is an
  event (ADDED / MODIFIED / DELETED, a deleted object carries the deletion's version) in a
  bounded log; a watch from a version older than the log is 410 ``Expired``.

Stored objects are immutable: every write stores a new dict and nothing changes a stored
one in place, so reads, responses and events share them without copying. The store takes
ownership of request bodies; the in-process test API (``SandboxKube``) hands out copies.
"""

from __future__ import annotations

import copy
import secrets
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from sandbox.kube import apply, schema, validation
from sandbox.kube.patches import json_patch, merge_patch
from sandbox.kube.resources import (
    ALL_RESOURCES,
    NAMESPACES,
    STALE,
    ApiError,
    Key,
    ResourceType,
    already_exists,
    bad_request,
    conflict,
    not_found,
    now,
)
from sandbox.kube.selectors import (
    FieldRequirement,
    Requirement,
    fields_match,
    selector_matches,
)

EVENT_LOG_SIZE = 50_000


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    key: Key
    object: dict[str, Any]
    prev_labels: dict[str, str] | None = None  # before a MODIFIED (selector transitions)


@dataclass
class WriteOptions:
    manager: str
    dry_run: bool = False
    field_validation: str = "Warn"
    force: bool = False  # server-side apply only


class ObjectStore:
    def __init__(self, event_log_size: int = EVENT_LOG_SIZE) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified on every event
        self.objects: dict[Key, dict[str, Any]] = {}
        self.rv = 0
        self.events: deque[Event] = deque(maxlen=event_log_size)

    # ------------------------------------------------------------------ reads

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        """The stored object (shared: never modify it)."""
        with self.lock:
            obj = self.objects.get((rt.plural, namespace, name))
            if obj is None:
                raise not_found(rt, name)
            return obj

    def list_objects(self, rt: ResourceType, namespace: str | None, reqs: list[Requirement],
             fields: list[FieldRequirement] | None = None) -> tuple[list[dict[str, Any]], int]:
        with self.lock:
            items = [o for k, o in sorted(self.objects.items(), key=_order)
                     if k[0] == rt.plural and (namespace is None or k[1] == namespace)
                     and selector_matches(reqs, labels_of(o)) and fields_match(fields or [], o)]
            return items, self.rv

    def oldest_watchable_rv(self) -> int:
        """A watch may start at any version from this one on (older: 410 Expired)."""
        with self.lock:
            return self.events[0].rv - 1 if self.events else self.rv

    # ------------------------------------------------------------------ writes

    def create(self, rt: ResourceType, namespace: str | None, body: Any, opts: WriteOptions
               ) -> tuple[dict[str, Any], list[str]]:
        obj = validation.check_type(rt, body)
        warnings = validation.prepare(rt, obj, opts.field_validation)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{secrets.token_hex(3)[:5]}"
        if meta.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        if schema.has_status_subresource(rt):
            obj.pop("status", None)
        validation.validate(rt, obj, namespace)
        with self.lock:
            self._require_namespace(rt, namespace)
            key: Key = (rt.plural, namespace, meta["name"])
            if key in self.objects:
                raise already_exists(rt, meta["name"])
            apply.record_update(rt, None, obj, opts.manager, now())
            return self._commit(rt, key, None, obj, opts.dry_run), warnings

    def replace(self, rt: ResourceType, namespace: str | None, name: str, body: Any,
                opts: WriteOptions) -> tuple[dict[str, Any], list[str]]:
        new = validation.check_type(rt, body)
        _check_name(new, name)
        warnings = validation.prepare(rt, new, opts.field_validation)
        with self.lock:
            current = self._current(rt, namespace, name)
            requested = new["metadata"].get("resourceVersion")
            return self._update(rt, namespace, name, current, new, requested, opts), warnings

    def patch(self, rt: ResourceType, namespace: str | None, name: str, body: Any,
              content_type: str, opts: WriteOptions) -> tuple[dict[str, Any], list[str]]:
        if content_type == "application/apply-patch+yaml":
            return self.apply(rt, namespace, name, body, opts)
        with self.lock:
            current = self._current(rt, namespace, name)
            if content_type == "application/merge-patch+json":
                if not isinstance(body, dict):
                    raise bad_request("a merge patch must be a JSON object")
                new = merge_patch(current, body)
                requested = (body.get("metadata") or {}).get("resourceVersion")
            elif content_type == "application/json-patch+json":
                new = json_patch(current, body)
                requested = (new.get("metadata") or {}).get("resourceVersion")
                if requested == current["metadata"]["resourceVersion"]:
                    requested = None
            else:
                raise ApiError(
                    415, "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: application/json-patch+json, application/merge-patch+json, "
                    f"application/apply-patch+yaml (got {content_type})")
            new = validation.check_type(rt, new)
            _check_name(new, name)
            warnings = validation.prepare(rt, new, opts.field_validation)
            return self._update(rt, namespace, name, current, new, requested, opts), warnings

    def apply(self, rt: ResourceType, namespace: str | None, name: str, body: Any,
              opts: WriteOptions) -> tuple[dict[str, Any], list[str]]:
        """Server-side apply: create or merge ``body`` as ``opts.manager``."""
        config = validation.check_type(rt, body)
        _check_name(config, name)
        warnings = validation.prepare(rt, config, opts.field_validation, defaults=False)
        with self.lock:
            live = self.objects.get((rt.plural, namespace, name))
            if live is None:
                self._require_namespace(rt, namespace)
                base: dict[str, Any] = {"apiVersion": rt.api_version, "kind": rt.kind,
                                        "metadata": {"name": name}}
            else:
                base = live
            new = apply.server_side_apply(rt, base, config, opts.manager, opts.force, now())
            if rt.namespaced:
                new["metadata"]["namespace"] = namespace
            schema.apply_defaults(schema.schema_for(rt), new)
            if live is None:
                new.pop("status", None)
                new["metadata"].pop("resourceVersion", None)
                validation.validate(rt, new, namespace)
                return self._commit(rt, (rt.plural, namespace, name), None, new,
                                    opts.dry_run), warnings
            return self._finish_update(rt, namespace, name, live, new, opts), warnings

    def delete(self, rt: ResourceType, namespace: str | None, name: str,
               preconditions: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        with self.lock:
            current = self._current(rt, namespace, name)
            meta = current["metadata"]
            uid, rv = preconditions.get("uid"), preconditions.get("resourceVersion")
            if uid is not None and uid != meta.get("uid"):
                raise conflict(rt, name, f"Precondition failed: UID in precondition: {uid}, "
                                         f"UID in object meta: {meta.get('uid')}")
            if rv is not None and str(rv) != meta.get("resourceVersion"):
                raise conflict(rt, name, "Precondition failed: ResourceVersion in "
                                         f"precondition: {rv}, ResourceVersion in object "
                                         f"meta: {meta.get('resourceVersion')}")
            if not dry_run:
                self.remove((rt.plural, namespace, name))
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": rt.group, "kind": rt.plural,
                            "uid": meta.get("uid")}}

    # ------------------------------------------------------------------ direct access

    def put(self, key: Key, obj: dict[str, Any], *, keep_metadata: bool = False
            ) -> dict[str, Any]:
        """Store ``obj`` as is (no validation). ``keep_metadata`` keeps its uid and
        resourceVersion (a restore); otherwise they are stamped as on create."""
        with self.lock:
            obj = copy.deepcopy(obj)
            if keep_metadata:
                # Before the server starts: no watcher can have seen older versions.
                self.rv = max(self.rv, int(obj["metadata"].get("resourceVersion") or 0))
                self.objects[key] = obj
                return copy.deepcopy(obj)
            old = self.objects.get(key)
            return copy.deepcopy(self._commit(ALL_RESOURCES.get(key[0], NAMESPACES), key, old,
                                              obj, False, keep_identity=False))

    def remove(self, key: Key) -> bool:
        """Delete one object (and a namespace's objects with it); False when absent."""
        with self.lock:
            obj = self.objects.pop(key, None)
            if obj is None:
                return False
            self.rv += 1
            gone = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
            self._event("DELETED", key, gone, self.rv, obj)
            if key[0] == NAMESPACES.plural:
                for inner in [k for k in self.objects if k[1] == key[2]]:
                    self.remove(inner)
            return True

    def exists(self, key: Key) -> bool:
        with self.lock:
            return key in self.objects

    # ------------------------------------------------------------------ internals

    def _current(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.objects.get((rt.plural, namespace, name))
        if obj is None:
            raise not_found(rt, name)
        return obj

    def _require_namespace(self, rt: ResourceType, namespace: str | None) -> None:
        if rt.namespaced and (NAMESPACES.plural, None, namespace) not in self.objects:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           {"name": namespace, "kind": "namespaces"})

    def _update(self, rt: ResourceType, namespace: str | None, name: str,
                current: dict[str, Any], new: dict[str, Any], requested_rv: Any,
                opts: WriteOptions) -> dict[str, Any]:
        if requested_rv not in (None, "") and str(requested_rv) != (
            current["metadata"]["resourceVersion"]
        ):
            raise conflict(rt, name, STALE)
        apply.record_update(rt, current, new, opts.manager, now())
        return self._finish_update(rt, namespace, name, current, new, opts)

    def _finish_update(self, rt: ResourceType, namespace: str | None, name: str,
                       current: dict[str, Any], new: dict[str, Any], opts: WriteOptions
                       ) -> dict[str, Any]:
        meta = new["metadata"]
        if rt.namespaced:
            meta["namespace"] = namespace
        if schema.has_status_subresource(rt):
            new.pop("status", None)
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
        validation.validate(rt, new, namespace)
        for field in ("uid", "creationTimestamp", "resourceVersion", "generation"):
            if field in current["metadata"]:
                meta[field] = current["metadata"][field]
            else:
                meta.pop(field, None)
        if new == current:
            return current  # a no-op write keeps the resourceVersion
        return self._commit(rt, (rt.plural, namespace, name), current, new, opts.dry_run)

    def _commit(self, rt: ResourceType, key: Key, old: dict[str, Any] | None,
                new: dict[str, Any], dry_run: bool, keep_identity: bool = True
                ) -> dict[str, Any]:
        """Stamp server fields, store (unless dry run) and log the event."""
        meta = new.setdefault("metadata", {})
        if old is None or not keep_identity:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            if rt is not NAMESPACES:
                meta["generation"] = 1
        elif _spec_changed(old, new):
            meta["generation"] = int(old["metadata"].get("generation", 0)) + 1
        if dry_run:
            meta.setdefault("resourceVersion", "")
            return new
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.objects[key] = new
        self._event("ADDED" if old is None else "MODIFIED", key, new, self.rv, old)
        return new

    def _event(self, kind: str, key: Key, obj: dict[str, Any], rv: int,
               old: dict[str, Any] | None) -> None:
        prev = None if old is None else dict((old.get("metadata") or {}).get("labels") or {})
        self.events.append(Event(rv, kind, key, obj, prev))
        self.changed.notify_all()


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _order(item: tuple[Key, dict[str, Any]]) -> tuple[str, str]:
    return (item[0][1] or "", item[0][2])


def _spec_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    def body(o: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in o.items() if k not in ("metadata", "status")}

    return body(old) != body(new)


def _check_name(obj: dict[str, Any], name: str) -> None:
    meta = obj.setdefault("metadata", {})
    if meta.get("name") not in (None, "", name):
        raise bad_request(f"the name of the object ({meta.get('name')}) does not match the "
                          f"name on the URL ({name})")
    meta["name"] = name
