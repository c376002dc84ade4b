"""PrivateLink activities on boto3, in the dedicated endpoints account.

Credentials: with ``PRIVNET_AWS_ROLE_ARN`` set, a session whose credentials are botocore
``DeferredRefreshableCredentials`` backed by STS AssumeRole (refreshed before expiry);
unset, the ambient credentials of the given/default session. ``PRIVNET_AWS_ENDPOINT_URL``
overrides every endpoint (sandbox). One client per service and region, cached, retry mode
``standard``, an HTTP pool of ``PRIVNET_AWS_MAX_POOL_CONNECTIONS`` (default 64, the
worker's activity concurrency, so threads never wait for or discard connections).

Activities are sync ``def`` (the worker runs them in a thread pool). Every AWS error goes
through ONE table, ``activities.aws_errors.classify``. Lookups follow NextToken (boto3
paginators). Every AWS call (each page) is counted by operation in
``privnet_aws_calls_total{operation}`` and in the in-process ``CALLS``.

EC2 is eventually consistent: right after CreateVpcEndpoint the id may be NotFound. The
describe-style activities take ``not_found_retry_until``: before it a NotFound is the
retryable, benign ``ENDPOINT_NOT_VISIBLE_YET``; after it, ``ENDPOINT_NOT_FOUND``
(non-retryable; the workflow decides when NotFound is authoritative).

Usage::

    acts = AwsActivities(get_settings())          # or AwsActivities(settings, session)
    Worker(..., activities=acts.activities(), activity_executor=ThreadPoolExecutor(64))
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import boto3
import botocore.session
import structlog
from botocore.config import Config
from botocore.credentials import DeferredRefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter as PromCounter
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.aws_errors import (
    ACCESS_DENIED_CODES,
    CONFIGURATION_CODES,
    ENDPOINT_NOT_FOUND_CODES,
    EVENTUALLY_CONSISTENT,
    STATE_REASONS,
    THROTTLING_CODES,
    TRANSIENT_CODES,
    ErrorContext,
    _fatal,
    az_not_supported,
    before,
    classify,
    classify_exception,
    classify_state,
    not_visible_yet,
    principal_not_allowed,
    quota_exceeded,
    region_not_supported,
)
from activities.status_writes import StatusWriter, write_passing_status
from settings import EndpointNetwork, Settings
from workflows.contracts import (
    ACT_CHECK_PRINCIPAL,
    ACT_CREATE_ENDPOINT,
    ACT_DELETE_ENDPOINT,
    ACT_GET_ENDPOINT_ADDRESSES,
    ACT_WAIT_ENDPOINT_DELETED,
    ACT_WAIT_FOR_STATE_CHANGE,
    ENDPOINT_NOT_DELETED_YET,
    MANAGED_BY,
    STATE_UNCHANGED,
    CheckPrincipalInput,
    CreateEndpointInput,
    DeleteEndpointInput,
    DeleteEndpointResult,
    EndpointAddresses,
    EndpointAddressesInput,
    EndpointRef,
    EndpointState,
    Reason,
    ServiceInfo,
    WaitStateInput,
)

__all__ = [  # the error table lives in aws_errors; these names stay importable from here
    "ACCESS_DENIED_CODES", "CONFIGURATION_CODES", "ENDPOINT_NOT_FOUND_CODES",
    "EVENTUALLY_CONSISTENT", "STATE_REASONS", "THROTTLING_CODES", "TRANSIENT_CODES",
    "AwsActivities", "CallCounter", "ErrorContext", "classify", "classify_exception",
    "classify_state", "client_token",
]

log = structlog.get_logger("privnet.aws")

TAG_ORG_ID = "privnet.dev/org-id"
TAG_CONNECTION_ID = "privnet.dev/connection-id"
TAG_MANAGED_BY = "privnet.dev/managed-by"
GONE_STATES = frozenset({"deleting", "deleted"})
DELETE_BATCH = 25  # DeleteVpcEndpoints takes at most 25 ids

# --------------------------------------------------------------------------- call counting

AWS_CALLS = PromCounter(
    "privnet_aws_calls_total", "AWS API calls made by privnet activities", ["operation"]
)


class CallCounter:
    """Thread-safe count of AWS API calls by operation (one per HTTP request)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, operation: str) -> None:
        with self._lock:
            self._counts[operation] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


CALLS = CallCounter()


def client_token(org_id: str, connection_id: str) -> str:
    """Deterministic CreateVpcEndpoint ClientToken (≤ 64 ASCII characters)."""
    digest = hashlib.sha256(f"{org_id}/{connection_id}".encode()).hexdigest()[:48]
    return f"privnet-{digest}"


def tags_of(ep: dict[str, Any]) -> dict[str, str]:
    return {str(t.get("Key")): str(t.get("Value")) for t in ep.get("Tags") or []}


def is_ours(ep: dict[str, Any], org_id: str, connection_id: str) -> bool:
    """Ownership (issue 11): the endpoint's tags name this org, this connection and privnet."""
    tags = tags_of(ep)
    return (
        tags.get(TAG_ORG_ID) == org_id
        and tags.get(TAG_CONNECTION_ID) == connection_id
        and tags.get(TAG_MANAGED_BY) == MANAGED_BY
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _attempt() -> int:
    return activity.info().attempt if activity.in_activity() else 1


class AwsActivities:
    """boto3 adapter for PrivateLink. ``session`` supplies the base credentials (default
    ``boto3.Session()``); ``client_config`` is merged over the default (retry mode
    standard, 3 attempts); ``page_size`` sets MaxResults on paginated lookups (None: let
    AWS choose)."""

    def __init__(
        self,
        settings: Settings,
        session: boto3.Session | None = None,
        *,
        client_config: Config | None = None,
        counter: CallCounter | None = None,
        page_size: int | None = None,
        status_writer: StatusWriter | None = None,
    ) -> None:
        self.settings = settings
        self._status_writer = status_writer  # the store, for the statuses steps pass through
        self.calls = counter or CALLS
        self.page_size = page_size
        self._config = Config(
            retries={"mode": "standard", "total_max_attempts": 3},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=settings.aws_max_pool_connections,
        )
        if client_config is not None:
            self._config = self._config.merge(client_config)
        self._base_session = session or boto3.Session()
        self._lock = threading.RLock()
        self._clients: dict[tuple[str, str], Any] = {}
        self._subnet_azs: dict[tuple[str, str], dict[str, str]] = {}
        self._full_until: dict[str, float] = {}  # VPC id → monotonic time it may have room
        self._principal: str | None = settings.aws_principal_arn
        self._session = self._make_session()

    # ---- plumbing

    def activities(self) -> list[Any]:
        return [
            self.check_principal,
            self.create_endpoint,
            self.wait_for_state_change,
            self.get_endpoint_addresses,
            self.delete_endpoint,
            self.wait_endpoint_deleted,
        ]

    def _count(self, model: Any = None, **_: Any) -> None:
        name = getattr(model, "name", "unknown")
        self.calls.add(name)
        AWS_CALLS.labels(operation=name).inc()

    def _new_client(self, session: boto3.Session, service: str, region: str) -> Any:
        client: Any = session.client(  # type: ignore[call-overload]
            service,
            region_name=region,
            endpoint_url=self.settings.aws_endpoint_url,
            config=self._config,
        )
        client.meta.events.register("before-call", self._count)
        return client

    def _make_session(self) -> boto3.Session:
        role = self.settings.aws_role_arn
        if not role:
            return self._base_session
        sts = self._new_client(self._base_session, "sts", self.settings.aws_region)

        def refresh() -> dict[str, str]:
            creds = sts.assume_role(RoleArn=role, RoleSessionName="privnet-worker")["Credentials"]
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": creds["Expiration"].isoformat(),
            }

        core = botocore.session.Session()
        core._credentials = DeferredRefreshableCredentials(  # type: ignore[attr-defined]
            refresh_using=refresh, method="sts-assume-role"
        )
        return boto3.Session(botocore_session=core, region_name=self.settings.aws_region)

    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._new_client(self._session, service, region)
            return self._clients[key]

    def _ec2(self, region: str) -> Any:
        return self.client("ec2", region)

    def _pages(self, region: str, operation: str, key: str, **kwargs: Any) -> list[Any]:
        """Every item of a paginated describe, following NextToken."""
        config = {"PageSize": self.page_size} if self.page_size and "Filters" in kwargs else {}
        paginator = self._ec2(region).get_paginator(operation)
        return [item for page in paginator.paginate(**kwargs, PaginationConfig=config)
                for item in page.get(key, [])]

    def principal_arn(self) -> str:
        """settings.aws_principal_arn, else arn:aws:iam::<our account>:root (cached)."""
        if self._principal is None:
            try:
                ident = self.client("sts", self.settings.aws_region).get_caller_identity()
                self._principal = f"arn:aws:iam::{ident['Account']}:root"
            except (ClientError, BotoCoreError):
                return "arn:aws:iam::<endpoints account id>:root"
        return self._principal

    @contextmanager
    def _aws(self, operation: str, ctx: ErrorContext) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and _code(exc) == "InvalidServiceName":
                ctx = ErrorContext(**{**ctx.__dict__, "principal_arn": self.principal_arn()})
            raise classify_exception(exc, operation, ctx) from exc

    def _ctx(self, **kw: Any) -> ErrorContext:
        return ErrorContext(
            principal_arn=self._principal, role_arn=self.settings.aws_role_arn, **kw
        )

    # ---- networks (several VPCs per region: the per-VPC endpoint quota)

    def _networks(self, region: str) -> list[EndpointNetwork]:
        networks = self.settings.networks_for(region)
        if not networks:
            raise _fatal(
                Reason.CONFIGURATION_ERROR,
                f"no endpoint network configured for region {region}: add it to "
                "PRIVNET_ENDPOINT_NETWORKS (vpc_id, subnet_ids, security_group_ids)",
            )
        return networks

    def _by_room(self, region: str) -> list[EndpointNetwork]:
        """Networks in configured order, those recently full last (retried only when all
        are full: the memory may be stale)."""
        now = time.monotonic()
        with self._lock:
            full = {v for v, until in self._full_until.items() if until > now}
        networks = self._networks(region)
        return [n for n in networks if n.vpc_id not in full] + [
            n for n in networks if n.vpc_id in full
        ]

    def _mark_full(self, vpc_id: str) -> None:
        with self._lock:
            self._full_until[vpc_id] = time.monotonic() + self.settings.endpoint_vpc_full_seconds

    def _network_subnets(self, region: str, network: EndpointNetwork) -> dict[str, str]:
        """subnet id → AZ id of one endpoint network (cached: immutable)."""
        key = (region, network.vpc_id)
        with self._lock:
            cached = self._subnet_azs.get(key)
        if cached is not None:
            return cached
        kwargs: dict[str, Any] = (
            {"SubnetIds": network.subnet_ids}
            if network.subnet_ids
            else {"Filters": [{"Name": "vpc-id", "Values": [network.vpc_id]}]}
        )
        with self._aws("DescribeSubnets", self._ctx(region=region)):
            subnets = self._pages(region, "describe_subnets", "Subnets", **kwargs)
        result = {s["SubnetId"]: s["AvailabilityZoneId"] for s in subnets}
        with self._lock:
            self._subnet_azs[key] = result
        return result

    def our_subnets(self, region: str) -> dict[str, str]:
        """subnet id → AZ id of the first endpoint network of ``region``."""
        return self._network_subnets(region, self._networks(region)[0])

    # ---- endpoints

    def _find_by_connection(
        self, region: str, connection_id: str, org_id: str, include_gone: bool = False
    ) -> list[dict[str, Any]]:
        """privnet's endpoints of (org, connection), oldest first (every page)."""
        filters = [
            {"Name": f"tag:{TAG_CONNECTION_ID}", "Values": [connection_id]},
            {"Name": f"tag:{TAG_ORG_ID}", "Values": [org_id]},
            {"Name": f"tag:{TAG_MANAGED_BY}", "Values": [MANAGED_BY]},
        ]
        with self._aws("DescribeVpcEndpoints", self._ctx(region=region)):
            eps = self._pages(region, "describe_vpc_endpoints", "VpcEndpoints", Filters=filters)
        live = [
            e for e in eps if include_gone or str(e.get("State", "")).lower() not in GONE_STATES
        ]
        return sorted(live, key=lambda e: (str(e.get("CreationTimestamp", "")), e["VpcEndpointId"]))

    def _describe_or_none(self, region: str, endpoint_id: str) -> dict[str, Any] | None:
        """The endpoint, or None when EC2 answers NotFound."""
        ctx = self._ctx(region=region, endpoint_id=endpoint_id)
        try:
            eps = self._ec2(region).describe_vpc_endpoints(VpcEndpointIds=[endpoint_id])[
                "VpcEndpoints"
            ]
        except ClientError as exc:
            if _code(exc) in ENDPOINT_NOT_FOUND_CODES:
                return None
            raise classify_exception(exc, "DescribeVpcEndpoints", ctx) from exc
        except BotoCoreError as exc:
            raise classify_exception(exc, "DescribeVpcEndpoints", ctx) from exc
        return dict(eps[0]) if eps else None

    def _describe(
        self, region: str, endpoint_id: str, not_found_retry_until: datetime | None
    ) -> dict[str, Any]:
        ep = self._describe_or_none(region, endpoint_id)
        if ep is not None:
            return ep
        ctx = self._ctx(region=region, endpoint_id=endpoint_id)
        if before(not_found_retry_until):
            raise not_visible_yet(ctx, not_found_retry_until)
        raise classify("InvalidVpcEndpointId.NotFound", "DescribeVpcEndpoints", ctx=ctx)

    # ---- activities

    @activity.defn(name=ACT_CHECK_PRINCIPAL)
    def check_principal(self, input: CheckPrincipalInput) -> ServiceInfo:
        write_passing_status(self._status_writer, input.status)
        cross = input.service_region != input.region
        networks = self._networks(input.region)
        ours = self._network_subnets(input.region, networks[0])
        our_azs = sorted(set(ours.values()))
        ctx = self._ctx(
            service_name=input.service_name,
            region=input.region,
            service_region=input.service_region,
            our_az_ids=our_azs,
        )
        if cross:
            # Consumer-Region view (DescribeVpcEndpointServices ServiceRegions): found only
            # when we are allowed AND our Region is one of the service's supported Regions.
            try:
                resp = self._ec2(input.region).describe_vpc_endpoint_services(
                    ServiceNames=[input.service_name], ServiceRegions=[input.service_region]
                )
            except ClientError as exc:
                if _code(exc) != "InvalidServiceName":
                    raise classify_exception(exc, "DescribeVpcEndpointServices", ctx) from exc
                # Tell "not allowed" from "Region not supported" in the service's Region.
                with self._aws("DescribeVpcEndpointServices", ctx):
                    self._ec2(input.service_region).describe_vpc_endpoint_services(
                        ServiceNames=[input.service_name]
                    )
                raise region_not_supported(ctx) from exc
            except BotoCoreError as exc:
                raise classify_exception(exc, "DescribeVpcEndpointServices", ctx) from exc
        else:
            with self._aws("DescribeVpcEndpointServices", ctx):
                resp = self._ec2(input.region).describe_vpc_endpoint_services(
                    ServiceNames=[input.service_name]
                )
        details = [
            d for d in resp.get("ServiceDetails", []) if d["ServiceName"] == input.service_name
        ]
        if not details:
            raise principal_not_allowed(
                ErrorContext(**{**ctx.__dict__, "principal_arn": self.principal_arn()})
            )
        d = details[0]
        az_ids = sorted(d.get("AvailabilityZoneIds") or [])
        if cross:
            # A cross-Region endpoint lives in our Region's AZs; the provider's AZs are remote.
            usable = our_azs
            supported = sorted({input.service_region, input.region})
        else:
            usable = sorted(set(az_ids) & set(our_azs))
            for network in networks[1:]:  # only when the first VPC has none of their AZs
                if usable:
                    break
                more = set(self._network_subnets(input.region, network).values())
                our_azs = sorted(set(our_azs) | more)
                usable = sorted(set(az_ids) & more)
            supported = [input.region]
            if not usable:
                raise az_not_supported(ErrorContext(
                    **{**ctx.__dict__, "service_az_ids": az_ids, "our_az_ids": our_azs}))
        return ServiceInfo(
            service_name=input.service_name,
            service_id=d.get("ServiceId"),
            az_ids=az_ids,
            acceptance_required=bool(d.get("AcceptanceRequired")),
            supported_regions=supported,
            private_dns_name=d.get("PrivateDnsName") or None,
            usable_az_ids=usable,
        )

    def _choose_subnets(self, input: CreateEndpointInput, network: EndpointNetwork) -> list[str]:
        """One subnet per usable AZ of ``network`` (empty: none of the service's AZs)."""
        ours = self._network_subnets(input.region, network)
        cross = input.service_region != input.region
        wanted = set(ours.values()) if cross else set(input.service_az_ids)
        chosen: dict[str, str] = {}
        for subnet_id, az in sorted(ours.items(), key=lambda kv: (kv[1], kv[0])):
            if az in wanted and az not in chosen:
                chosen[az] = subnet_id
        return [chosen[az] for az in sorted(chosen)]

    def _create_params(
        self, input: CreateEndpointInput, network: EndpointNetwork, subnets: list[str]
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "VpcEndpointType": "Interface",
            "VpcId": network.vpc_id,
            "ServiceName": input.service_name,
            "SubnetIds": subnets,
            # Traffic goes to the ENI IPs (Cilium /32s); private DNS would clash when two
            # orgs connect to the same service from one VPC.
            "PrivateDnsEnabled": False,
            "ClientToken": client_token(input.org_id, input.connection_id),
            "TagSpecifications": [
                {
                    "ResourceType": "vpc-endpoint",
                    "Tags": [
                        {"Key": TAG_ORG_ID, "Value": input.org_id},
                        {"Key": TAG_CONNECTION_ID, "Value": input.connection_id},
                        {"Key": TAG_MANAGED_BY, "Value": MANAGED_BY},
                        {"Key": "Name", "Value": f"privnet-{input.org_id}-{input.connection_id}"},
                    ],
                }
            ],
        }
        if network.security_group_ids:
            params["SecurityGroupIds"] = list(network.security_group_ids)
        if input.service_region != input.region:
            params["ServiceRegion"] = input.service_region
        return params

    @activity.defn(name=ACT_CREATE_ENDPOINT)
    def create_endpoint(self, input: CreateEndpointInput) -> EndpointRef:
        """CreateVpcEndpoint with a ClientToken derived from (org, connection): a replay
        returns the same endpoint, so no lookup precedes the first attempt. After an
        ambiguous outcome (a retry; IdempotentParameterMismatch) the endpoint may exist:
        it is found by its tags and returned with ``created=False``."""
        write_passing_status(self._status_writer, input.status)
        if _attempt() > 1:
            existing = self._find_by_connection(input.region, input.connection_id, input.org_id)
            if existing:
                ep = existing[0]
                return EndpointRef(vpc_endpoint_id=ep["VpcEndpointId"], state=ep["State"])
        ctx = self._ctx(
            service_name=input.service_name,
            region=input.region,
            service_region=input.service_region,
            service_az_ids=input.service_az_ids,
        )
        full: list[str] = []
        our_azs: set[str] = set()
        tried = 0
        for network in self._by_room(input.region):
            subnets = self._choose_subnets(input, network)
            our_azs |= set(self._network_subnets(input.region, network).values())
            if not subnets:
                continue
            tried += 1
            try:
                ep = self._ec2(input.region).create_vpc_endpoint(
                    **self._create_params(input, network, subnets)
                )["VpcEndpoint"]
            except ClientError as exc:
                code = _code(exc)
                if code == "VpcEndpointLimitExceeded":
                    self._mark_full(network.vpc_id)
                    full.append(network.vpc_id)
                    log.warning("endpoint VPC full", vpc_id=network.vpc_id, region=input.region)
                    continue
                if code == "IdempotentParameterMismatch":
                    return self._after_mismatch(input, ctx, exc)
                err_ctx = ErrorContext(**{**ctx.__dict__, "our_az_ids": sorted(our_azs)})
                if code == "InvalidServiceName":
                    err_ctx = ErrorContext(
                        **{**err_ctx.__dict__, "principal_arn": self.principal_arn()})
                raise classify_exception(exc, "CreateVpcEndpoint", err_ctx) from exc
            except BotoCoreError as exc:
                raise classify_exception(exc, "CreateVpcEndpoint", ctx) from exc
            return EndpointRef(vpc_endpoint_id=ep["VpcEndpointId"], state=ep["State"], created=True)
        if tried == 0:
            raise az_not_supported(ErrorContext(**{**ctx.__dict__, "our_az_ids": sorted(our_azs)}))
        raise quota_exceeded(ctx, full)

    def _after_mismatch(
        self, input: CreateEndpointInput, ctx: ErrorContext, exc: ClientError
    ) -> EndpointRef:
        """Our token was used with other parameters (the endpoint network changed, or an
        earlier attempt went to another VPC): an endpoint may exist; find it by tags."""
        existing = self._find_by_connection(input.region, input.connection_id, input.org_id)
        if existing:
            ep = existing[0]
            return EndpointRef(vpc_endpoint_id=ep["VpcEndpointId"], state=ep["State"])
        raise _fatal(
            Reason.ENDPOINT_CREATE_FAILED,
            f"CreateVpcEndpoint: IdempotentParameterMismatch for connection "
            f"{input.org_id}/{input.connection_id}: an earlier create with this connection's "
            "client token used other parameters (was PRIVNET_ENDPOINT_NETWORKS changed?) and "
            "no endpoint tagged with this connection is visible; delete any endpoint tagged "
            f"{TAG_CONNECTION_ID}={input.connection_id} by hand and create the connection "
            "again under a new connection id",
        ) from exc

    @activity.defn(name=ACT_WAIT_FOR_STATE_CHANGE)
    def wait_for_state_change(self, input: WaitStateInput) -> EndpointState:
        ep = self._describe(input.region, input.vpc_endpoint_id, input.not_found_retry_until)
        state = str(ep["State"])
        if input.last_state is not None and state.lower() == input.last_state.lower():
            raise ApplicationError(
                f"VPC endpoint {input.vpc_endpoint_id} is still {state}",
                type=STATE_UNCHANGED,
                category=ApplicationErrorCategory.BENIGN,
            )
        # Available: read the ENI IPs now, saving the workflow a step and AWS a describe.
        addresses = self._addresses(input.region, ep) if state.lower() == "available" else None
        return EndpointState(
            vpc_endpoint_id=input.vpc_endpoint_id,
            state=state,
            attempt=_attempt(),
            addresses=addresses,
        )

    @activity.defn(name=ACT_GET_ENDPOINT_ADDRESSES)
    def get_endpoint_addresses(self, input: EndpointAddressesInput) -> EndpointAddresses:
        ep = self._describe(input.region, input.vpc_endpoint_id, input.not_found_retry_until)
        return self._addresses(input.region, ep)

    def _addresses(self, region: str, ep: dict[str, Any]) -> EndpointAddresses:
        """The private IPs of an endpoint's ENIs (one DescribeNetworkInterfaces)."""
        endpoint_id = str(ep["VpcEndpointId"])
        eni_ids = list(ep.get("NetworkInterfaceIds") or [])
        ips: list[str] = []
        if eni_ids:
            ctx = self._ctx(region=region, endpoint_id=endpoint_id)
            with self._aws("DescribeNetworkInterfaces", ctx):
                enis = self._pages(region, "describe_network_interfaces",
                                   "NetworkInterfaces", NetworkInterfaceIds=eni_ids)
            ips = sorted(
                {e["PrivateIpAddress"] for e in enis if e.get("PrivateIpAddress")},
                key=lambda ip: tuple(int(p) for p in ip.split(".")) if "." in ip else (ip,),
            )
        return EndpointAddresses(
            vpc_endpoint_id=endpoint_id,
            state=str(ep["State"]),
            ips=ips,
            dns_names=[d["DnsName"] for d in ep.get("DnsEntries") or [] if d.get("DnsName")],
            network_interface_ids=eni_ids,
        )

    @activity.defn(name=ACT_DELETE_ENDPOINT)
    def delete_endpoint(self, input: DeleteEndpointInput) -> DeleteEndpointResult:
        """Delete this connection's endpoint, never another's: by id only after its tags
        name this org and connection (else it is skipped: nothing of ours there); by tags
        otherwise. A NotFound by id before ``not_found_retry_until`` is retried; after it,
        the endpoint is gone only when the tag lookup agrees (a live one it finds is
        deleted instead)."""
        targets: list[dict[str, Any]]
        if input.vpc_endpoint_id:
            ep = self._describe_or_none(input.region, input.vpc_endpoint_id)
            if ep is None:
                if before(input.not_found_retry_until):
                    raise not_visible_yet(
                        self._ctx(region=input.region, endpoint_id=input.vpc_endpoint_id),
                        input.not_found_retry_until,
                    )
                targets = self._find_by_connection(
                    input.region, input.connection_id, input.org_id)
            elif not is_ours(ep, input.org_id, input.connection_id):
                log.warning(
                    "not deleting an endpoint that is not this connection's",
                    vpc_endpoint_id=input.vpc_endpoint_id, tags=tags_of(ep),
                    org_id=input.org_id, connection_id=input.connection_id,
                )
                return DeleteEndpointResult(
                    vpc_endpoint_ids=[], skipped_vpc_endpoint_ids=[input.vpc_endpoint_id])
            else:
                targets = [ep]
        else:
            targets = self._find_by_connection(input.region, input.connection_id, input.org_id)
        return self._delete(input, targets)

    def _delete(self, input: DeleteEndpointInput, targets: list[dict[str, Any]]) -> DeleteEndpointResult:
        deleting = [e["VpcEndpointId"] for e in targets
                    if str(e.get("State", "")).lower() == "deleting"]
        ids = [e["VpcEndpointId"] for e in targets
               if str(e.get("State", "")).lower() not in GONE_STATES]
        gone: set[str] = set()
        for i in range(0, len(ids), DELETE_BATCH):
            batch = ids[i:i + DELETE_BATCH]
            ctx = self._ctx(region=input.region, endpoint_id=",".join(batch))
            with self._aws("DeleteVpcEndpoints", ctx):
                resp = self._ec2(input.region).delete_vpc_endpoints(VpcEndpointIds=batch)
            for item in resp.get("Unsuccessful") or []:
                code = str(item.get("Error", {}).get("Code", ""))
                if code in ENDPOINT_NOT_FOUND_CODES:  # seen a moment ago: deleted since
                    gone.add(str(item.get("ResourceId", "")))
                    continue
                raise classify(
                    code, "DeleteVpcEndpoints", str(item.get("Error", {}).get("Message", "")),
                    ctx=ctx,
                )
        return DeleteEndpointResult(
            vpc_endpoint_ids=sorted({*deleting, *(i for i in ids if i not in gone)}))

    @activity.defn(name=ACT_WAIT_ENDPOINT_DELETED)
    def wait_endpoint_deleted(self, input: DeleteEndpointInput) -> None:
        """Done when the endpoint is ``deleted`` or no longer listed. By id, a NotFound
        before ``not_found_retry_until`` is not proof yet (ENDPOINT_NOT_VISIBLE_YET)."""
        if input.vpc_endpoint_id:
            ep = self._describe_or_none(input.region, input.vpc_endpoint_id)
            if ep is None:
                if before(input.not_found_retry_until):
                    raise not_visible_yet(
                        self._ctx(region=input.region, endpoint_id=input.vpc_endpoint_id),
                        input.not_found_retry_until,
                    )
                return None
            if not is_ours(ep, input.org_id, input.connection_id):
                return None  # never ours to wait for (delete_endpoint skipped it)
            states = [str(ep["State"])]
        else:
            states = [
                str(e["State"])
                for e in self._find_by_connection(
                    input.region, input.connection_id, input.org_id, include_gone=True
                )
            ]
        remaining = [s for s in states if s.lower() != "deleted"]
        if remaining:
            raise ApplicationError(
                f"VPC endpoint(s) of connection {input.connection_id} still {remaining}",
                type=ENDPOINT_NOT_DELETED_YET,
                category=ApplicationErrorCategory.BENIGN,
            )
        return None
