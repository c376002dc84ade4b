"""Watch (fidelity row "watch"): ``?watch=true`` on a list URL streams
``{"type": ..., "object": ...}`` lines over a chunked response, as
``apiserver/pkg/endpoints/handlers/watch.go`` does for JSON.

* ``resourceVersion`` unset or ``"0"``: an ADDED event per current object, then changes;
  ``N``: every change after ``N`` from the event log; ``N`` older than the log: one
  ``ERROR`` event with a 410 ``Expired`` Status, then the stream ends (clients re-list).
* ``labelSelector`` / ``fieldSelector`` filter events; an object that stops matching is
  sent as DELETED, one that starts matching as ADDED (the watch cache's transitions).
* ``allowWatchBookmarks=true``: a ``BOOKMARK`` carrying the current resourceVersion every
  ``bookmark_interval`` seconds.
* ``timeoutSeconds`` ends the stream (default 30 minutes); so does stopping the sandbox.

Not modelled: ``sendInitialEvents`` / watch-list, ``resourceVersionMatch``, Table output.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sandbox.kube.resources import ApiError, ResourceType
from sandbox.kube.selectors import (
    FieldRequirement,
    Requirement,
    fields_match,
    selector_matches,
)
from sandbox.kube.store import Event, ObjectStore, labels_of

DEFAULT_TIMEOUT = 1800.0


@dataclass
class WatchRequest:
    rt: ResourceType
    namespace: str | None
    labels: list[Requirement] = field(default_factory=list)
    fields: list[FieldRequirement] = field(default_factory=list)
    resource_version: str = ""
    bookmarks: bool = False
    timeout: float = DEFAULT_TIMEOUT


def _gone(rv: int, oldest: int) -> dict[str, Any]:
    return {"type": "ERROR", "object": ApiError(
        410, "Expired", f"too old resource version: {rv} ({oldest})").status()}


def stream(store: ObjectStore, req: WatchRequest, stop: threading.Event,
           bookmark_interval: float, client_gone: Callable[[], bool] = lambda: False
           ) -> Iterator[dict[str, Any]]:
    """The events of one watch, in order; ends at the timeout, when ``stop`` is set or
    when the client has gone."""
    deadline = time.monotonic() + req.timeout
    with store.lock:
        if req.resource_version in ("", "0"):
            items, cursor = store.list_objects(req.rt, req.namespace, req.labels, req.fields)
            initial = [{"type": "ADDED", "object": o} for o in items]
        else:
            try:
                cursor = int(req.resource_version)
            except ValueError:
                raise ApiError(400, "BadRequest", f'invalid resource version "'
                               f'{req.resource_version}"') from None
            oldest = store.oldest_watchable_rv()
            initial = [_gone(cursor, oldest)] if cursor < oldest else []
    yield from initial
    if initial and initial[0]["type"] == "ERROR":
        return
    last_bookmark = time.monotonic()
    while not stop.is_set() and not client_gone():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        with store.changed:
            pending = _after(store, cursor)
            if pending is None:
                yield _gone(cursor, store.oldest_watchable_rv())
                return
            if not pending:
                wait = min(remaining, 0.5)
                if req.bookmarks:
                    wait = min(wait, max(0.0, last_bookmark + bookmark_interval
                                         - time.monotonic()))
                store.changed.wait(wait)
                pending = _after(store, cursor) or []
            head = store.rv
        for event in pending:
            cursor = event.rv
            out = _translate(req, event)
            if out is not None:
                yield out
        if req.bookmarks and time.monotonic() - last_bookmark >= bookmark_interval:
            last_bookmark = time.monotonic()
            cursor = max(cursor, head) if not pending else cursor
            yield {"type": "BOOKMARK", "object": {
                "kind": req.rt.kind, "apiVersion": req.rt.api_version,
                "metadata": {"resourceVersion": str(cursor)}}}


def _after(store: ObjectStore, cursor: int) -> list[Event] | None:
    """Events newer than ``cursor`` (lock held); None when the log no longer has them."""
    found: list[Event] = []
    for event in reversed(store.events):
        if event.rv <= cursor:
            break
        found.append(event)
    else:  # the whole log is newer: were older events dropped?
        if cursor < store.oldest_watchable_rv():
            return None
    found.reverse()
    return found


def _translate(req: WatchRequest, event: Event) -> dict[str, Any] | None:
    plural, namespace, _ = event.key
    if plural != req.rt.plural or (req.namespace is not None and namespace != req.namespace):
        return None
    if not fields_match(req.fields, event.object):
        return None
    now_matches = selector_matches(req.labels, labels_of(event.object))
    if event.type == "MODIFIED":
        before = event.prev_labels is not None and selector_matches(req.labels,
                                                                    event.prev_labels)
        kind = {(True, True): "MODIFIED", (True, False): "DELETED",
                (False, True): "ADDED"}.get((before, now_matches))
    else:
        kind = event.type if now_matches else None
    if kind is None:
        return None
    return {"type": kind, "object": event.object}
