"""The pure AWS error table in activities/aws.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from temporalio.exceptions import ApplicationErrorCategory

from activities.aws import (
    ErrorContext,
    classify,
    classify_exception,
    classify_state,
    client_token,
)
from activities.aws_errors import before, not_visible_yet
from workflows.contracts import (
    ENDPOINT_NOT_FOUND,
    ENDPOINT_NOT_VISIBLE_YET,
    NON_RETRYABLE_TYPES,
    RETRYABLE_THROTTLED,
    RETRYABLE_TRANSIENT,
    Reason,
)

CTX = ErrorContext(
    principal_arn="arn:aws:iam::111111111111:root",
    role_arn="arn:aws:iam::111111111111:role/privnet-endpoints",
    service_name="com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0",
    region="us-east-1",
    service_region="us-west-2",
    endpoint_id="vpce-0abc",
    service_az_ids=("use1-az1", "use1-az2"),
    our_az_ids=("use1-az4", "use1-az5"),
)


@pytest.mark.parametrize(
    "code",
    ["RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException",
     "RequestThrottled", "EC2ThrottledException"],
)
def test_throttling_is_retryable(code: str) -> None:
    err = classify(code, "CreateVpcEndpoint", "slow down", ctx=CTX)
    assert err.type == RETRYABLE_THROTTLED and not err.non_retryable


@pytest.mark.parametrize("code", ["InternalError", "Unavailable", "ServiceUnavailable", "ExpiredToken"])
def test_transient_is_retryable(code: str) -> None:
    err = classify(code, "DescribeVpcEndpoints", ctx=CTX)
    assert err.type == RETRYABLE_TRANSIENT and not err.non_retryable


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_unknown_5xx_is_retryable(status: int) -> None:
    err = classify("SomethingNew", "DescribeVpcEndpoints", http_status=status)
    assert err.type == RETRYABLE_TRANSIENT and not err.non_retryable


def test_unknown_4xx_is_not_retryable() -> None:
    err = classify("SomethingNew", "DescribeVpcEndpoints", "boom", http_status=400)
    assert err.non_retryable and err.type == Reason.INTERNAL_ERROR
    assert "SomethingNew" in err.message
    create = classify("SomethingNew", "CreateVpcEndpoint", http_status=400)
    assert create.non_retryable and create.type == Reason.ENDPOINT_CREATE_FAILED


def test_invalid_service_name_names_principal_and_fix() -> None:
    err = classify("InvalidServiceName", "DescribeVpcEndpointServices", ctx=CTX)
    assert err.type == Reason.PRINCIPAL_NOT_ALLOWED and err.non_retryable
    assert "arn:aws:iam::111111111111:root" in err.message
    assert "allowed principals" in err.message
    assert CTX.service_name is not None and CTX.service_name in err.message


@pytest.mark.parametrize("code", ["AccessDenied", "UnauthorizedOperation", "AuthFailure", "InvalidClientTokenId"])
def test_access_denied_names_role(code: str) -> None:
    err = classify(code, "CreateVpcEndpoint", "not authorized", ctx=CTX)
    assert err.type == Reason.AWS_ACCESS_DENIED and err.non_retryable
    assert "arn:aws:iam::111111111111:role/privnet-endpoints" in err.message
    assert "ec2:CreateVpcEndpoint" in err.message
    ambient = classify(code, "CreateVpcEndpoint")
    assert "credentials" in ambient.message


def test_az_not_supported_lists_both_sets() -> None:
    msg = ("The VPC endpoint service svc does not support the availability zone of the "
           "subnet: subnet-1.")
    err = classify("InvalidParameter", "CreateVpcEndpoint", msg, ctx=CTX)
    assert err.type == Reason.AZ_NOT_SUPPORTED and err.non_retryable
    assert "['use1-az1', 'use1-az2']" in err.message and "['use1-az4', 'use1-az5']" in err.message
    other = classify("InvalidParameter", "CreateVpcEndpoint", "something else", ctx=CTX)
    assert other.type == Reason.ENDPOINT_CREATE_FAILED


@pytest.mark.parametrize("code", ["InvalidVpcEndpointId.NotFound", "InvalidVpcEndpoint.NotFound"])
def test_missing_endpoint_is_endpoint_not_found_not_a_verdict(code: str) -> None:
    """NotFound is ENDPOINT_NOT_FOUND (the workflow decides when it is authoritative),
    never ENDPOINT_DELETED."""
    err = classify(code, "DescribeVpcEndpoints", ctx=CTX)
    assert err.type == ENDPOINT_NOT_FOUND and err.non_retryable and "vpce-0abc" in err.message


def test_not_visible_yet_is_benign_and_retryable() -> None:
    until = datetime.now(UTC) + timedelta(minutes=5)
    err = not_visible_yet(CTX, until)
    assert err.type == ENDPOINT_NOT_VISIBLE_YET and not err.non_retryable
    assert err.category == ApplicationErrorCategory.BENIGN and "vpce-0abc" in err.message
    assert before(until) and not before(datetime.now(UTC) - timedelta(seconds=1))
    assert not before(None)
    assert before((datetime.now(UTC) + timedelta(minutes=1)).replace(tzinfo=None))


@pytest.mark.parametrize(
    "code", ["InvalidVpcID.NotFound", "InvalidSubnetID.NotFound", "InvalidGroup.NotFound",
             "DuplicateSubnetsInSameZone"])
def test_our_network_misconfigured(code: str) -> None:
    err = classify(code, "CreateVpcEndpoint", ctx=CTX)
    assert err.type == Reason.CONFIGURATION_ERROR and "PRIVNET_ENDPOINT_NETWORKS" in err.message


def test_idempotency_mismatch_and_quota() -> None:
    err = classify("IdempotentParameterMismatch", "CreateVpcEndpoint", ctx=CTX)
    assert err.type == Reason.ENDPOINT_CREATE_FAILED and err.non_retryable
    quota = classify("VpcEndpointLimitExceeded", "CreateVpcEndpoint", ctx=CTX)
    assert quota.type == Reason.QUOTA_EXCEEDED and quota.non_retryable
    assert "Service Quotas" in quota.message and "PRIVNET_ENDPOINT_NETWORKS" in quota.message
    other = classify("NetworkInterfaceLimitExceeded", "CreateVpcEndpoint", ctx=CTX)
    assert other.type == Reason.ENDPOINT_CREATE_FAILED and "quota" in other.message.lower()


def test_eni_not_found_is_eventual_consistency_only_for_describe_enis() -> None:
    assert not classify("InvalidNetworkInterfaceID.NotFound", "DescribeNetworkInterfaces").non_retryable
    assert classify("InvalidNetworkInterfaceID.NotFound", "CreateVpcEndpoint").non_retryable


def test_every_non_retryable_type_is_a_reason() -> None:
    codes = ["InvalidServiceName", "AccessDenied", "InvalidVpcEndpointId.NotFound",
             "InvalidSubnetID.NotFound", "IdempotentParameterMismatch", "Weird"]
    for code in codes:
        err = classify(code, "CreateVpcEndpoint", http_status=400, ctx=CTX)
        assert err.non_retryable and err.type in NON_RETRYABLE_TYPES
    for code in ["RequestLimitExceeded", "InternalError"]:
        assert classify(code, "CreateVpcEndpoint").type not in NON_RETRYABLE_TYPES


@pytest.mark.parametrize(
    ("state", "reason"),
    [("rejected", Reason.ENDPOINT_REJECTED), ("Failed", Reason.ENDPOINT_FAILED),
     ("expired", Reason.ENDPOINT_EXPIRED), ("deleted", Reason.ENDPOINT_DELETED),
     ("Deleting", Reason.ENDPOINT_DELETED)],
)
def test_terminal_states(state: str, reason: Reason) -> None:
    err = classify_state(state, CTX)
    assert err is not None and err.type == reason and err.non_retryable
    assert "vpce-0abc" in err.message


@pytest.mark.parametrize("state", ["pending", "pendingAcceptance", "available", "Available"])
def test_live_states(state: str) -> None:
    assert classify_state(state) is None


def test_classify_exception() -> None:
    response: Any = {"Error": {"Code": "RequestLimitExceeded", "Message": "x"},
                     "ResponseMetadata": {"HTTPStatusCode": 503}}
    ce = ClientError(response, "CreateVpcEndpoint")
    assert classify_exception(ce, "CreateVpcEndpoint").type == RETRYABLE_THROTTLED
    conn = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert classify_exception(conn, "DescribeVpcEndpoints").type == RETRYABLE_TRANSIENT
    creds = classify_exception(NoCredentialsError(), "DescribeVpcEndpoints")
    assert creds.type == Reason.AWS_ACCESS_DENIED and creds.non_retryable


def test_client_token_is_deterministic_and_scoped() -> None:
    a = client_token("acme", "db")
    assert a == client_token("acme", "db")
    assert a != client_token("acme", "db2") and a != client_token("acme2", "db")
    assert len(a) <= 64 and a.isascii()
