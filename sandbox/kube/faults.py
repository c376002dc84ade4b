"""Injected faults (fidelity row "faults"): what a busy or flaky API server does to a
client, for the activity tests and the soak (issue 10).

Two kinds, both applied only to object requests (not discovery, OpenAPI, ``/version``,
watch streams or the ``/_sandbox`` admin routes):

* one-shot: ``inject_error(code, method=, path_contains=, times=)`` answers the next
  matching requests with ``code`` (403, 409, 429, 5xx ...) before anything is changed;
* rate-based and seeded (``FaultConfig``): a write (POST/PUT/PATCH/DELETE) answered 409
  ``Conflict`` before anything changes (``conflict_rate``; on POST it is the
  ``AlreadyExists`` a racing creator causes), any request answered 500 before anything
  changes (``error_rate``), a write performed and then answered 500 (``lost_response_rate``:
  the reply was lost, the change was not), and added latency (``latency_rate`` of requests
  wait ``latency_seconds``). The same seed and request sequence give the same faults.

Counts of what was injected are in ``FaultInjector.counts`` (``GET /_sandbox/faults``).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field


class FaultConfig(BaseModel):
    """Rates are probabilities per request (0 = off)."""

    model_config = {"extra": "forbid"}

    seed: int | None = None
    conflict_rate: float = Field(0.0, ge=0, le=1)
    error_rate: float = Field(0.0, ge=0, le=1)
    lost_response_rate: float = Field(0.0, ge=0, le=1)
    latency_rate: float = Field(0.0, ge=0, le=1)
    latency_seconds: float = Field(0.0, ge=0, le=60)


@dataclass
class Decision:
    """What to do with one request: fail before (``code``), delay, fail after."""

    code: int | None = None
    reason: str = ""
    delay: float = 0.0
    lose_response: bool = False
    kinds: list[str] = field(default_factory=list)


_REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            422: "Invalid", 429: "TooManyRequests", 503: "ServiceUnavailable",
            504: "Timeout"}
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class FaultInjector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.config = FaultConfig()
        self._random = random.Random()
        self._one_shot: list[tuple[int, str | None, str | None, int]] = []
        self.counts: Counter[str] = Counter()

    def configure(self, config: FaultConfig) -> None:
        with self._lock:
            self.config = config
            self._random = random.Random(config.seed)

    def inject_error(self, code: int, method: str | None = None,
                     path_contains: str | None = None, times: int = 1) -> None:
        with self._lock:
            self._one_shot.append((code, method, path_contains, times))

    def clear(self) -> None:
        with self._lock:
            self.config = FaultConfig()
            self._one_shot.clear()

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"config": self.config.model_dump(), "injected": dict(self.counts),
                    "pending_one_shot": len(self._one_shot)}

    def decide(self, method: str, path: str) -> Decision:
        with self._lock:
            decision = Decision()
            for i, (code, m, frag, times) in enumerate(self._one_shot):
                if (m is None or m == method) and (frag is None or frag in path):
                    if times <= 1:
                        del self._one_shot[i]
                    else:
                        self._one_shot[i] = (code, m, frag, times - 1)
                    decision.code = code
                    decision.reason = _REASONS.get(code, "InternalError")
                    decision.kinds.append(f"injected_{code}")
                    break
            cfg, draw = self.config, self._random.random
            # Always draw the same number of values per request: the seed fixes the faults.
            latency, error, conflict, lost = draw(), draw(), draw(), draw()
            if latency < cfg.latency_rate and cfg.latency_seconds > 0:
                decision.delay = cfg.latency_seconds
                decision.kinds.append("latency")
            if decision.code is None and error < cfg.error_rate:
                decision.code, decision.reason = 500, "InternalError"
                decision.kinds.append("error_500")
            elif decision.code is None and method in WRITES and conflict < cfg.conflict_rate:
                decision.code = 409
                decision.reason = "AlreadyExists" if method == "POST" else "Conflict"
                decision.kinds.append("conflict_409")
            elif decision.code is None and method in WRITES and lost < cfg.lost_response_rate:
                decision.lose_response = True
                decision.kinds.append("lost_response")
            self.counts.update(decision.kinds)
            return decision

