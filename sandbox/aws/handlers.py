"""The moto patching: EC2Response action handlers replaced by the PrivateLink model.

``install_privatelink()`` (idempotent, process-wide) swaps a few handlers of moto's
``EC2Response`` class and wraps its tag calls so the tag index stays current. ``self``
in every ``_h_*`` function is moto's EC2Response for the request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sandbox.aws import model, pagination, state
from sandbox.aws.state import LOCK, ec2_error, now, record

_ORIGINAL: dict[str, Callable[..., Any]] = {}
_ORIGINAL_BACKEND_CREATE: Callable[..., Any]


def _result(data: dict[str, Any]) -> Any:
    from moto.core.responses import ActionResult

    return ActionResult(data)


def _h_describe_vpc_endpoint_services(self: Any) -> Any:
    names = self._get_param("ServiceNames", []) or []
    regions = self._get_param("ServiceRegions", []) or []
    max_results, token = pagination.params(self)
    with LOCK:
        if names:
            details = []
            for name in names:
                owner, cfg = model.visible_service(self, name, regions)
                details.append(model.service_detail(cfg, owner))
        else:
            own = self.ec2_backend.describe_vpc_endpoint_services(
                service_names=[], filters=self._filters_from_querystring(),
                max_results=None, next_token=None, region=self.region,
            )["servicesDetails"]
            seen = {d["ServiceName"] for d in own}
            details = list(own)
            for owner, _reg, backend in model.backends(self.region):
                for cfg in list(backend.configurations.values()):
                    if cfg.service_name not in seen and model.allowed(self, owner, cfg):
                        details.append(model.service_detail(cfg, owner))
                        seen.add(cfg.service_name)
        chunk, next_token = pagination.page(
            details, lambda d: str(d["ServiceName"]), max_results=max_results,
            next_token=token, scope="DescribeVpcEndpointServices")
        return _result({"ServiceNames": [d["ServiceName"] for d in chunk],
                        "ServiceDetails": chunk, "NextToken": next_token})


def _create_params(self: Any) -> dict[str, Any]:
    from moto.ec2.utils import add_tag_specification

    return {
        "vpc": self._get_param("VpcId"),
        "svc": self._get_param("ServiceName"),
        "subnets": list(self._get_param("SubnetIds", []) or []),
        "sgs": list(self._get_param("SecurityGroupIds", []) or []),
        "token": self._get_param("ClientToken"),
        "service_region": self._get_param("ServiceRegion"),
        "dns": self._get_bool_param("PrivateDnsEnabled", if_none=False),
        "tags": add_tag_specification(self._get_param("TagSpecifications", []) or []),
    }


def _h_create_vpc_endpoint(self: Any) -> Any:
    endpoint_type = self._get_param("VpcEndpointType") or "Gateway"
    if endpoint_type.lower() != "interface":
        return _ORIGINAL["create_vpc_endpoint"](self)
    p = _create_params(self)
    backend = self.ec2_backend
    here = self.region
    with LOCK:
        model.sweep(backend)
        digest = model.params_digest(
            {"vpc": p["vpc"], "svc": p["svc"], "type": "interface",
             "subnets": sorted(p["subnets"]), "sgs": sorted(p["sgs"]),
             "region": p["service_region"] or here, "dns": p["dns"], "tags": p["tags"]})
        # Row 8: a token replay returns the original endpoint before any other check
        # (quota included), as EC2 does.
        tokens: dict[str, tuple[str, str]] = backend.__dict__.setdefault("_pl_tokens", {})
        if p["token"] and p["token"] in tokens:
            prev_digest, prev_id = tokens[p["token"]]
            if prev_digest != digest:
                raise ec2_error(
                    "IdempotentParameterMismatch",
                    "The request uses the same client token as a previous, but non-identical "
                    "request.",
                )
            if prev_id in backend.vpc_end_points:
                return _result(
                    {"VpcEndpoint": backend.vpc_end_points[prev_id], "ClientToken": p["token"]})
        ep, cfg = _validate_and_create(self, p)
        if p["token"]:
            tokens[p["token"]] = (digest, ep.id)
        record("created", ep, service_id=cfg.id)
        return _result({"VpcEndpoint": ep, "ClientToken": p["token"]})


def _validate_and_create(self: Any, p: dict[str, Any]) -> tuple[Any, Any]:
    """Rows 4-7, 11, 12, 16: validate like EC2, then create the endpoint and its ENIs."""
    backend = self.ec2_backend
    here = self.region
    service_name, vpc_id, subnet_ids, sg_ids = p["svc"], p["vpc"], p["subnets"], p["sgs"]
    backend.get_vpc(vpc_id)
    regions = [p["service_region"]] if p["service_region"] else []
    owner, cfg = model.visible_service(self, service_name, regions)
    svc_region = model.service_region(cfg)
    if p["service_region"] and p["service_region"] != svc_region:
        raise ec2_error(
            "InvalidServiceName", f"The Vpc Endpoint Service '{service_name}' does not exist")
    if not subnet_ids:
        raise ec2_error("InvalidParameter", "SubnetIds: at least one subnet is required.")
    subnets = [backend.get_subnet(s) for s in subnet_ids]
    for s in subnets:
        if s.vpc_id != vpc_id:
            raise ec2_error(
                "InvalidParameter", f"The subnet {s.id} does not belong to the VPC {vpc_id}.")
    azs = [s.availability_zone_id for s in subnets]
    dup = next((s for s, a in zip(subnets, azs, strict=True) if azs.count(a) > 1), None)
    if dup is not None:
        raise ec2_error(
            "DuplicateSubnetsInSameZone",
            f"Found another VPC endpoint subnet in the availability zone of {dup.id}")
    if svc_region == here:
        supported = set(model.service_az_ids(cfg))
        for s in subnets:
            if s.availability_zone_id not in supported:
                raise ec2_error(
                    "InvalidParameter",
                    f"The VPC endpoint service {service_name} does not support the "
                    f"availability zone of the subnet: {s.id}.",
                )
    for sg in sg_ids:
        if backend.get_security_group_from_id(sg) is None:
            raise ec2_error("InvalidGroup.NotFound", f"The security group '{sg}' does not exist")
    model.check_quota(backend, vpc_id)
    ep = _ORIGINAL_BACKEND_CREATE(
        backend, vpc_id=vpc_id, service_name=service_name, endpoint_type="Interface",
        policy_document=self._get_param("PolicyDocument"), route_table_ids=[],
        subnet_ids=[], client_token=p["token"], security_group_ids=sg_ids, tags=p["tags"],
        private_dns_enabled=p["dns"],
    )
    ep.subnet_ids = list(subnet_ids)
    ep.vpc_endpoint_type = "Interface"
    ep.service_region = svc_region
    ep.requester_managed = False
    ep.ip_address_type = "ipv4"
    eni_ids = []
    for s in subnets:
        eni = backend.create_network_interface(
            s, s.get_available_subnet_ip(ep), group_ids=sg_ids,
            description=f"VPC Endpoint Interface {ep.id}")
        eni.interface_type = "vpc_endpoint"
        eni.requester_managed = True
        eni_ids.append(eni.id)
    ep.network_interface_ids = eni_ids
    ep.dns_entries = model.dns_entries(ep.id, cfg, here, [s.availability_zone for s in subnets])
    t = now()
    delays = state.current().delays
    ep._pl = {
        "owner": owner, "service_id": cfg.id, "ready_at": t + delays.pending,
        "deleted_at": model.GONE, "gone_at": model.GONE, "visible_at": t + delays.lag,
        "expires_at": t + delays.expire if delays.expire is not None else model.GONE,
    }
    ep.state = "pendingAcceptance" if cfg.acceptance_required else "pending"
    return ep, cfg


def _not_found(ep_id: str) -> Exception:
    return ec2_error("InvalidVpcEndpointId.NotFound", f"The VpcEndPoint ID '{ep_id}' does not exist")


def _h_describe_vpc_endpoints(self: Any) -> Any:
    """Rows 10, 14, 18, 19: lag-aware, paginated, tag filters served from the index."""
    from moto.ec2.utils import generic_filter

    ids = list(self._get_param("VpcEndpointIds", []) or [])
    filters = self._filters_from_querystring() or {}
    max_results, token = pagination.params(self)
    backend = self.ec2_backend
    with LOCK:
        model.sweep(backend)
        t = now()
        eps = backend.vpc_end_points
        if ids:
            for ep_id in ids:
                if ep_id not in eps or not model.visible(eps[ep_id], t):
                    raise _not_found(ep_id)
            found = [eps[i] for i in dict.fromkeys(ids)]
        else:
            wanted = model.tag_candidates(backend, filters)
            pool = eps.values() if wanted is None else [eps[i] for i in wanted if i in eps]
            found = [ep for ep in pool if model.visible(ep, t)]
        found = generic_filter(filters, found) if filters else found
        chunk, next_token = pagination.page(
            found, lambda ep: str(ep.id), max_results=max_results, next_token=token,
            scope="DescribeVpcEndpoints")
        return _result({"VpcEndpoints": chunk, "NextToken": next_token})


def _h_delete_vpc_endpoints(self: Any) -> Any:
    """Row 10 (and 14: an endpoint still invisible is NotFound to delete too)."""
    ids = self._get_param("VpcEndpointIds", []) or []
    backend = self.ec2_backend
    unsuccessful = []
    with LOCK:
        model.sweep(backend)
        t = now()
        delays = state.current().delays
        for ep_id in ids:
            ep = backend.vpc_end_points.get(ep_id)
            if ep is None or not model.visible(ep, t):
                unsuccessful.append({"ResourceId": ep_id, "Error": {
                    "Code": "InvalidVpcEndpoint.NotFound",
                    "Message": f"The Vpc Endpoint Id '{ep_id}' does not exist"}})
                continue
            pl = getattr(ep, "_pl", None)
            if pl is None:  # gateway endpoints: moto's behaviour
                backend.delete_vpc_endpoints(vpce_ids=[ep_id])
                continue
            if ep.state in ("deleting", "deleted"):
                continue
            ep.state = "deleting"
            pl["deleted_at"] = t + delays.deleting
            pl["gone_at"] = pl["deleted_at"] + delays.deleted_visible
            record("deleting", ep, t)
    return _result({"Unsuccessful": unsuccessful})


def _connection_decision(self: Any, accept: bool) -> Any:
    service_id = self._get_param("ServiceId")
    ids = self._get_param("VpcEndpointIds", []) or []
    with LOCK:
        cfg = self.ec2_backend.configurations.get(service_id)
        if cfg is None:
            raise ec2_error(
                "InvalidVpcEndpointServiceId.NotFound",
                f"The VpcEndpointService Id '{service_id}' does not exist",
            )
        return _result({"Unsuccessful": model.decide(cfg, list(ids), accept)})


def _h_describe_vpc_endpoint_connections(self: Any) -> Any:
    """Row 9b: the owner's view (Filters service-id, vpc-endpoint-id, -state, -owner)."""
    filters = self._filters_from_querystring() or {}
    max_results, token = pagination.params(self)
    with LOCK:
        mine = {cfg.service_name: cfg for cfg in self.ec2_backend.configurations.values()}
        rows = []
        for acct, reg, backend in model.backends():
            model.sweep(backend)
            for ep in list(backend.vpc_end_points.values()):
                cfg = mine.get(ep.service_name)
                if cfg is None or not model.is_privatelink(ep):
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
        chunk, next_token = pagination.page(
            rows, lambda r: str(r["VpcEndpointId"]), max_results=max_results,
            next_token=token, scope="DescribeVpcEndpointConnections")
    return _result({"VpcEndpointConnections": chunk, "NextToken": next_token})


def _h_accept_vpc_endpoint_connections(self: Any) -> Any:
    return _connection_decision(self, True)


def _h_reject_vpc_endpoint_connections(self: Any) -> Any:
    return _connection_decision(self, False)


def _h_describe_network_interfaces(self: Any) -> Any:
    """Row 18: MaxResults 5-1000, not together with NetworkInterfaceIds."""
    ids = self._get_param("NetworkInterfaceIds", []) or []
    max_results, token = pagination.params(self)
    if ids and max_results is not None:
        raise ec2_error(
            "InvalidParameterCombination",
            "The parameter NetworkInterfaceIds cannot be used with the parameter MaxResults")
    self.error_on_dryrun()
    with LOCK:
        enis = self.ec2_backend.get_all_network_interfaces(ids, self._filters_from_querystring())
        chunk, next_token = pagination.page(
            enis, lambda e: str(e.id), max_results=max_results, next_token=token,
            scope="DescribeNetworkInterfaces", minimum=5)
    return _result({"NetworkInterfaces": chunk, "NextToken": next_token})


def _h_describe_subnets(self: Any) -> Any:
    """Row 18: MaxResults 5-1000."""
    self.error_on_dryrun()
    max_results, token = pagination.params(self)
    with LOCK:
        subnets = self.ec2_backend.describe_subnets(
            self._get_param("SubnetIds"), self._filters_from_querystring())
        chunk, next_token = pagination.page(
            subnets, lambda s: str(s.id), max_results=max_results, next_token=token,
            scope="DescribeSubnets", minimum=5)
    return _result({"Subnets": chunk, "NextToken": next_token})


_PATCHES: dict[str, Callable[..., Any]] = {
    "describe_vpc_endpoint_services": _h_describe_vpc_endpoint_services,
    "create_vpc_endpoint": _h_create_vpc_endpoint,
    "describe_vpc_endpoints": _h_describe_vpc_endpoints,
    "delete_vpc_endpoints": _h_delete_vpc_endpoints,
    "describe_vpc_endpoint_connections": _h_describe_vpc_endpoint_connections,
    "accept_vpc_endpoint_connections": _h_accept_vpc_endpoint_connections,
    "reject_vpc_endpoint_connections": _h_reject_vpc_endpoint_connections,
    "describe_network_interfaces": _h_describe_network_interfaces,
    "describe_subnets": _h_describe_subnets,
}


def _fast_tags(self: Any) -> list[dict[str, str]]:
    """moto's get_tags scans every tag of the account; read the resource's own dict."""
    return [
        {"resource_id": self.id, "key": k, "value": v, "resource_type": "vpc-endpoint"}
        for k, v in self.ec2_backend.tags.get(self.id, {}).items()
    ]


def _indexed(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: Any, resource_ids: list[str], *args: Any, **kwargs: Any) -> Any:
        ids = [r for r in resource_ids if isinstance(r, str) and r.startswith("vpce-")]
        before = {r: dict(self.tags.get(r, {})) for r in ids}
        result = original(self, resource_ids, *args, **kwargs)
        if ids:
            model.reindex(self, ids, before)
        return result

    wrapper.__name__ = name
    return wrapper


def install_privatelink() -> None:
    """Patch moto (idempotent, process-wide): the handlers above replace EC2Response's
    (originals kept in ``_ORIGINAL``: gateway endpoints still use them), tag writes keep
    the endpoint tag index current, and endpoint tags are read without a scan; two facts
    moto's server recomputed on every request are computed once (``_dispatch_once``)."""
    global _ORIGINAL_BACKEND_CREATE
    from moto.ec2.models import EC2Backend
    from moto.ec2.models.tags import TagBackend
    from moto.ec2.models.vpcs import VPCEndPoint
    from moto.ec2.responses import EC2Response

    with LOCK:
        if _ORIGINAL:
            return
        for name, fn in _PATCHES.items():
            orig = getattr(EC2Response, name, None)
            if orig is not None:
                _ORIGINAL[name] = orig
            setattr(EC2Response, name, fn)
        for name in ("create_tags", "delete_tags", "delete_tag_keys"):
            setattr(TagBackend, name, _indexed(name, getattr(TagBackend, name)))
        VPCEndPoint.get_tags = _fast_tags  # type: ignore[method-assign]
        _ORIGINAL_BACKEND_CREATE = EC2Backend.create_vpc_endpoint
        _dispatch_once()


def _dispatch_once() -> None:
    """moto's server recomputes, for every request, a response class's method names
    (``inspect.getmembers`` over EC2Response's hundreds of methods) and the list of its own
    service packages (``os.listdir`` and ``isdir`` over moto's directory): 19% and 4% of
    the sandbox process's CPU in the bench (py-spy), on a machine whose two cores the
    worker and the Temporal server share. Both are fixed once the handlers above are in
    place, so each is computed once."""
    import moto.backends
    import moto.core.responses

    moto.core.responses.method_names_from_class = functools.cache(  # type: ignore[assignment]
        moto.core.responses.method_names_from_class
    )
    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: modules  # type: ignore[assignment]
