"""The sandbox's own state: its clock, timings, quotas and the ground-truth history.

moto's models are process-global; what is per ``SandboxAws`` (delays, faults, the clock
offset, quotas, the history of endpoints created and deleted) lives in a ``SandboxState``
that the WSGI middleware makes current for each request (a thread-local), so the patched
handlers read the configuration of the server that received the request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

BOOTSTRAP_ACCOUNT_ID = "123456789012"  # moto's default account (plain credentials)
ENDPOINTS_ACCOUNT_ID = "111111111111"
CUSTOMER_ACCOUNT_ID = "222222222222"
ADMIN_ROLE_NAME = "OrganizationAccountAccessRole"
ENDPOINTS_ROLE_NAME = "privnet-endpoints"
SANDBOX_ACCESS_KEY = "testing"
SANDBOX_SECRET_KEY = "testing"
VPCE_HOSTED_ZONE_ID = "Z7HUB22UULQXV"
# Service Quotas, "Interface and Gateway Load Balancer endpoints per VPC": default 50.
DEFAULT_ENDPOINTS_PER_VPC = 50


@dataclass
class Delays:
    """Seconds on the sandbox clock; 0 = the transition shows on the next describe."""

    pending: float = 0.0  # pending → available
    deleting: float = 0.0  # deleting → deleted
    deleted_visible: float = 0.0  # deleted → gone from DescribeVpcEndpoints
    # EC2 eventual consistency: a new endpoint is NotFound to describe/delete by id (and
    # absent from filtered describes) for this long after CreateVpcEndpoint.
    lag: float = 0.0
    # pendingAcceptance → expired when the owner neither accepts nor rejects in time
    # (None: never; AWS does not document the period).
    expire: float | None = None


@dataclass
class Quotas:
    interface_endpoints_per_vpc: int = DEFAULT_ENDPOINTS_PER_VPC


@dataclass
class SandboxState:
    delays: Delays = field(default_factory=Delays)
    quotas: Quotas = field(default_factory=Quotas)
    # Added to the monotonic clock: tests advance time instead of sleeping past delays.
    clock_offset: float = 0.0
    # A page size the server imposes when the caller sends no MaxResults (None: all
    # results, as EC2 does for these calls). A test knob proving callers follow NextToken.
    default_page_size: int | None = None
    # Ground truth for checkers: every endpoint created, state change and deletion.
    history: list[dict[str, Any]] = field(default_factory=list)


_local = threading.local()
DEFAULT_STATE = SandboxState()
# moto's models are not thread-safe; every PrivateLink handler and admin call serialises.
LOCK = threading.RLock()


def current() -> SandboxState:
    return getattr(_local, "state", None) or DEFAULT_STATE


@contextmanager
def using(state: SandboxState) -> Iterator[SandboxState]:
    """Make ``state`` current for this thread (requests, admin and in-process calls)."""
    previous = getattr(_local, "state", None)
    _local.state = state
    try:
        yield state
    finally:
        _local.state = previous


def now() -> float:
    """The sandbox clock (monotonic seconds + the offset ``advance`` added)."""
    return time.monotonic() + current().clock_offset


def record(event: str, ep: Any, at: float | None = None, **extra: Any) -> None:
    """Append one history event for endpoint ``ep`` (call with LOCK held).

    ``t`` is the sandbox clock when it happened (a deletion that fell due between two
    looks is dated when it was due), ``wall`` the Unix time it corresponds to.
    """
    t = now() if at is None else at
    tags = dict(ep.ec2_backend.tags.get(ep.id, {}))
    current().history.append({
        "event": event,
        "t": t,
        "wall": time.time() - (now() - t),
        "vpc_endpoint_id": ep.id,
        "state": ep.state,
        "vpc_id": ep.vpc_id,
        "region": ep.ec2_backend.region_name,
        "account_id": ep.ec2_backend.account_id,
        "org_id": tags.get("privnet.dev/org-id"),
        "connection_id": tags.get("privnet.dev/connection-id"),
        **extra,
    })


def ec2_error(code: str, message: str) -> Exception:
    from moto.ec2.exceptions import EC2ClientError

    return EC2ClientError(code, message)
