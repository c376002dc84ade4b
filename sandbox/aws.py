"""Sandbox AWS: moto's server in-process, its EC2 backend extended to behave like PrivateLink.

moto 5 does not model PrivateLink between accounts. This module starts
``moto.server.ThreadedMotoServer`` on 127.0.0.1 (a free port), wraps its WSGI app in a
fault-injection middleware and, once per process (``install_privatelink()``, idempotent and
called by ``SandboxAws.start``), replaces a few action handlers of moto's ``EC2Response``
class with the PrivateLink model below. Everything else (VPCs, subnets, security groups,
ENIs, ELBv2, STS, IAM) is plain moto. Clients talk to it over real HTTP with boto3.

Accounts: moto attributes each request to the account of its access key; STS AssumeRole
into ``arn:aws:iam::<acct>:role/<name>`` returns keys mapped to ``<acct>`` (verified by
tests), so the customer account and our endpoints account are separate.

Fidelity table (behaviour → the AWS documentation / known behaviour it follows → test in
tests/test_sandbox_aws.py):

| # | Behaviour | AWS reference | Test |
|---|-----------|---------------|------|
| 1 | Assumed-role credentials act in the role's account (GetCallerIdentity) | STS AssumeRole API reference | test_accounts_are_separate |
| 2 | DescribeVpcEndpointServices(ServiceNames) shows another account's service only to its allowed principals (`arn:aws:iam::<acct>:root`, the caller's role ARN, or `*`); otherwise `InvalidServiceName` "The Vpc Endpoint Service '<name>' does not exist" | PrivateLink guide "Manage permissions"; EC2 error codes (InvalidServiceName) | test_service_visible_only_to_allowed_principals, test_wildcard_principal |
| 3 | ServiceDetails carry AvailabilityZones, AvailabilityZoneIds, AcceptanceRequired, Owner, ServiceRegion, BaseEndpointDnsNames | EC2 API ServiceDetail | test_service_details_fields |
| 4 | CreateVpcEndpoint validates the service and the caller's permission (`InvalidServiceName`) | PrivateLink guide "Create an interface endpoint" | test_create_rejects_unknown_or_forbidden_service |
| 5 | Each subnet's AZ (by AZ id) must be one of the service's: `InvalidParameter` "The VPC endpoint service <svc> does not support the availability zone of the subnet: <subnet>." | Known AWS error text; guide "Availability Zones" (AZ ids are consistent across accounts) | test_create_rejects_unsupported_az |
| 6 | One endpoint subnet per AZ (`DuplicateSubnetsInSameZone`) | EC2 API CreateVpcEndpoint (one subnet per AZ) | test_create_rejects_two_subnets_in_one_az |
| 7 | Cross-Region: `ServiceRegion` must be the service's Region and the consumer Region one of the service's SupportedRegions; without `ServiceRegion` a remote service is not found; the provider's AZs are not checked against the consumer's subnets | PrivateLink guide "Cross-Region connectivity"; CreateVpcEndpoint ServiceRegion; DescribeVpcEndpointServices ServiceRegions | test_cross_region_create, test_cross_region_requires_supported_region |
| 8 | ClientToken: same token + same parameters → the same endpoint; different parameters → `IdempotentParameterMismatch` | EC2 "Ensuring idempotency" | test_client_token_idempotency |
| 9 | States: `pending` → `available` after a delay; with acceptance required `pendingAcceptance` until the owner calls AcceptVpcEndpointConnections (→ `pending` → `available`) or RejectVpcEndpointConnections (→ `rejected`); only the owner may accept | PrivateLink guide "Accept or reject connection requests"; VpcEndpoint State enum | test_state_transitions_with_delay, test_acceptance_accept, test_acceptance_reject |
| 9b | DescribeVpcEndpointConnections shows the owner every endpoint of its services (owner account, state, Region), filterable by service-id / vpc-endpoint-state | EC2 API DescribeVpcEndpointConnections | test_acceptance_accept |
| 10 | DeleteVpcEndpoints: `deleting` → `deleted`, then the endpoint disappears (DescribeVpcEndpoints by id → `InvalidVpcEndpointId.NotFound`); unknown ids come back in `Unsuccessful` | EC2 API DeleteVpcEndpoints; eventual consistency of deleted resources | test_delete_transitions, test_delete_unknown_id_is_unsuccessful |
| 11 | One requester-managed ENI per subnet (interface type `vpc_endpoint`, description "VPC Endpoint Interface <id>"), private IP inside the subnet CIDR, never one of the 4 first addresses AWS reserves; DescribeNetworkInterfaces works; ENIs go away with the endpoint | VPC guide "Subnet CIDR blocks" (reserved addresses); PrivateLink "endpoint network interfaces" | test_enis_inside_subnet_cidr |
| 12 | DnsEntries: a Regional name plus one zonal name per AZ | PrivateLink guide "DNS names for interface endpoints" | test_enis_inside_subnet_cidr |
| 13 | Faults: `RequestLimitExceeded` as HTTP 503 with EC2's XML error body, `InternalError` 500, `Unavailable` 503, added latency — by rate and operation, seeded; "after" faults apply the request then lose the response (what ClientToken protects against) | EC2 API "Request throttling"; EC2 error response format | test_fault_injection_* |

Limitations: one process holds one moto state (moto's backends are module globals), so
two ``SandboxAws`` in one process share accounts and resources (each has its own faults and
delays). Faults are deterministic for a given seed and a given sequence of requests.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import boto3
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from settings import Settings

# --------------------------------------------------------------------------- constants

BOOTSTRAP_ACCOUNT_ID = "123456789012"  # moto's default account (plain credentials)
ENDPOINTS_ACCOUNT_ID = "111111111111"
CUSTOMER_ACCOUNT_ID = "222222222222"
ADMIN_ROLE_NAME = "OrganizationAccountAccessRole"
ENDPOINTS_ROLE_NAME = "privnet-endpoints"
SANDBOX_ACCESS_KEY = "testing"
SANDBOX_SECRET_KEY = "testing"
VPCE_HOSTED_ZONE_ID = "Z7HUB22UULQXV"

FAULT_CODES: dict[str, tuple[int, str]] = {
    "RequestLimitExceeded": (503, "Request limit exceeded."),
    "InternalError": (500, "An internal error has occurred"),
    "Unavailable": (503, "The server is overloaded and can't handle the request."),
}

# --------------------------------------------------------------------------- configuration


@dataclass
class Delays:
    """Seconds; 0 = the transition is visible on the next describe."""

    pending: float = 0.0  # pending → available
    deleting: float = 0.0  # deleting → deleted
    deleted_visible: float = 0.0  # deleted → gone from DescribeVpcEndpoints


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


@dataclass
class _SandboxState:
    delays: Delays = field(default_factory=Delays)
    # Added to the monotonic clock: tests advance time instead of sleeping past delays.
    clock_offset: float = 0.0


_local = threading.local()
_DEFAULT_STATE = _SandboxState()
_LOCK = threading.RLock()  # moto's models are not thread-safe; our handlers serialise


def _state() -> _SandboxState:
    return getattr(_local, "state", None) or _DEFAULT_STATE


def _now() -> float:
    return time.monotonic() + _state().clock_offset


# --------------------------------------------------------------------------- PrivateLink model


class _Err(Exception):
    pass


def _ec2_error(code: str, message: str) -> Exception:
    from moto.ec2.exceptions import EC2ClientError

    return EC2ClientError(code, message)


def _zone_ids(region: str) -> dict[str, str]:
    from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend

    return {z.name: z.zone_id for z in RegionsAndZonesBackend.zones.get(region, [])}


def _existing_backends(region: str | None = None) -> Iterable[tuple[str, str, Any]]:
    from moto.ec2.models import ec2_backends

    for account_id in list(dict.keys(ec2_backends)):
        by_region = dict.__getitem__(ec2_backends, account_id)
        for reg, backend in list(dict.items(by_region)):
            if region is None or reg == region:
                yield account_id, reg, backend


def _find_service(service_name: str) -> tuple[str, Any, Any] | None:
    """(owner account, owner backend, VPCServiceConfiguration) of a service name."""
    parts = service_name.split(".")
    region = parts[3] if len(parts) == 5 else None
    for account_id, _reg, backend in _existing_backends(region):
        for cfg in list(backend.configurations.values()):
            if cfg.service_name == service_name:
                return account_id, backend, cfg
    return None


def _service_region(cfg: Any) -> str:
    return str(cfg.ec2_backend.region_name)


def _service_az_ids(cfg: Any) -> list[str]:
    names = _zone_ids(_service_region(cfg))
    return sorted({names[az] for az in cfg.availability_zones if az in names})


def _caller_arns(response: Any) -> set[str]:
    from moto.sts.models import sts_backends

    account = response.current_account
    arns = {f"arn:aws:iam::{account}:root"}
    try:
        role = sts_backends[account]["aws"].get_assumed_role_from_access_key(
            response.get_access_key()
        )
    except Exception:  # noqa: BLE001 - moto internals; plain keys have no role
        role = None
    if role is not None:
        arns.add(role.role_arn)
    return arns


def _allowed(response: Any, owner: str, cfg: Any) -> bool:
    if owner == response.current_account:
        return True
    principals = set(cfg.principals)
    return "*" in principals or bool(principals & _caller_arns(response))


def _service_detail(cfg: Any, owner: str) -> dict[str, Any]:
    d = cfg.to_dict()
    d["AvailabilityZones"] = sorted(set(cfg.availability_zones))
    d["AvailabilityZoneIds"] = _service_az_ids(cfg)
    d["Owner"] = owner
    d["ServiceRegion"] = _service_region(cfg)
    d["AcceptanceRequired"] = bool(cfg.acceptance_required)
    if not cfg.private_dns_name:
        d.pop("PrivateDnsName", None)
        d["PrivateDnsNames"] = []
    return d


def _visible_service(
    response: Any, name: str, service_regions: list[str]
) -> tuple[str, Any]:
    """The service a caller in response.region may use, or InvalidServiceName."""
    found = _find_service(name)
    if found is None:
        raise _ec2_error("InvalidServiceName", f"The Vpc Endpoint Service '{name}' does not exist")
    owner, _backend, cfg = found
    svc_region = _service_region(cfg)
    here = response.region
    ok = _allowed(response, owner, cfg)
    if svc_region != here:
        ok = ok and svc_region in service_regions and here in cfg._supported_region_names
    if not ok:
        raise _ec2_error("InvalidServiceName", f"The Vpc Endpoint Service '{name}' does not exist")
    return owner, cfg


def _advance(ep: Any, now: float | None = None) -> bool:
    """Apply due state transitions; False when the endpoint is gone."""
    now = _now() if now is None else now
    pl = getattr(ep, "_pl", None)
    if pl is None:
        return True
    if ep.state == "pending" and now >= pl["ready_at"]:
        ep.state = "available"
    if ep.state == "deleting" and now >= pl["deleted_at"]:
        ep.state = "deleted"
        _release_enis(ep)
    if ep.state == "deleted" and now >= pl["gone_at"]:
        return False
    return True


def _release_enis(ep: Any) -> None:
    backend = ep.ec2_backend
    for eni_id in list(ep.network_interface_ids):
        eni = backend.enis.pop(eni_id, None)
        if eni is not None and eni.subnet is not None and eni.private_ip_address:
            eni.subnet.del_subnet_ip(eni.private_ip_address)


def _sweep(backend: Any) -> None:
    now = _now()
    for ep_id, ep in list(backend.vpc_end_points.items()):
        if not _advance(ep, now):
            backend.vpc_end_points.pop(ep_id, None)


def _params_digest(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def _dns_entries(ep_id: str, cfg: Any, region: str, az_names: list[str]) -> list[dict[str, str]]:
    suffix = f"{cfg.id}.{region}.vpce.amazonaws.com"
    entries = [{"DnsName": f"{ep_id}-{uuid.uuid4().hex[:8]}.{suffix}", "HostedZoneId": VPCE_HOSTED_ZONE_ID}]
    base = entries[0]["DnsName"].split(".", 1)[0]
    for az in sorted(az_names):
        entries.append({"DnsName": f"{base}-{az}.{suffix}", "HostedZoneId": VPCE_HOSTED_ZONE_ID})
    return entries


# ---- patched EC2Response handlers (``self`` is moto's EC2Response) -----------------------


def _h_describe_vpc_endpoint_services(self: Any) -> Any:
    from moto.core.responses import ActionResult

    names = self._get_param("ServiceNames", []) or []
    regions = self._get_param("ServiceRegions", []) or []
    with _LOCK:
        if names:
            details = []
            for name in names:
                owner, cfg = _visible_service(self, name, regions)
                details.append(_service_detail(cfg, owner))
            return ActionResult(
                {"ServiceNames": [d["ServiceName"] for d in details], "ServiceDetails": details}
            )
        result = self.ec2_backend.describe_vpc_endpoint_services(
            service_names=[], filters=self._filters_from_querystring(),
            max_results=self._get_int_param("MaxResults"),
            next_token=self._get_param("NextToken"), region=self.region,
        )
        own = {d["ServiceName"] for d in result["servicesDetails"]}
        details = list(result["servicesDetails"])
        for owner, _reg, backend in _existing_backends(self.region):
            for cfg in list(backend.configurations.values()):
                if cfg.service_name in own or not _allowed(self, owner, cfg):
                    continue
                details.append(_service_detail(cfg, owner))
        return ActionResult(
            {"ServiceNames": [d["ServiceName"] for d in details], "ServiceDetails": details,
             "NextToken": result["nextToken"]}
        )


def _h_create_vpc_endpoint(self: Any) -> Any:
    from moto.core.responses import ActionResult
    from moto.ec2.utils import add_tag_specification

    endpoint_type = self._get_param("VpcEndpointType") or "Gateway"
    service_name = self._get_param("ServiceName")
    if endpoint_type.lower() != "interface":
        return _ORIGINAL["create_vpc_endpoint"](self)
    vpc_id = self._get_param("VpcId")
    subnet_ids = list(self._get_param("SubnetIds", []) or [])
    sg_ids = list(self._get_param("SecurityGroupIds", []) or [])
    token = self._get_param("ClientToken")
    service_region = self._get_param("ServiceRegion")
    private_dns = self._get_bool_param("PrivateDnsEnabled", if_none=False)
    tag_specs = self._get_param("TagSpecifications", []) or []
    tags = add_tag_specification(tag_specs)
    backend = self.ec2_backend
    here = self.region
    with _LOCK:
        _sweep(backend)
        digest = _params_digest(
            {"vpc": vpc_id, "svc": service_name, "type": endpoint_type.lower(),
             "subnets": sorted(subnet_ids), "sgs": sorted(sg_ids),
             "region": service_region or here, "dns": private_dns, "tags": tags}
        )
        tokens: dict[str, tuple[str, str]] = backend.__dict__.setdefault("_pl_tokens", {})
        if token and token in tokens:
            prev_digest, prev_id = tokens[token]
            if prev_digest != digest:
                raise _ec2_error(
                    "IdempotentParameterMismatch",
                    "The request uses the same client token as a previous, but non-identical "
                    "request.",
                )
            if prev_id in backend.vpc_end_points:
                return ActionResult(
                    {"VpcEndpoint": backend.vpc_end_points[prev_id], "ClientToken": token}
                )
        backend.get_vpc(vpc_id)
        regions = [service_region] if service_region else []
        owner, cfg = _visible_service(self, service_name, regions)
        svc_region = _service_region(cfg)
        if service_region and service_region != svc_region:
            raise _ec2_error(
                "InvalidServiceName", f"The Vpc Endpoint Service '{service_name}' does not exist"
            )
        if not subnet_ids:
            raise _ec2_error("InvalidParameter", "SubnetIds: at least one subnet is required.")
        subnets = [backend.get_subnet(s) for s in subnet_ids]
        for s in subnets:
            if s.vpc_id != vpc_id:
                raise _ec2_error(
                    "InvalidParameter", f"The subnet {s.id} does not belong to the VPC {vpc_id}."
                )
        azs = [s.availability_zone_id for s in subnets]
        if len(set(azs)) != len(azs):
            raise _ec2_error(
                "DuplicateSubnetsInSameZone",
                "Found another VPC endpoint subnet in the availability zone of "
                f"{subnets[azs.index(next(a for a in azs if azs.count(a) > 1), 1)].id}",
            )
        if svc_region == here:
            supported = set(_service_az_ids(cfg))
            for s in subnets:
                if s.availability_zone_id not in supported:
                    raise _ec2_error(
                        "InvalidParameter",
                        f"The VPC endpoint service {service_name} does not support the "
                        f"availability zone of the subnet: {s.id}.",
                    )
        for sg in sg_ids:
            backend.get_security_group_from_id(sg) or (_ for _ in ()).throw(
                _ec2_error("InvalidGroup.NotFound", f"The security group '{sg}' does not exist")
            )
        ep = _ORIGINAL_BACKEND_CREATE(
            backend, vpc_id=vpc_id, service_name=service_name, endpoint_type="Interface",
            policy_document=self._get_param("PolicyDocument"), route_table_ids=[],
            subnet_ids=[], client_token=token, security_group_ids=sg_ids, tags=tags,
            private_dns_enabled=private_dns,
        )
        ep.subnet_ids = list(subnet_ids)
        ep.vpc_endpoint_type = "Interface"
        ep.service_region = svc_region
        ep.requester_managed = False
        ep.ip_address_type = "ipv4"
        eni_ids = []
        for s in subnets:
            ip = s.get_available_subnet_ip(ep)
            eni = backend.create_network_interface(
                s, ip, group_ids=sg_ids, description=f"VPC Endpoint Interface {ep.id}"
            )
            eni.interface_type = "vpc_endpoint"
            eni.requester_managed = True
            eni_ids.append(eni.id)
        ep.network_interface_ids = eni_ids
        ep.dns_entries = _dns_entries(ep.id, cfg, here, [s.availability_zone for s in subnets])
        now = _now()
        ep._pl = {"owner": owner, "service_id": cfg.id, "ready_at": now + _state().delays.pending,
                  "deleted_at": float("inf"), "gone_at": float("inf")}
        ep.state = "pendingAcceptance" if cfg.acceptance_required else "pending"
        if token:
            tokens[token] = (digest, ep.id)
        return ActionResult({"VpcEndpoint": ep, "ClientToken": token})


def _h_describe_vpc_endpoints(self: Any) -> Any:
    with _LOCK:
        _sweep(self.ec2_backend)
        return _ORIGINAL["describe_vpc_endpoints"](self)


def _h_delete_vpc_endpoints(self: Any) -> Any:
    from moto.core.responses import ActionResult

    ids = self._get_param("VpcEndpointIds", []) or []
    backend = self.ec2_backend
    unsuccessful = []
    with _LOCK:
        _sweep(backend)
        now = _now()
        delays = _state().delays
        for ep_id in ids:
            ep = backend.vpc_end_points.get(ep_id)
            if ep is None:
                unsuccessful.append(
                    {"ResourceId": ep_id, "Error": {
                        "Code": "InvalidVpcEndpoint.NotFound",
                        "Message": f"The Vpc Endpoint Id '{ep_id}' does not exist"}}
                )
                continue
            pl = getattr(ep, "_pl", None)
            if pl is None:  # gateway endpoints: moto's behaviour
                backend.delete_vpc_endpoints(vpce_ids=[ep_id])
                continue
            if ep.state in ("deleting", "deleted"):
                continue
            ep.state = "deleting"
            pl["deleted_at"] = now + delays.deleting
            pl["gone_at"] = pl["deleted_at"] + delays.deleted_visible
    return ActionResult({"Unsuccessful": unsuccessful})


def _connection_decision(self: Any, accept: bool) -> Any:
    from moto.core.responses import ActionResult

    service_id = self._get_param("ServiceId")
    ids = self._get_param("VpcEndpointIds", []) or []
    unsuccessful = []
    with _LOCK:
        cfg = self.ec2_backend.configurations.get(service_id)
        if cfg is None:
            raise _ec2_error(
                "InvalidVpcEndpointServiceId.NotFound",
                f"The VpcEndpointService Id '{service_id}' does not exist",
            )
        endpoints = {}
        for _acct, _reg, backend in _existing_backends():
            _sweep(backend)
            for ep in backend.vpc_end_points.values():
                if ep.service_name == cfg.service_name and getattr(ep, "_pl", None):
                    endpoints[ep.id] = ep
        now = _now()
        for ep_id in ids:
            ep = endpoints.get(ep_id)
            if ep is None or ep.state != "pendingAcceptance":
                unsuccessful.append(
                    {"ResourceId": ep_id, "Error": {
                        "Code": "InvalidVpcEndpoint.NotFound" if ep is None else "InvalidState",
                        "Message": f"The Vpc Endpoint Id '{ep_id}' does not exist"
                        if ep is None else f"Vpc Endpoint {ep_id} is in state {ep.state}"}}
                )
                continue
            if accept:
                ep.state = "pending"
                ep._pl["ready_at"] = now + _state().delays.pending
            else:
                ep.state = "rejected"
    return ActionResult({"Unsuccessful": unsuccessful})


def _h_describe_vpc_endpoint_connections(self: Any) -> Any:
    """The owner's view of the endpoints connected to its services (Filters: service-id,
    vpc-endpoint-id, vpc-endpoint-state, vpc-endpoint-owner)."""
    from moto.core.responses import ActionResult

    filters = self._filters_from_querystring() or {}
    with _LOCK:
        mine = {cfg.service_name: cfg for cfg in self.ec2_backend.configurations.values()}
        rows = []
        for acct, reg, backend in _existing_backends():
            _sweep(backend)
            for ep in list(backend.vpc_end_points.values()):
                cfg = mine.get(ep.service_name)
                if cfg is None or getattr(ep, "_pl", None) is None:
                    continue
                row = {
                    "ServiceId": cfg.id, "VpcEndpointId": ep.id, "VpcEndpointOwner": acct,
                    "VpcEndpointState": ep.state, "CreationTimestamp": ep.creation_timestamp,
                    "DnsEntries": ep.dns_entries, "IpAddressType": "ipv4",
                    "NetworkLoadBalancerArns": list(cfg.network_load_balancer_arns),
                    "VpcEndpointRegion": reg,
                }
                wanted = {
                    "service-id": row["ServiceId"], "vpc-endpoint-id": row["VpcEndpointId"],
                    "vpc-endpoint-state": row["VpcEndpointState"],
                    "vpc-endpoint-owner": row["VpcEndpointOwner"],
                }
                if all(wanted.get(k) in v for k, v in filters.items() if k in wanted):
                    rows.append(row)
    return ActionResult({"VpcEndpointConnections": rows})


def _h_accept_vpc_endpoint_connections(self: Any) -> Any:
    return _connection_decision(self, True)


def _h_reject_vpc_endpoint_connections(self: Any) -> Any:
    return _connection_decision(self, False)


_ORIGINAL: dict[str, Callable[..., Any]] = {}
_ORIGINAL_BACKEND_CREATE: Callable[..., Any]
_PATCHES: dict[str, Callable[..., Any]] = {
    "describe_vpc_endpoint_services": _h_describe_vpc_endpoint_services,
    "create_vpc_endpoint": _h_create_vpc_endpoint,
    "describe_vpc_endpoints": _h_describe_vpc_endpoints,
    "delete_vpc_endpoints": _h_delete_vpc_endpoints,
    "describe_vpc_endpoint_connections": _h_describe_vpc_endpoint_connections,
    "accept_vpc_endpoint_connections": _h_accept_vpc_endpoint_connections,
    "reject_vpc_endpoint_connections": _h_reject_vpc_endpoint_connections,
}


def install_privatelink() -> None:
    """Patch moto's EC2Response with the PrivateLink handlers (idempotent, process-wide).

    Only these action handlers of ``moto.ec2.responses.EC2Response`` are replaced; the
    originals are kept in ``_ORIGINAL`` (gateway endpoints and describe still use them).
    """
    global _ORIGINAL_BACKEND_CREATE
    from moto.ec2.models import EC2Backend
    from moto.ec2.responses import EC2Response

    with _LOCK:
        if _ORIGINAL:
            return
        for name, fn in _PATCHES.items():
            orig = getattr(EC2Response, name, None)
            if orig is not None:
                _ORIGINAL[name] = orig
            setattr(EC2Response, name, fn)
        _ORIGINAL_BACKEND_CREATE = EC2Backend.create_vpc_endpoint


# --------------------------------------------------------------------------- faults (WSGI)


def _ec2_error_body(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        f"</Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


def _request_target(environ: dict[str, Any]) -> tuple[str, str, bytes]:
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


class _FaultMiddleware:
    def __init__(self, app: Any, sandbox: SandboxAws) -> None:
        self.app = app
        self.sandbox = sandbox

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        service, operation, _ = _request_target(environ)
        _local.state = self.sandbox._state
        try:
            return self._call(environ, start_response, service, operation)
        finally:
            _local.state = None

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
            captured: list[Any] = []
            result = self.app(environ, lambda status, headers, exc=None: captured.append(status))
            for _chunk in result:
                pass
            if hasattr(result, "close"):
                result.close()
        status, message = FAULT_CODES[fault.kind]
        body = _ec2_error_body(fault.kind, message)
        reason = {500: "Internal Server Error", 503: "Service Unavailable"}[status]
        start_response(
            f"{status} {reason}",
            [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]


# --------------------------------------------------------------------------- sandbox


class EndpointNetworkSeed(BaseModel):
    vpc_id: str
    subnet_ids: list[str]
    security_group_ids: list[str]
    az_ids: dict[str, str] = Field(default_factory=dict)  # subnet id → AZ id


class SandboxSeed(BaseModel):
    endpoint_url: str
    endpoints_account_id: str
    customer_account_id: str
    region: str
    other_region: str
    role_arn: str
    principal_arn: str
    endpoint_networks: dict[str, EndpointNetworkSeed]
    customer_services: dict[str, str]
    customer_service_ids: dict[str, str]
    customer_role_arn: str
    customer_vpc_ids: dict[str, str]
    customer_az_ids: dict[str, list[str]]  # service key → AZ ids of its NLB
    customer_nlb_arns: dict[str, str]  # region → the customer's internal NLB
    access_key_id: str = SANDBOX_ACCESS_KEY
    secret_access_key: str = SANDBOX_SECRET_KEY

    def settings(self, **overrides: Any) -> Settings:
        """privnet settings that use this sandbox as the endpoints account."""
        from settings import EndpointNetwork, Settings

        values: dict[str, Any] = {
            "aws_region": self.region,
            "aws_role_arn": self.role_arn,
            "aws_endpoint_url": self.endpoint_url,
            "endpoint_networks": {
                region: EndpointNetwork(
                    vpc_id=n.vpc_id,
                    subnet_ids=n.subnet_ids,
                    security_group_ids=n.security_group_ids,
                )
                for region, n in self.endpoint_networks.items()
            },
        }
        values.update(overrides)
        return Settings(**values)

    def env(self) -> dict[str, str]:
        """PRIVNET_* / AWS_* variables a worker needs to use this sandbox."""
        networks = {
            r: {"vpc_id": n.vpc_id, "subnet_ids": n.subnet_ids,
                "security_group_ids": n.security_group_ids}
            for r, n in self.endpoint_networks.items()
        }
        return {
            "PRIVNET_AWS_REGION": self.region,
            "PRIVNET_AWS_ROLE_ARN": self.role_arn,
            "PRIVNET_AWS_ENDPOINT_URL": self.endpoint_url,
            "PRIVNET_AWS_PRINCIPAL_ARN": self.principal_arn,
            "PRIVNET_ENDPOINT_NETWORKS": json.dumps(networks),
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
        }


class SandboxAws:
    """moto server + PrivateLink model + faults. ``start()`` returns the endpoint URL."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, seed: int = 0) -> None:
        self.host = host
        self.port = port
        self._server: Any = None
        self._url: str | None = None
        self._state = _SandboxState()
        self._faults: list[FaultRule] = []
        self._fault_lock = threading.Lock()
        self._rng = random.Random(seed)
        self.requests: dict[str, int] = {}
        self.injected: list[tuple[str, str]] = []
        self._sessions: dict[str, boto3.Session] = {}

    # lifecycle
    def start(self) -> str:
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        install_privatelink()
        sandbox = self

        class _Server(ThreadedMotoServer):
            def _server_entry(self) -> None:
                from moto.moto_server.threaded_moto_server import MotoRequestHandler

                class _Quiet(MotoRequestHandler):
                    def log_request(self, *args: Any, **kwargs: Any) -> None:
                        pass

                app = _FaultMiddleware(DomainDispatcherApplication(create_backend_app), sandbox)
                self._server = make_server(
                    self._ip_address, self._port, app, True, request_handler=_Quiet
                )
                self._server_ready_event.set()
                self._server.serve_forever()

        self._server = _Server(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.port = port
        self._url = f"http://{host}:{port}"
        return self._url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    # persistence (the dev stack keeps its AWS across restarts)
    SNAPSHOT_SERVICES = ("ec2", "elbv2", "iam", "sts")

    def snapshot(self, path: str | Path) -> None:
        """Write moto's state (every account and region of the services privnet uses,
        including the PrivateLink model) to ``path`` atomically."""
        from moto.backends import get_backend

        with _LOCK:
            data = {
                name: {acct: dict(regions) for acct, regions in get_backend(name).items()}  # type: ignore[call-overload]
                for name in self.SNAPSHOT_SERVICES
            }
            blob = pickle.dumps({"clock": _now(), "backends": data})
        target = Path(path)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_bytes(blob)
        tmp.replace(target)

    def restore(self, path: str | Path) -> None:
        """Load a ``snapshot``. Pending transitions resume where they were (the time the
        sandbox was down does not count)."""
        from moto.backends import get_backend

        saved = pickle.loads(Path(path).read_bytes())  # noqa: S301 - our own file
        shift = _now() - float(saved["clock"])
        with _LOCK:
            for name, accounts in saved["backends"].items():
                backend_dict = get_backend(name)
                for acct, regions in accounts.items():
                    for region, backend in regions.items():
                        if name == "ec2":
                            for ep in backend.vpc_end_points.values():
                                pl = getattr(ep, "_pl", None) or {}
                                for key in ("ready_at", "deleted_at", "gone_at"):
                                    if key in pl and pl[key] != float("inf"):
                                        pl[key] += shift
                        backend_dict[acct][region] = backend
        self._sessions.clear()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("SandboxAws is not started")
        return self._url

    def __enter__(self) -> SandboxAws:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # configuration
    def set_delays(
        self, *, pending: float | None = None, deleting: float | None = None,
        deleted_visible: float | None = None,
    ) -> None:
        d = self._state.delays
        if pending is not None:
            d.pending = pending
        if deleting is not None:
            d.deleting = deleting
        if deleted_visible is not None:
            d.deleted_visible = deleted_visible

    def advance(self, seconds: float) -> None:
        """Move the sandbox clock forward (pending → available, deleting → deleted)."""
        self._state.clock_offset += seconds

    @property
    def delays(self) -> Delays:
        return self._state.delays

    def inject_fault(
        self, kind: str = "RequestLimitExceeded", *, rate: float = 1.0,
        operations: Iterable[str] | None = None, phase: str = "before",
        services: Iterable[str] = ("ec2",),
    ) -> FaultRule:
        if kind not in FAULT_CODES:
            raise ValueError(f"unknown fault {kind!r}; one of {sorted(FAULT_CODES)}")
        if phase not in ("before", "after"):
            raise ValueError("phase is 'before' or 'after'")
        return self._add_rule(FaultRule(
            kind=kind, rate=rate, operations=frozenset(operations) if operations else None,
            phase=phase, services=frozenset(services)))

    def add_latency(
        self, seconds: float, *, rate: float = 1.0, operations: Iterable[str] | None = None,
        services: Iterable[str] = ("ec2",),
    ) -> FaultRule:
        return self._add_rule(FaultRule(
            kind="latency", rate=rate, latency=seconds,
            operations=frozenset(operations) if operations else None,
            services=frozenset(services)))

    def _add_rule(self, rule: FaultRule) -> FaultRule:
        if not 0.0 <= rule.rate <= 1.0:
            raise ValueError("rate must be within 0..1")
        with self._fault_lock:
            self._faults.append(rule)
        return rule

    def clear_faults(self, *, seed: int | None = None) -> None:
        with self._fault_lock:
            self._faults.clear()
            self.injected.clear()
            if seed is not None:
                self._rng = random.Random(seed)

    def reseed(self, seed: int) -> None:
        with self._fault_lock:
            self._rng = random.Random(seed)

    # clients
    def session(self, account_id: str | None = None, role_name: str = ADMIN_ROLE_NAME) -> boto3.Session:
        """A boto3 session acting in ``account_id`` (assumed role) or plain credentials."""
        base = boto3.Session(
            aws_access_key_id=SANDBOX_ACCESS_KEY, aws_secret_access_key=SANDBOX_SECRET_KEY,
            region_name="us-east-1",
        )
        if account_id is None:
            return base
        key = f"{account_id}/{role_name}"
        if key not in self._sessions:
            sts = base.client("sts", endpoint_url=self.url)
            creds = sts.assume_role(
                RoleArn=f"arn:aws:iam::{account_id}:role/{role_name}",
                RoleSessionName="sandbox",
            )["Credentials"]
            self._sessions[key] = boto3.Session(
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"], region_name="us-east-1",
            )
        return self._sessions[key]

    def client(self, service: str, region: str, account_id: str | None = None) -> Any:
        session: Any = self.session(account_id)
        return session.client(service, region_name=region, endpoint_url=self.url)

    # customer actions
    def _decide(self, service_name: str, endpoint_ids: str | list[str], accept: bool) -> list[Any]:
        found = _find_service(service_name)
        if found is None:
            raise KeyError(service_name)
        owner, _backend, cfg = found
        ec2 = self.client("ec2", _service_region(cfg), owner)
        ids = [endpoint_ids] if isinstance(endpoint_ids, str) else list(endpoint_ids)
        fn = ec2.accept_vpc_endpoint_connections if accept else ec2.reject_vpc_endpoint_connections
        return list(fn(ServiceId=cfg.id, VpcEndpointIds=ids).get("Unsuccessful", []))

    def connections(self, service_name: str, state: str | None = None) -> list[dict[str, Any]]:
        """DescribeVpcEndpointConnections as the service owner (optionally by state)."""
        found = _find_service(service_name)
        if found is None:
            raise KeyError(service_name)
        owner, _backend, cfg = found
        ec2 = self.client("ec2", _service_region(cfg), owner)
        filters = [{"Name": "service-id", "Values": [cfg.id]}]
        if state:
            filters.append({"Name": "vpc-endpoint-state", "Values": [state]})
        return list(ec2.describe_vpc_endpoint_connections(Filters=filters)["VpcEndpointConnections"])

    def accept(self, service_name: str, endpoint_ids: str | list[str]) -> list[Any]:
        """Accept endpoint connections as the service owner; returns Unsuccessful items."""
        return self._decide(service_name, endpoint_ids, True)

    def reject(self, service_name: str, endpoint_ids: str | list[str]) -> list[Any]:
        return self._decide(service_name, endpoint_ids, False)

    # seeding
    def seed_default(self, region: str = "us-east-1", other_region: str = "us-west-2") -> SandboxSeed:
        ours = ENDPOINTS_ACCOUNT_ID
        cust = CUSTOMER_ACCOUNT_ID
        iam = self.client("iam", region, ours)
        trust = json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{BOOTSTRAP_ACCOUNT_ID}:root"},
            "Action": "sts:AssumeRole"}]})
        try:
            role_arn = iam.create_role(
                RoleName=ENDPOINTS_ROLE_NAME, AssumeRolePolicyDocument=trust
            )["Role"]["Arn"]
        except iam.exceptions.EntityAlreadyExistsException:
            role_arn = iam.get_role(RoleName=ENDPOINTS_ROLE_NAME)["Role"]["Arn"]

        networks: dict[str, EndpointNetworkSeed] = {}
        for i, reg in enumerate([region, other_region]):
            ec2 = self.client("ec2", reg, ours)
            vpc = ec2.create_vpc(CidrBlock=f"10.{10 + i}.0.0/16")["Vpc"]["VpcId"]
            ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
            subnets, az_ids = [], {}
            zones = ec2.describe_availability_zones()["AvailabilityZones"]
            for j, z in enumerate(zones):
                sn = ec2.create_subnet(
                    VpcId=vpc, CidrBlock=f"10.{10 + i}.{j}.0/24", AvailabilityZoneId=z["ZoneId"]
                )["Subnet"]
                subnets.append(sn["SubnetId"])
                az_ids[sn["SubnetId"]] = sn["AvailabilityZoneId"]
            sg = ec2.create_security_group(
                GroupName="privnet-endpoints", Description="privnet endpoints", VpcId=vpc
            )["GroupId"]
            networks[reg] = EndpointNetworkSeed(
                vpc_id=vpc, subnet_ids=subnets, security_group_ids=[sg], az_ids=az_ids
            )

        principal = f"arn:aws:iam::{ours}:root"
        services: dict[str, str] = {}
        service_ids: dict[str, str] = {}
        vpcs: dict[str, str] = {}
        svc_azs: dict[str, list[str]] = {}
        nlbs: dict[str, str] = {}
        for i, reg in enumerate([region, other_region]):
            ec2 = self.client("ec2", reg, cust)
            vpc = ec2.create_vpc(CidrBlock=f"10.{50 + i}.0.0/16")["Vpc"]["VpcId"]
            zones = ec2.describe_availability_zones()["AvailabilityZones"][:2]
            sns = [
                ec2.create_subnet(
                    VpcId=vpc, CidrBlock=f"10.{50 + i}.{j}.0/24", AvailabilityZoneId=z["ZoneId"]
                )["Subnet"]["SubnetId"]
                for j, z in enumerate(zones)
            ]
            elb = self.client("elbv2", reg, cust)
            nlbs[reg] = elb.create_load_balancer(
                Name=f"customer-nlb-{reg}", Subnets=sns, Scheme="internal", Type="network"
            )["LoadBalancers"][0]["LoadBalancerArn"]
            vpcs[reg] = vpc
            svc_azs[reg] = sorted(z["ZoneId"] for z in zones)

        spec = {
            "allowed": (region, False, [principal], [region]),
            "not_allowed": (region, False, [], [region]),
            "acceptance_required": (region, True, [principal], [region]),
            "other_region": (other_region, False, [principal], [other_region, region]),
        }
        azs_by_service: dict[str, list[str]] = {}
        for key, (reg, acceptance, principals, supported) in spec.items():
            ec2 = self.client("ec2", reg, cust)
            cfg = ec2.create_vpc_endpoint_service_configuration(
                NetworkLoadBalancerArns=[nlbs[reg]], AcceptanceRequired=acceptance,
                SupportedRegions=supported,
                TagSpecifications=[{"ResourceType": "vpc-endpoint-service",
                                    "Tags": [{"Key": "Name", "Value": key}]}],
            )["ServiceConfiguration"]
            if principals:
                ec2.modify_vpc_endpoint_service_permissions(
                    ServiceId=cfg["ServiceId"], AddAllowedPrincipals=principals
                )
            services[key] = cfg["ServiceName"]
            service_ids[key] = cfg["ServiceId"]
            azs_by_service[key] = svc_azs[reg]

        return SandboxSeed(
            endpoint_url=self.url, endpoints_account_id=ours, customer_account_id=cust,
            region=region, other_region=other_region, role_arn=role_arn,
            principal_arn=principal, endpoint_networks=networks, customer_services=services,
            customer_service_ids=service_ids,
            customer_role_arn=f"arn:aws:iam::{cust}:role/{ADMIN_ROLE_NAME}",
            customer_vpc_ids=vpcs, customer_az_ids=azs_by_service, customer_nlb_arns=nlbs,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the sandbox AWS (moto + PrivateLink)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--other-region", default="us-west-2")
    args = parser.parse_args(argv)
    sandbox = SandboxAws(args.host, args.port)
    sandbox.start()
    seed = sandbox.seed_default(args.region, args.other_region)
    print(seed.model_dump_json(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sandbox.stop()


if __name__ == "__main__":
    main()
