"""``SandboxKube``: the threaded HTTP server and the in-process test API around the store.

Test API (stable; the activity tests, the soak and the dev stack use it):

* lifecycle: ``start(port=0, host=) -> url``, ``stop()``, ``url``, context manager;
* objects: ``objects`` (deep copy by (plural, namespace, name)), ``get_object``,
  ``objects_of(plural)``, ``policies(namespace=None)``, ``put_object`` (stored as is, as by someone with direct
  etcd access), ``remove_object`` (an operator deleting by hand), ``add_namespace``,
  ``clear(plural=None)`` (every non-namespace object, or those of one resource), ``snapshot()`` / ``restore()`` (keeping uids
  and resourceVersions across a dev-stack restart);
* requests: ``requests`` (method, path, query, parsed body, status), ``writes`` (count per
  verb: create / replace / patch / delete), ``write_count``, ``conflicts`` (409s served),
  ``reset_counters()``, ``on_request(method, path)`` (called before each object request;
  may block, e.g. to make two writers read the same version);
* faults: ``inject_error(code, method=, path_contains=, times=)``, ``set_faults(**rates)``
  / ``set_faults(FaultConfig)``, ``clear_faults()``, ``fault_state()``.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from http.server import ThreadingHTTPServer
from typing import Any

from sandbox.kube.faults import FaultConfig, FaultInjector
from sandbox.kube.http import Handler, RecordedRequest
from sandbox.kube.resources import (
    ALL_RESOURCES,
    CNP,
    DEFAULT_NAMESPACES,
    NAMESPACES,
    Key,
)
from sandbox.kube.store import EVENT_LOG_SIZE, ObjectStore


class SandboxKube:
    """A Kubernetes API server emulator for the Cilium policy CRDs (see the package doc)."""

    def __init__(self, namespaces: Iterable[str] = DEFAULT_NAMESPACES, *,
                 bookmark_interval: float = 30.0, event_log_size: int = EVENT_LOG_SIZE) -> None:
        self.store = ObjectStore(event_log_size)
        self.lock = self.store.lock
        self.faults = FaultInjector()
        self.bookmark_interval = bookmark_interval
        self.stopping = threading.Event()
        self.writes: Counter[str] = Counter()
        self.conflicts = 0
        self.requests: list[RecordedRequest] = []
        self.on_request: Callable[[str, str], None] | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for ns in namespaces:
            self.add_namespace(ns)

    # ------------------------------------------------------------------ lifecycle

    def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        if self._server is not None:
            raise RuntimeError("SandboxKube is already started")
        owner = self

        class BoundHandler(Handler):
            kube = owner

        self.stopping.clear()
        self._server = ThreadingHTTPServer((host, port), BoundHandler)
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
        self.stopping.set()  # ends open watches
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

    # ------------------------------------------------------------------ objects

    def add_namespace(self, name: str) -> None:
        key: Key = (NAMESPACES.plural, None, name)
        with self.lock:
            if not self.store.exists(key):
                self.store.put(key, {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": name}})

    @property
    def objects(self) -> dict[Key, dict[str, Any]]:
        """A deep copy of every stored object by (plural, namespace, name)."""
        with self.lock:
            return copy.deepcopy(self.store.objects)

    def get_object(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self.store.objects.get((plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects_of(self, plural: str) -> list[dict[str, Any]]:
        """Deep copies of the stored objects of one resource, by namespace and name."""
        with self.lock:
            return [copy.deepcopy(o) for (p, ns, name), o in sorted(
                self.store.objects.items(), key=lambda kv: (kv[0][1] or "", kv[0][2]))
                if p == plural]

    def policies(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Stored CiliumNetworkPolicies (of one namespace, or all), by namespace and name."""
        with self.lock:
            return [
                copy.deepcopy(o)
                for (plural, ns, _), o in sorted(
                    self.store.objects.items(), key=lambda kv: (kv[0][1] or "", kv[0][2])
                )
                if plural == CNP.plural and (namespace is None or ns == namespace)
            ]

    def put_object(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` directly (bypassing HTTP, validation and counters); server fields
        (uid, resourceVersion, creationTimestamp) are stamped afresh."""
        rt = ALL_RESOURCES.get(plural, NAMESPACES)
        meta = obj["metadata"]
        key: Key = (plural, meta.get("namespace") if rt.namespaced else None, meta["name"])
        return self.store.put(key, obj)

    def remove_object(self, plural: str, namespace: str | None, name: str) -> None:
        """Delete directly (e.g. "an operator deleted the policy by hand")."""
        self.store.remove((plural, namespace, name))

    def clear(self, plural: str | None = None) -> None:
        """Delete every object but the namespaces, or every object of ``plural``
        (watchers see DELETED events)."""
        with self.lock:
            for key in [k for k in self.store.objects if k[0] != NAMESPACES.plural
                        and plural in (None, k[0])]:
                self.store.remove(key)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every non-namespace object, for ``restore`` in a later process."""
        with self.lock:
            return [{"plural": plural, "object": copy.deepcopy(obj)}
                    for (plural, _ns, _name), obj in self.store.objects.items()
                    if plural != NAMESPACES.plural]

    def restore(self, items: Iterable[dict[str, Any]]) -> None:
        """Load a ``snapshot`` before ``start``: uids and resourceVersions are kept, so
        delete preconditions read before a restart still hold after it."""
        for item in items:
            rt = ALL_RESOURCES.get(item["plural"])
            if rt is None:
                continue
            obj = item["object"]
            meta = obj["metadata"]
            if rt.namespaced:
                self.add_namespace(meta["namespace"])
            key: Key = (rt.plural, meta.get("namespace") if rt.namespaced else None,
                        meta["name"])
            self.store.put(key, obj, keep_metadata=True)

    # ------------------------------------------------------------------ faults and counters

    def inject_error(
        self,
        code: int,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests with ``code`` (403, 500, 503...)."""
        self.faults.inject_error(code, method, path_contains, times)

    def set_faults(self, config: FaultConfig | None = None, **rates: Any) -> None:
        """Seeded rate-based faults, e.g. ``set_faults(seed=1, conflict_rate=0.3)``."""
        self.faults.configure(config or FaultConfig(**rates))

    def clear_faults(self) -> None:
        self.faults.clear()

    def fault_state(self) -> dict[str, Any]:
        return self.faults.state()

    def reset_counters(self) -> None:
        with self.lock:
            self.writes.clear()
            self.conflicts = 0
            self.requests.clear()

    @property
    def write_count(self) -> int:
        return sum(self.writes.values())
