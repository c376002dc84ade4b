"""The PrivateLink model on top of moto's EC2 objects: who sees which service, endpoint
state transitions on the sandbox clock, eventual consistency, quotas, the tag index,
the owner's decisions and the ground-truth inventory. No HTTP here (see handlers.py)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from typing import Any

from sandbox.aws import state
from sandbox.aws.state import LOCK, VPCE_HOSTED_ZONE_ID, ec2_error, now, record

GONE = float("inf")
PL_TIMES = ("ready_at", "deleted_at", "gone_at", "visible_at", "expires_at")
# States an admin may force (the VpcEndpoint State enum of the EC2 API).
STATES = ("pendingAcceptance", "pending", "available", "deleting", "deleted", "rejected",
          "failed", "expired", "partial")


def zone_ids(region: str) -> dict[str, str]:
    from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend

    return {z.name: z.zone_id for z in RegionsAndZonesBackend.zones.get(region, [])}


def backends(region: str | None = None) -> Iterable[tuple[str, str, Any]]:
    """(account, region, EC2 backend) of every backend that exists (none are created)."""
    from moto.ec2.models import ec2_backends

    for account_id in list(dict.keys(ec2_backends)):
        by_region = dict.__getitem__(ec2_backends, account_id)
        for reg, backend in list(dict.items(by_region)):
            if region is None or reg == region:
                yield account_id, reg, backend


# --------------------------------------------------------------------------- services


def find_service(service_name: str) -> tuple[str, Any, Any] | None:
    """(owner account, owner backend, VPCServiceConfiguration) of a service name."""
    parts = service_name.split(".")
    region = parts[3] if len(parts) == 5 else None
    for account_id, _reg, backend in backends(region):
        for cfg in list(backend.configurations.values()):
            if cfg.service_name == service_name:
                return account_id, backend, cfg
    return None


def service_region(cfg: Any) -> str:
    return str(cfg.ec2_backend.region_name)


def service_az_ids(cfg: Any) -> list[str]:
    names = zone_ids(service_region(cfg))
    return sorted({names[az] for az in cfg.availability_zones if az in names})


def caller_arns(response: Any) -> set[str]:
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


def allowed(response: Any, owner: str, cfg: Any) -> bool:
    """Fidelity row 2: the owner, `*`, the caller's account root or its role ARN."""
    if owner == response.current_account:
        return True
    principals = set(cfg.principals)
    return "*" in principals or bool(principals & caller_arns(response))


def service_detail(cfg: Any, owner: str) -> dict[str, Any]:
    """Fidelity row 3."""
    d = cfg.to_dict()
    d["AvailabilityZones"] = sorted(set(cfg.availability_zones))
    d["AvailabilityZoneIds"] = service_az_ids(cfg)
    d["Owner"] = owner
    d["ServiceRegion"] = service_region(cfg)
    d["AcceptanceRequired"] = bool(cfg.acceptance_required)
    if not cfg.private_dns_name:
        d.pop("PrivateDnsName", None)
        d["PrivateDnsNames"] = []
    return d


def visible_service(response: Any, name: str, service_regions: list[str]) -> tuple[str, Any]:
    """The service a caller in response.region may use, or InvalidServiceName (rows 2, 7)."""
    found = find_service(name)
    if found is None:
        raise ec2_error("InvalidServiceName", f"The Vpc Endpoint Service '{name}' does not exist")
    owner, _backend, cfg = found
    svc_region = service_region(cfg)
    here = response.region
    ok = allowed(response, owner, cfg)
    if svc_region != here:
        ok = ok and svc_region in service_regions and here in cfg._supported_region_names
    if not ok:
        raise ec2_error("InvalidServiceName", f"The Vpc Endpoint Service '{name}' does not exist")
    return owner, cfg


# --------------------------------------------------------------------------- endpoints


def is_privatelink(ep: Any) -> bool:
    return getattr(ep, "_pl", None) is not None


def advance(ep: Any, t: float | None = None) -> bool:
    """Apply due transitions (rows 9, 10, 15); False when the endpoint is gone."""
    t = now() if t is None else t
    pl = getattr(ep, "_pl", None)
    if pl is None:
        return True
    if ep.state == "pending" and t >= pl["ready_at"]:
        ep.state = "available"
        record("state", ep, pl["ready_at"])
    if ep.state == "pendingAcceptance" and t >= pl.get("expires_at", GONE):
        ep.state = "expired"
        record("state", ep, pl["expires_at"])
    if ep.state == "deleting" and t >= pl["deleted_at"]:
        ep.state = "deleted"
        release_enis(ep)
        record("deleted", ep, pl["deleted_at"])
    return not (ep.state == "deleted" and t >= pl["gone_at"])


def visible(ep: Any, t: float | None = None) -> bool:
    """Fidelity row 14: EC2 eventual consistency right after CreateVpcEndpoint."""
    pl = getattr(ep, "_pl", None)
    return pl is None or (now() if t is None else t) >= pl.get("visible_at", 0.0)


def release_enis(ep: Any) -> None:
    backend = ep.ec2_backend
    for eni_id in list(ep.network_interface_ids):
        eni = backend.enis.pop(eni_id, None)
        if eni is not None and eni.subnet is not None and eni.private_ip_address:
            eni.subnet.del_subnet_ip(eni.private_ip_address)


def sweep(backend: Any) -> None:
    t = now()
    for ep_id, ep in list(backend.vpc_end_points.items()):
        if not advance(ep, t):
            backend.vpc_end_points.pop(ep_id, None)
            # Its tags go with it (the index stays the size of the live endpoints).
            before = {ep_id: dict(backend.tags.get(ep_id, {}))}
            backend.tags.pop(ep_id, None)
            reindex(backend, [ep_id], before)


def sweep_all() -> None:
    for _acct, _reg, backend in backends():
        sweep(backend)


def find_endpoint(ep_id: str) -> Any | None:
    """An endpoint by id in any account and region (admin and in-process controls)."""
    for _acct, _reg, backend in backends():
        sweep(backend)
        ep = backend.vpc_end_points.get(ep_id)
        if ep is not None and is_privatelink(ep):
            return ep
    return None


def params_digest(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def dns_entries(ep_id: str, cfg: Any, region: str, az_names: list[str]) -> list[dict[str, str]]:
    """Fidelity row 12: a Regional name plus one zonal name per AZ."""
    suffix = f"{cfg.id}.{region}.vpce.amazonaws.com"
    regional = f"{ep_id}-{uuid.uuid4().hex[:8]}.{suffix}"
    entries = [{"DnsName": regional, "HostedZoneId": VPCE_HOSTED_ZONE_ID}]
    base = regional.split(".", 1)[0]
    for az in sorted(az_names):
        entries.append({"DnsName": f"{base}-{az}.{suffix}", "HostedZoneId": VPCE_HOSTED_ZONE_ID})
    return entries


def interface_endpoints_in(backend: Any, vpc_id: str) -> int:
    """What counts against the per-VPC quota: every interface endpoint not yet deleted."""
    return sum(
        1 for ep in backend.vpc_end_points.values()
        if is_privatelink(ep) and ep.vpc_id == vpc_id and ep.state != "deleted"
    )


def check_quota(backend: Any, vpc_id: str) -> None:
    """Fidelity row 16: `VpcEndpointLimitExceeded` once the VPC holds its quota."""
    limit = state.current().quotas.interface_endpoints_per_vpc
    if interface_endpoints_in(backend, vpc_id) >= limit:
        raise ec2_error(
            "VpcEndpointLimitExceeded",
            f"The maximum number of VPC endpoints ({limit}) has been reached in {vpc_id}.",
        )


def set_state(ep: Any, new: str) -> None:
    """Force a state (admin control for states no API call reaches: failed, partial…)."""
    if new not in STATES:
        raise ValueError(f"unknown endpoint state {new!r}; one of {list(STATES)}")
    pl = ep._pl
    t = now()
    if new == "deleting":
        pl["deleted_at"] = t + state.current().delays.deleting
        pl["gone_at"] = pl["deleted_at"] + state.current().delays.deleted_visible
    elif new == "deleted":
        if ep.state != "deleted":
            release_enis(ep)
        pl["deleted_at"] = t
        pl["gone_at"] = t + state.current().delays.deleted_visible
    elif new == "pending":
        pl["ready_at"] = t + state.current().delays.pending
    ep.state = new
    record("deleted" if new == "deleted" else "state", ep, t, forced=True)


def decide(cfg: Any, ids: list[str], accept: bool) -> list[dict[str, Any]]:
    """The owner accepts or rejects endpoint connections; returns Unsuccessful items.

    Accept: only ``pendingAcceptance`` (→ ``pending`` → ``available``). Reject: a pending
    request, or one already accepted (``pending``/``available``) → ``rejected``, as the
    owner may do in the console or with RejectVpcEndpointConnections (rows 9, 17).
    """
    endpoints = {}
    for _acct, _reg, backend in backends():
        sweep(backend)
        for ep in backend.vpc_end_points.values():
            if ep.service_name == cfg.service_name and is_privatelink(ep):
                endpoints[ep.id] = ep
    rejectable = ("pendingAcceptance", "pending", "available")
    unsuccessful = []
    t = now()
    for ep_id in ids:
        ep = endpoints.get(ep_id)
        ok_states = ("pendingAcceptance",) if accept else rejectable
        if ep is None or ep.state not in ok_states:
            unsuccessful.append({"ResourceId": ep_id, "Error": {
                "Code": "InvalidVpcEndpoint.NotFound" if ep is None else "InvalidState",
                "Message": f"The Vpc Endpoint Id '{ep_id}' does not exist" if ep is None
                else f"Vpc Endpoint {ep_id} is in state {ep.state}"}})
            continue
        if accept:
            ep.state = "pending"
            ep._pl["ready_at"] = t + state.current().delays.pending
        else:
            ep.state = "rejected"
        record("state", ep, t)
    return unsuccessful


def replace_ips(ep: Any) -> list[str]:
    """AWS moved the endpoint's ENIs to new private IPs (same subnets); the new IPs."""
    backend = ep.ec2_backend
    ips = []
    for eni_id in ep.network_interface_ids:
        eni = backend.enis.get(eni_id)
        if eni is None or eni.subnet is None:
            continue
        old = eni.private_ip_address
        new = eni.subnet.get_available_subnet_ip(eni)
        if old:
            eni.subnet.del_subnet_ip(old)
        eni.private_ip_address = new
        eni.private_ip_addresses = [{"Primary": True, "PrivateIpAddress": new}]
        ips.append(new)
    record("state", ep, ips=sorted(ips))
    return sorted(ips)


def describe(ep: Any) -> dict[str, Any]:
    """One inventory row: the truth, whatever the eventual-consistency lag hides."""
    backend = ep.ec2_backend
    ips = []
    for eni_id in ep.network_interface_ids:
        eni = backend.enis.get(eni_id)
        if eni is not None and eni.private_ip_address:
            ips.append(eni.private_ip_address)
    return {
        "vpc_endpoint_id": ep.id,
        "state": ep.state,
        "vpc_id": ep.vpc_id,
        "region": backend.region_name,
        "account_id": backend.account_id,
        "service_name": ep.service_name,
        "tags": dict(backend.tags.get(ep.id, {})),
        "ips": sorted(ips),
        "network_interface_ids": list(ep.network_interface_ids),
        "visible": visible(ep),
    }


def inventory() -> list[dict[str, Any]]:
    with LOCK:
        rows = []
        for _acct, _reg, backend in backends():
            sweep(backend)
            rows += [describe(ep) for ep in backend.vpc_end_points.values() if is_privatelink(ep)]
    return sorted(rows, key=lambda r: r["vpc_endpoint_id"])


# --------------------------------------------------------------------------- tag index


def tag_index(backend: Any) -> dict[tuple[str, str], set[str]]:
    """(tag key, value) → endpoint ids (fidelity row 19: tag filters without a scan).

    Kept in the backend (so snapshots carry it), updated by the patched tag calls, and
    rebuilt from moto's tags when a backend predates it.
    """
    index: dict[tuple[str, str], set[str]] | None = backend.__dict__.get("_pl_tag_index")
    if index is None:
        index = {}
        for rid, tags in list(backend.tags.items()):
            if rid.startswith("vpce-"):
                for k, v in tags.items():
                    index.setdefault((k, v), set()).add(rid)
        backend.__dict__["_pl_tag_index"] = index
    return index


def reindex(backend: Any, resource_ids: Iterable[str], before: dict[str, dict[str, str]]) -> None:
    index = tag_index(backend)
    for rid in resource_ids:
        if not rid.startswith("vpce-"):
            continue
        for k, v in before.get(rid, {}).items():
            ids = index.get((k, v))
            if ids is not None:
                ids.discard(rid)
                if not ids:
                    del index[(k, v)]
        for k, v in backend.tags.get(rid, {}).items():
            index.setdefault((k, v), set()).add(rid)


def tag_candidates(backend: Any, filters: dict[str, list[str]]) -> set[str] | None:
    """Endpoint ids that can match the exact-value ``tag:`` filters; None = no such filter."""
    found: set[str] | None = None
    for name, values in filters.items():
        if not name.startswith("tag:") or any(c in v for v in values for c in "*?"):
            continue
        index = tag_index(backend)
        ids: set[str] = set()
        for v in values:
            ids |= index.get((name[4:], v), set())
        found = ids if found is None else found & ids
    return found
