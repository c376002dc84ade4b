"""Fault injection (fidelity row 13) as WSGI middleware in front of moto's app.

Every request is attributed to (service, operation) from its SigV4 scope and its query
``Action``; matching rules add latency, or answer with EC2's XML error body before the
request reaches moto ("before": nothing happened) or after it ran ("after": the effect
happened, the response is lost — what ClientToken protects against). Draws come from the
sandbox's seeded RNG, so a seed and a request sequence give the same faults. Requests to
``/_privnet/`` are the admin API (admin.py), never faulted.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from sandbox.aws import state

if TYPE_CHECKING:
    from sandbox.aws.server import SandboxAws

FAULT_CODES: dict[str, tuple[int, str]] = {
    "RequestLimitExceeded": (503, "Request limit exceeded."),
    "InternalError": (500, "An internal error has occurred"),
    "Unavailable": (503, "The server is overloaded and can't handle the request."),
    # An IAM policy missing the action (what an operator must fix).
    "UnauthorizedOperation": (403, "You are not authorized to perform this operation."),
    # EC2's eventual consistency: a describe that does not see an endpoint that exists.
    "InvalidVpcEndpointId.NotFound": (400, "The vpcEndpoint ID does not exist"),
}
ADMIN_PREFIX = "/_privnet/"


@dataclass
class FaultRule:
    kind: str  # a FAULT_CODES key, or "latency"
    rate: float = 1.0
    operations: frozenset[str] | None = None  # None = every operation
    services: frozenset[str] = frozenset({"ec2"})
    phase: str = "before"  # "before": nothing happens; "after": applied, response lost
    latency: float = 0.0

    def matches(self, service: str, operation: str) -> bool:
        if service not in self.services:
            return False
        return self.operations is None or operation in self.operations

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "rate": self.rate, "phase": self.phase,
            "operations": sorted(self.operations) if self.operations else None,
            "services": sorted(self.services), "latency": self.latency,
        }


def make_rule(
    kind: str, *, rate: float = 1.0, operations: Iterable[str] | None = None,
    phase: str = "before", services: Iterable[str] = ("ec2",), latency: float = 0.0,
) -> FaultRule:
    """A validated rule (the in-process and the admin API share it)."""
    if kind != "latency" and kind not in FAULT_CODES:
        raise ValueError(f"unknown fault {kind!r}; one of {sorted(FAULT_CODES)} or 'latency'")
    if phase not in ("before", "after"):
        raise ValueError("phase is 'before' or 'after'")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError("rate must be within 0..1")
    if kind == "latency" and float(latency) <= 0:
        raise ValueError("latency needs seconds > 0")
    return FaultRule(
        kind=kind, rate=float(rate), operations=frozenset(operations) if operations else None,
        phase=phase, services=frozenset(services), latency=float(latency))


def ec2_error_body(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        f"</Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


def request_target(environ: dict[str, Any]) -> tuple[str, str, bytes]:
    """(service, operation, body) of a query-protocol request; the body is restored."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    params = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        params.update(parse_qs(body.decode()))
    except UnicodeDecodeError:
        pass
    action = (params.get("Action") or [""])[0]
    auth = environ.get("HTTP_AUTHORIZATION", "")
    service = ""
    if "Credential=" in auth:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if len(scope) >= 4:
            service = scope[3]
    return service, action, body


class FaultMiddleware:
    def __init__(self, app: Any, sandbox: SandboxAws) -> None:
        self.app = app
        self.sandbox = sandbox

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        with state.using(self.sandbox._state):
            if str(environ.get("PATH_INFO", "")).startswith(ADMIN_PREFIX):
                from sandbox.aws.admin import handle

                return handle(self.sandbox, environ, start_response)
            service, operation, _ = request_target(environ)
            return self._call(environ, start_response, service, operation)

    def _call(self, environ: dict[str, Any], start_response: Any, service: str, op: str) -> Any:
        sb = self.sandbox
        fault: FaultRule | None = None
        sleep = 0.0
        with sb._fault_lock:
            sb.requests[op] = sb.requests.get(op, 0) + 1
            for rule in sb._faults:
                if not rule.matches(service, op) or sb._rng.random() >= rule.rate:
                    continue
                sb.injected.append((rule.kind, op))
                if rule.kind == "latency":
                    sleep += rule.latency
                elif fault is None:
                    fault = rule
        if sleep:
            time.sleep(sleep)
        if fault is None:
            return self.app(environ, start_response)
        if fault.phase == "after":
            result = self.app(environ, lambda status, headers, exc=None: None)
            for _chunk in result:
                pass
            if hasattr(result, "close"):
                result.close()
        status, message = FAULT_CODES[fault.kind]
        body = ec2_error_body(fault.kind, message)
        reason = HTTPStatus(status).phrase
        start_response(
            f"{status} {reason}",
            [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]
