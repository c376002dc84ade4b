"""THE AWS error table: every AWS error privnet sees becomes one ``ApplicationError``.

Retryable ``AWS_THROTTLED`` / ``TRANSIENT`` (and the benign ``ENDPOINT_NOT_VISIBLE_YET``
of EC2's eventual consistency), or a non-retryable type (a ``Reason``, or
``ENDPOINT_NOT_FOUND``) whose message names the fix. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from workflows.contracts import (
    ENDPOINT_NOT_FOUND,
    ENDPOINT_NOT_VISIBLE_YET,
    RETRYABLE_THROTTLED,
    RETRYABLE_TRANSIENT,
    Reason,
)

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


def quota_exceeded(ctx: ErrorContext, vpc_ids: Sequence[str]) -> ApplicationError:
    where = f"every endpoint VPC in {ctx.region or 'the region'}"
    if vpc_ids:
        where += f" ({', '.join(vpc_ids)})"
    return _fatal(
        Reason.QUOTA_EXCEEDED,
        f"{where} is at its interface-endpoint quota (VpcEndpointLimitExceeded): raise "
        "'Interface and Gateway Load Balancer endpoints per VPC' in Service Quotas (Amazon "
        "VPC) for the endpoints account, or add a VPC to "
        f"PRIVNET_ENDPOINT_NETWORKS[{ctx.region or 'region'}] (a list of networks per region)",
    )


def not_visible_yet(ctx: ErrorContext, until: datetime | None) -> ApplicationError:
    """NotFound before the deadline: EC2's eventual consistency, retried (benign)."""
    return ApplicationError(
        f"VPC endpoint {ctx.endpoint_id or '?'} is not visible yet (InvalidVpcEndpointId."
        f"NotFound before {until.isoformat() if until else '?'}): EC2 is eventually "
        "consistent right after CreateVpcEndpoint; looking again",
        type=ENDPOINT_NOT_VISIBLE_YET,
        category=ApplicationErrorCategory.BENIGN,
        non_retryable=False,
    )


def before(deadline: datetime | None) -> bool:
    """True while ``deadline`` (a NotFound retry deadline) lies in the future."""
    if deadline is None:
        return False
    if deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=UTC)
    return datetime.now(UTC) < deadline


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
        # Not a verdict: EC2 is eventually consistent, the workflow decides when a
        # NotFound is authoritative (see not_visible_yet for the retryable form).
        return ApplicationError(
            f"VPC endpoint {ctx.endpoint_id or '?'} was not found ({detail})",
            type=ENDPOINT_NOT_FOUND,
            non_retryable=True,
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
    if code == "VpcEndpointLimitExceeded":
        return quota_exceeded(ctx, [])
    if code.endswith("LimitExceeded"):
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
