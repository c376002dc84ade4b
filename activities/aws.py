"""PrivateLink activities on boto3, in the dedicated endpoints account.

Credentials: with ``PRIVNET_AWS_ROLE_ARN`` set, a session whose credentials are botocore
``DeferredRefreshableCredentials`` backed by STS AssumeRole (refreshed before expiry);
unset, the ambient credentials of the given/default session. ``PRIVNET_AWS_ENDPOINT_URL``
overrides every endpoint (sandbox). One EC2 client per region, cached, retry mode
``standard``.

Activities are sync ``def`` (the worker runs them in a thread pool). Every AWS error goes
through ONE table, ``classify``: retryable ``AWS_THROTTLED`` / ``TRANSIENT`` or a
non-retryable ``Reason`` whose message names the fix. Every AWS call is counted by
operation in ``privnet_aws_calls_total{operation}`` and in the in-process ``CALLS``.

Usage::

    acts = AwsActivities(get_settings())          # or AwsActivities(settings, session)
    Worker(..., activities=acts.activities(), activity_executor=ThreadPoolExecutor(16))
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import DeferredRefreshableCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from prometheus_client import Counter as PromCounter
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

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
    RETRYABLE_THROTTLED,
    RETRYABLE_TRANSIENT,
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

TAG_ORG_ID = "privnet.dev/org-id"
TAG_CONNECTION_ID = "privnet.dev/connection-id"
TAG_MANAGED_BY = "privnet.dev/managed-by"
GONE_STATES = frozenset({"deleting", "deleted"})

# --------------------------------------------------------------------------- call counting

AWS_CALLS = PromCounter(
    "privnet_aws_calls_total", "AWS API calls made by privnet activities", ["operation"]
)


class CallCounter:
    """Thread-safe count of AWS API calls by operation (one per logical call)."""

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

# --------------------------------------------------------------------------- classification

THROTTLING_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "EC2ThrottledException",
        "SlowDown",
        "PriorRequestNotComplete",
        "BandwidthLimitExceeded",
        "TransactionInProgressException",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "IDPCommunicationError",
        "IncorrectState",
    }
)
ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "AuthFailure",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "OptInRequired",
        "Blocked",
    }
)
ENDPOINT_NOT_FOUND_CODES = frozenset(
    {
        "InvalidVpcEndpointId.NotFound",
        "InvalidVpcEndpoint.NotFound",
    }
)
CONFIGURATION_CODES = frozenset(
    {
        "InvalidVpcID.NotFound",
        "InvalidSubnetID.NotFound",
        "InvalidSubnet",
        "InvalidGroup.NotFound",
        "InvalidSecurityGroupID.NotFound",
        "DuplicateSubnetsInSameZone",
    }
)
# (code, operation) pairs that are eventual consistency, not a real absence.
EVENTUALLY_CONSISTENT = frozenset(
    {
        ("InvalidNetworkInterfaceID.NotFound", "DescribeNetworkInterfaces"),
    }
)

STATE_REASONS: dict[str, Reason] = {
    "rejected": Reason.ENDPOINT_REJECTED,
    "failed": Reason.ENDPOINT_FAILED,
    "expired": Reason.ENDPOINT_EXPIRED,
    "deleting": Reason.ENDPOINT_DELETED,
    "deleted": Reason.ENDPOINT_DELETED,
}


@dataclass(frozen=True)
class ErrorContext:
    """What the messages name: our principal, our role, the service, AZ sets."""

    principal_arn: str | None = None
    role_arn: str | None = None
    service_name: str | None = None
    region: str | None = None
    service_region: str | None = None
    endpoint_id: str | None = None
    service_az_ids: Sequence[str] = field(default_factory=tuple)
    our_az_ids: Sequence[str] = field(default_factory=tuple)


def _retryable(kind: str, message: str) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=False)


def _fatal(reason: Reason, message: str) -> ApplicationError:
    return ApplicationError(message, type=reason.value, non_retryable=True)


def principal_not_allowed(ctx: ErrorContext) -> ApplicationError:
    principal = ctx.principal_arn or "arn:aws:iam::<endpoints account id>:root"
    return _fatal(
        Reason.PRINCIPAL_NOT_ALLOWED,
        f"endpoint service {ctx.service_name or '?'} does not exist in "
        f"{ctx.service_region or ctx.region or 'its region'} or does not allow our principal: "
        f"the service owner must add {principal} to the endpoint service's allowed principals "
        "(VPC console → Endpoint services → Allow principals), and the service name must be "
        "copied exactly",
    )


def az_not_supported(ctx: ErrorContext) -> ApplicationError:
    return _fatal(
        Reason.AZ_NOT_SUPPORTED,
        f"endpoint service {ctx.service_name or '?'} is in availability zone ids "
        f"{sorted(ctx.service_az_ids)} but our endpoint subnets in {ctx.region or '?'} are in "
        f"{sorted(ctx.our_az_ids)}: the customer must add their load balancer to a subnet in "
        "one of our AZ ids, or we must add an endpoint subnet in one of theirs "
        "(PRIVNET_ENDPOINT_NETWORKS)",
    )


def region_not_supported(ctx: ErrorContext) -> ApplicationError:
    return _fatal(
        Reason.REGION_NOT_SUPPORTED,
        f"endpoint service {ctx.service_name or '?'} in {ctx.service_region or '?'} does not "
        f"support cross-Region access from {ctx.region or '?'}: the service owner must add "
        f"{ctx.region or 'our region'} to the service's supported Regions, or the connection "
        f"must use region {ctx.service_region or 'of the service'}",
    )


def classify(
    code: str,
    operation: str,
    message: str = "",
    *,
    http_status: int | None = None,
    ctx: ErrorContext | None = None,
) -> ApplicationError:
    """THE error table: an AWS error code (+ operation, HTTP status) → ApplicationError."""
    ctx = ctx or ErrorContext()
    detail = f"{operation}: {code}" + (f" ({message})" if message else "")
    if code in THROTTLING_CODES:
        return _retryable(RETRYABLE_THROTTLED, f"AWS throttled {detail}; retrying with backoff")
    if code in TRANSIENT_CODES or (code, operation) in EVENTUALLY_CONSISTENT:
        return _retryable(RETRYABLE_TRANSIENT, f"transient AWS error {detail}; retrying")
    if code in ACCESS_DENIED_CODES:
        who = f"the role {ctx.role_arn}" if ctx.role_arn else "the worker's AWS credentials"
        return _fatal(
            Reason.AWS_ACCESS_DENIED,
            f"AWS denied {detail}: grant {who} ec2:{operation} in the endpoints account "
            "(and check PRIVNET_AWS_ROLE_ARN and the role's trust policy)",
        )
    if code == "InvalidServiceName":
        return principal_not_allowed(ctx)
    if code in ENDPOINT_NOT_FOUND_CODES:
        return _fatal(
            Reason.ENDPOINT_DELETED,
            f"VPC endpoint {ctx.endpoint_id or '?'} no longer exists ({detail}): it was deleted "
            "outside privnet; retry the connection to create a new one",
        )
    if code == "InvalidParameter" and "availability zone" in message.lower():
        return az_not_supported(ctx)
    if code in CONFIGURATION_CODES:
        return _fatal(
            Reason.CONFIGURATION_ERROR,
            f"our endpoint network in {ctx.region or '?'} is misconfigured ({detail}): fix the "
            "VPC, subnets (one per AZ) or security groups in PRIVNET_ENDPOINT_NETWORKS",
        )
    if code == "IdempotentParameterMismatch":
        return _fatal(
            Reason.ENDPOINT_CREATE_FAILED,
            f"{detail}: an earlier CreateVpcEndpoint with this connection's client token used "
            "other parameters (endpoint network changed?); delete the endpoint tagged with "
            "this connection id or use a new connection id",
        )
    if code.endswith("LimitExceeded") or code == "VpcEndpointLimitExceeded":
        return _fatal(
            Reason.ENDPOINT_CREATE_FAILED,
            f"{detail}: an AWS quota was reached in the endpoints account; raise it in "
            "Service Quotas (VPC → Interface VPC endpoints per VPC) or delete unused endpoints",
        )
    if http_status is not None and http_status >= 500:
        return _retryable(RETRYABLE_TRANSIENT, f"AWS server error {detail}; retrying")
    if operation == "CreateVpcEndpoint":
        return _fatal(Reason.ENDPOINT_CREATE_FAILED, f"AWS refused {detail}")
    return _fatal(Reason.INTERNAL_ERROR, f"unexpected AWS error {detail}")


def classify_state(state: str, ctx: ErrorContext | None = None) -> ApplicationError | None:
    """A terminal endpoint state → its non-retryable error; None for live states."""
    ctx = ctx or ErrorContext()
    reason = STATE_REASONS.get(state.lower())
    if reason is None:
        return None
    fixes = {
        Reason.ENDPOINT_REJECTED: "the service owner rejected the connection; ask them to "
        "accept it (Endpoint services → Endpoint connections) and retry the connection",
        Reason.ENDPOINT_FAILED: "AWS could not provision the endpoint; retry the connection",
        Reason.ENDPOINT_EXPIRED: "the connection request expired before the owner accepted "
        "it; retry and ask them to accept it",
        Reason.ENDPOINT_DELETED: "the endpoint was deleted outside privnet; retry the connection",
    }
    return _fatal(reason, f"VPC endpoint {ctx.endpoint_id or '?'} is {state}: {fixes[reason]}")


def classify_exception(
    exc: BaseException, operation: str, ctx: ErrorContext | None = None
) -> ApplicationError:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return classify(
            str(err.get("Code", "Unknown")),
            operation,
            str(err.get("Message", "")),
            http_status=status,
            ctx=ctx,
        )
    if isinstance(exc, NoCredentialsError):
        return _fatal(
            Reason.AWS_ACCESS_DENIED,
            f"{operation}: no AWS credentials found; give the worker credentials that may "
            "assume PRIVNET_AWS_ROLE_ARN",
        )
    if isinstance(
        exc,
        EndpointConnectionError
        | ConnectionClosedError
        | ReadTimeoutError
        | ConnectTimeoutError
        | BotoConnectionError,
    ):
        return _retryable(RETRYABLE_TRANSIENT, f"{operation}: cannot reach AWS ({exc}); retrying")
    return _retryable(RETRYABLE_TRANSIENT, f"{operation}: {type(exc).__name__}: {exc}; retrying")


# --------------------------------------------------------------------------- activities


def client_token(org_id: str, connection_id: str) -> str:
    """Deterministic CreateVpcEndpoint ClientToken (≤ 64 ASCII characters)."""
    digest = hashlib.sha256(f"{org_id}/{connection_id}".encode()).hexdigest()[:48]
    return f"privnet-{digest}"


class AwsActivities:
    """boto3 adapter for PrivateLink. ``session`` supplies the base credentials (default
    ``boto3.Session()``); ``client_config`` is merged over the default (retry mode
    standard, 3 attempts)."""

    def __init__(
        self,
        settings: Settings,
        session: boto3.Session | None = None,
        *,
        client_config: Config | None = None,
        counter: CallCounter | None = None,
    ) -> None:
        self.settings = settings
        self.calls = counter or CALLS
        self._config = Config(
            retries={"mode": "standard", "total_max_attempts": 3},
            connect_timeout=5,
            read_timeout=30,
        )
        if client_config is not None:
            self._config = self._config.merge(client_config)
        self._base_session = session or boto3.Session()
        self._lock = threading.RLock()
        self._clients: dict[tuple[str, str], Any] = {}
        self._subnet_azs: dict[str, dict[str, str]] = {}
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
            if (
                isinstance(exc, ClientError)
                and exc.response.get("Error", {}).get("Code") == "InvalidServiceName"
            ):
                ctx = ErrorContext(**{**ctx.__dict__, "principal_arn": self.principal_arn()})
            raise classify_exception(exc, operation, ctx) from exc

    def _ctx(self, **kw: Any) -> ErrorContext:
        return ErrorContext(
            principal_arn=self._principal, role_arn=self.settings.aws_role_arn, **kw
        )

    def _network(self, region: str) -> EndpointNetwork:
        network = self.settings.endpoint_networks.get(region)
        if network is None:
            raise _fatal(
                Reason.CONFIGURATION_ERROR,
                f"no endpoint network configured for region {region}: add it to "
                "PRIVNET_ENDPOINT_NETWORKS (vpc_id, subnet_ids, security_group_ids)",
            )
        return network

    def our_subnets(self, region: str) -> dict[str, str]:
        """subnet id → AZ id of our endpoint subnets in ``region`` (cached: immutable)."""
        with self._lock:
            cached = self._subnet_azs.get(region)
        if cached is not None:
            return cached
        network = self._network(region)
        kwargs: dict[str, Any] = (
            {"SubnetIds": network.subnet_ids}
            if network.subnet_ids
            else {"Filters": [{"Name": "vpc-id", "Values": [network.vpc_id]}]}
        )
        with self._aws("DescribeSubnets", self._ctx(region=region)):
            subnets = self._ec2(region).describe_subnets(**kwargs)["Subnets"]
        result = {s["SubnetId"]: s["AvailabilityZoneId"] for s in subnets}
        with self._lock:
            self._subnet_azs[region] = result
        return result

    def _find_by_connection(
        self,
        region: str,
        connection_id: str,
        org_id: str | None = None,
        include_gone: bool = False,
    ) -> list[dict[str, Any]]:
        filters = [{"Name": f"tag:{TAG_CONNECTION_ID}", "Values": [connection_id]}]
        if org_id is not None:
            filters.append({"Name": f"tag:{TAG_ORG_ID}", "Values": [org_id]})
        with self._aws("DescribeVpcEndpoints", self._ctx(region=region)):
            eps = self._ec2(region).describe_vpc_endpoints(Filters=filters)["VpcEndpoints"]
        return [
            e for e in eps if include_gone or str(e.get("State", "")).lower() not in GONE_STATES
        ]

    def _describe(self, region: str, endpoint_id: str) -> dict[str, Any]:
        ctx = self._ctx(region=region, endpoint_id=endpoint_id)
        with self._aws("DescribeVpcEndpoints", ctx):
            eps = self._ec2(region).describe_vpc_endpoints(VpcEndpointIds=[endpoint_id])[
                "VpcEndpoints"
            ]
        if not eps:
            raise classify("InvalidVpcEndpointId.NotFound", "DescribeVpcEndpoints", ctx=ctx)
        return dict(eps[0])

    # ---- activities

    @activity.defn(name=ACT_CHECK_PRINCIPAL)
    def check_principal(self, input: CheckPrincipalInput) -> ServiceInfo:
        cross = input.service_region != input.region
        ours = self.our_subnets(input.region)
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
                if exc.response.get("Error", {}).get("Code") != "InvalidServiceName":
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
            supported = [input.region]
            if not usable:
                raise az_not_supported(ErrorContext(**{**ctx.__dict__, "service_az_ids": az_ids}))
        return ServiceInfo(
            service_name=input.service_name,
            service_id=d.get("ServiceId"),
            az_ids=az_ids,
            acceptance_required=bool(d.get("AcceptanceRequired")),
            supported_regions=supported,
            private_dns_name=d.get("PrivateDnsName") or None,
            usable_az_ids=usable,
        )

    def _choose_subnets(self, input: CreateEndpointInput) -> list[str]:
        ours = self.our_subnets(input.region)
        cross = input.service_region != input.region
        wanted = set(ours.values()) if cross else set(input.service_az_ids)
        chosen: dict[str, str] = {}
        for subnet_id, az in sorted(ours.items(), key=lambda kv: (kv[1], kv[0])):
            if az in wanted and az not in chosen:
                chosen[az] = subnet_id
        if not chosen:
            raise az_not_supported(
                self._ctx(
                    service_name=input.service_name,
                    region=input.region,
                    service_az_ids=input.service_az_ids,
                    our_az_ids=sorted(set(ours.values())),
                )
            )
        return [chosen[az] for az in sorted(chosen)]

    @activity.defn(name=ACT_CREATE_ENDPOINT)
    def create_endpoint(self, input: CreateEndpointInput) -> EndpointRef:
        existing = self._find_by_connection(input.region, input.connection_id, input.org_id)
        if existing:
            ep = sorted(existing, key=lambda e: str(e.get("CreationTimestamp", "")))[0]
            return EndpointRef(vpc_endpoint_id=ep["VpcEndpointId"], state=ep["State"])
        network = self._network(input.region)
        subnets = self._choose_subnets(input)
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
        ctx = self._ctx(
            service_name=input.service_name,
            region=input.region,
            service_region=input.service_region,
            service_az_ids=input.service_az_ids,
            our_az_ids=sorted(set(self.our_subnets(input.region).values())),
        )
        with self._aws("CreateVpcEndpoint", ctx):
            ep = self._ec2(input.region).create_vpc_endpoint(**params)["VpcEndpoint"]
        return EndpointRef(vpc_endpoint_id=ep["VpcEndpointId"], state=ep["State"], created=True)

    @activity.defn(name=ACT_WAIT_FOR_STATE_CHANGE)
    def wait_for_state_change(self, input: WaitStateInput) -> EndpointState:
        ep = self._describe(input.region, input.vpc_endpoint_id)
        state = str(ep["State"])
        if input.last_state is not None and state.lower() == input.last_state.lower():
            raise ApplicationError(
                f"VPC endpoint {input.vpc_endpoint_id} is still {state}",
                type=STATE_UNCHANGED,
                category=ApplicationErrorCategory.BENIGN,
            )
        attempt = activity.info().attempt if activity.in_activity() else 1
        return EndpointState(vpc_endpoint_id=input.vpc_endpoint_id, state=state, attempt=attempt)

    @activity.defn(name=ACT_GET_ENDPOINT_ADDRESSES)
    def get_endpoint_addresses(self, input: EndpointAddressesInput) -> EndpointAddresses:
        ep = self._describe(input.region, input.vpc_endpoint_id)
        eni_ids = list(ep.get("NetworkInterfaceIds") or [])
        ips: list[str] = []
        if eni_ids:
            ctx = self._ctx(region=input.region, endpoint_id=input.vpc_endpoint_id)
            with self._aws("DescribeNetworkInterfaces", ctx):
                enis = self._ec2(input.region).describe_network_interfaces(
                    NetworkInterfaceIds=eni_ids
                )["NetworkInterfaces"]
            ips = sorted(
                {e["PrivateIpAddress"] for e in enis if e.get("PrivateIpAddress")},
                key=lambda ip: tuple(int(p) for p in ip.split(".")) if "." in ip else (ip,),
            )
        return EndpointAddresses(
            vpc_endpoint_id=input.vpc_endpoint_id,
            state=str(ep["State"]),
            ips=ips,
            dns_names=[d["DnsName"] for d in ep.get("DnsEntries") or [] if d.get("DnsName")],
            network_interface_ids=eni_ids,
        )

    @activity.defn(name=ACT_DELETE_ENDPOINT)
    def delete_endpoint(self, input: DeleteEndpointInput) -> DeleteEndpointResult:
        if input.vpc_endpoint_id:
            ids = [input.vpc_endpoint_id]
        else:
            ids = sorted(
                e["VpcEndpointId"]
                for e in self._find_by_connection(
                    input.region, input.connection_id, org_id=input.org_id
                )
            )
        if not ids:
            return DeleteEndpointResult(vpc_endpoint_ids=[])
        ctx = self._ctx(region=input.region, endpoint_id=",".join(ids))
        try:
            resp = self._ec2(input.region).delete_vpc_endpoints(VpcEndpointIds=ids)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ENDPOINT_NOT_FOUND_CODES:
                return DeleteEndpointResult(vpc_endpoint_ids=[])
            raise classify_exception(exc, "DeleteVpcEndpoints", ctx) from exc
        except BotoCoreError as exc:
            raise classify_exception(exc, "DeleteVpcEndpoints", ctx) from exc
        gone: set[str] = set()
        for item in resp.get("Unsuccessful") or []:
            code = str(item.get("Error", {}).get("Code", ""))
            if code in ENDPOINT_NOT_FOUND_CODES:
                gone.add(item.get("ResourceId", ""))
                continue
            raise classify(
                code, "DeleteVpcEndpoints", str(item.get("Error", {}).get("Message", "")), ctx=ctx
            )
        return DeleteEndpointResult(vpc_endpoint_ids=[i for i in ids if i not in gone])

    @activity.defn(name=ACT_WAIT_ENDPOINT_DELETED)
    def wait_endpoint_deleted(self, input: DeleteEndpointInput) -> None:
        if input.vpc_endpoint_id:
            try:
                states = [str(self._describe(input.region, input.vpc_endpoint_id)["State"])]
            except ApplicationError as err:
                if err.type == Reason.ENDPOINT_DELETED.value:
                    return None
                raise
        else:
            states = [
                str(e["State"])
                for e in self._find_by_connection(
                    input.region, input.connection_id, org_id=input.org_id, include_gone=True
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
