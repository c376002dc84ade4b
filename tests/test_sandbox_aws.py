"""Each row of the fidelity table in sandbox/aws.py, exercised with boto3 over HTTP."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from sandbox.aws import SandboxAws, SandboxSeed
from tests.aws_fixtures import aws_seed, sandbox, sandbox_aws, unique

__all__ = ["aws_seed", "sandbox", "sandbox_aws"]

NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1})


_clients: dict[tuple[str, str, str | None], Any] = {}


def ec2(sb: SandboxAws, region: str, account: str | None) -> Any:
    key = (sb.url, region, account)
    if key not in _clients:
        session: Any = sb.session(account)
        _clients[key] = session.client(
            "ec2", region_name=region, endpoint_url=sb.url, config=NO_RETRY
        )
    return _clients[key]


def ours(sb: SandboxAws, seed: SandboxSeed, region: str | None = None) -> Any:
    return ec2(sb, region or seed.region, seed.endpoints_account_id)


def customer(sb: SandboxAws, seed: SandboxSeed, region: str | None = None) -> Any:
    return ec2(sb, region or seed.region, seed.customer_account_id)


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    err = exc.value.response["Error"]
    return err["Code"], err["Message"]


def subnets_in(seed: SandboxSeed, az_ids: list[str], region: str | None = None) -> list[str]:
    net = seed.endpoint_networks[region or seed.region]
    by_az: dict[str, str] = {}
    for subnet, az in sorted(net.az_ids.items()):
        if az in az_ids:
            by_az.setdefault(az, subnet)
    return [by_az[a] for a in sorted(by_az)]


def create(sb: SandboxAws, seed: SandboxSeed, key: str = "allowed", **kw: Any) -> dict[str, Any]:
    net = seed.endpoint_networks[seed.region]
    params: dict[str, Any] = {
        "VpcEndpointType": "Interface",
        "VpcId": net.vpc_id,
        "ServiceName": seed.customer_services[key],
        "SubnetIds": subnets_in(seed, seed.customer_az_ids[key]),
        "SecurityGroupIds": net.security_group_ids,
    }
    params.update(kw)
    return dict(ours(sb, seed).create_vpc_endpoint(**params)["VpcEndpoint"])


def state_of(sb: SandboxAws, seed: SandboxSeed, ep_id: str) -> str:
    return str(ours(sb, seed).describe_vpc_endpoints(VpcEndpointIds=[ep_id])["VpcEndpoints"][0]["State"])


def new_service(sb: SandboxAws, seed: SandboxSeed, region: str | None = None, **kw: Any) -> dict[str, Any]:
    region = region or seed.region
    cfg = customer(sb, seed, region).create_vpc_endpoint_service_configuration(
        NetworkLoadBalancerArns=[seed.customer_nlb_arns[region]], **kw
    )["ServiceConfiguration"]
    return dict(cfg)


# 1
def test_accounts_are_separate(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    for account in (seed.endpoints_account_id, seed.customer_account_id):
        sts: Any = sandbox.session(account).client("sts", endpoint_url=sandbox.url)
        assert sts.get_caller_identity()["Account"] == account
    # The endpoints role from the seed is assumable and lands in the endpoints account.
    base: Any = sandbox.session().client("sts", endpoint_url=sandbox.url)
    creds = base.assume_role(RoleArn=seed.role_arn, RoleSessionName="tests")["Credentials"]
    as_role: Any = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    ).client("sts", region_name="us-east-1", endpoint_url=sandbox.url)
    assert as_role.get_caller_identity()["Account"] == seed.endpoints_account_id
    # Resources of one account are invisible to the other.
    cust_vpc = seed.customer_vpc_ids[seed.region]
    with pytest.raises(ClientError) as exc:
        ours(sandbox, seed).describe_vpcs(VpcIds=[cust_vpc])
    assert error_of(exc)[0] == "InvalidVpcID.NotFound"
    assert customer(sandbox, seed).describe_vpcs(VpcIds=[cust_vpc])["Vpcs"]


# 2
def test_service_visible_only_to_allowed_principals(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    allowed = seed.customer_services["allowed"]
    got = ours(sandbox, seed).describe_vpc_endpoint_services(ServiceNames=[allowed])
    assert [d["ServiceName"] for d in got["ServiceDetails"]] == [allowed]
    forbidden = seed.customer_services["not_allowed"]
    with pytest.raises(ClientError) as exc:
        ours(sandbox, seed).describe_vpc_endpoint_services(ServiceNames=[forbidden])
    assert error_of(exc) == (
        "InvalidServiceName", f"The Vpc Endpoint Service '{forbidden}' does not exist"
    )
    # Owner always sees its service.
    assert customer(sandbox, seed).describe_vpc_endpoint_services(ServiceNames=[forbidden])
    # Allow a specific role: only that role sees it, not another role of the same account.
    svc = new_service(sandbox, seed, AcceptanceRequired=False)
    customer(sandbox, seed).modify_vpc_endpoint_service_permissions(
        ServiceId=svc["ServiceId"], AddAllowedPrincipals=[seed.role_arn]
    )
    with pytest.raises(ClientError):
        ours(sandbox, seed).describe_vpc_endpoint_services(ServiceNames=[svc["ServiceName"]])
    base: Any = sandbox.session().client("sts", endpoint_url=sandbox.url)
    creds = base.assume_role(RoleArn=seed.role_arn, RoleSessionName="tests")["Credentials"]
    role_ec2 = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    ).client("ec2", region_name=seed.region, endpoint_url=sandbox.url, config=NO_RETRY)
    assert role_ec2.describe_vpc_endpoint_services(ServiceNames=[svc["ServiceName"]])
    # Account root principal: every role of the account; removing it hides it again.
    root = f"arn:aws:iam::{seed.endpoints_account_id}:root"
    customer(sandbox, seed).modify_vpc_endpoint_service_permissions(
        ServiceId=svc["ServiceId"], AddAllowedPrincipals=[root]
    )
    assert ours(sandbox, seed).describe_vpc_endpoint_services(ServiceNames=[svc["ServiceName"]])
    listed = ours(sandbox, seed).describe_vpc_endpoint_services()["ServiceNames"]
    assert svc["ServiceName"] in listed and forbidden not in listed
    customer(sandbox, seed).modify_vpc_endpoint_service_permissions(
        ServiceId=svc["ServiceId"], RemoveAllowedPrincipals=[root]
    )
    with pytest.raises(ClientError):
        ours(sandbox, seed).describe_vpc_endpoint_services(ServiceNames=[svc["ServiceName"]])


def test_wildcard_principal(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    svc = new_service(sandbox, seed, AcceptanceRequired=False)
    with pytest.raises(ClientError):
        ours(sandbox, seed).describe_vpc_endpoint_services(ServiceNames=[svc["ServiceName"]])
    customer(sandbox, seed).modify_vpc_endpoint_service_permissions(
        ServiceId=svc["ServiceId"], AddAllowedPrincipals=["*"]
    )
    assert ours(sandbox, seed).describe_vpc_endpoint_services(ServiceNames=[svc["ServiceName"]])


# 3
def test_service_details_fields(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    for key, acceptance in (("allowed", False), ("acceptance_required", True)):
        d = ours(sandbox, seed).describe_vpc_endpoint_services(
            ServiceNames=[seed.customer_services[key]]
        )["ServiceDetails"][0]
        assert d["AvailabilityZoneIds"] == seed.customer_az_ids[key]
        assert len(d["AvailabilityZones"]) == len(d["AvailabilityZoneIds"])
        assert d["AcceptanceRequired"] is acceptance
        assert d["Owner"] == seed.customer_account_id
        assert d["ServiceRegion"] == seed.region
        assert d["ServiceType"] == [{"ServiceType": "Interface"}]
        assert d["BaseEndpointDnsNames"][0].endswith(f".{seed.region}.vpce.amazonaws.com")


# 4
def test_create_rejects_unknown_or_forbidden_service(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    unknown = f"com.amazonaws.vpce.{seed.region}.vpce-svc-0123456789abcdef0"
    for name in (seed.customer_services["not_allowed"], unknown):
        with pytest.raises(ClientError) as exc:
            create(sandbox, seed, ServiceName=name)
        assert error_of(exc) == ("InvalidServiceName", f"The Vpc Endpoint Service '{name}' does not exist")
    before = ours(sandbox, seed).describe_vpc_endpoints(
        Filters=[{"Name": "service-name", "Values": [unknown]}]
    )["VpcEndpoints"]
    assert before == []


# 5
def test_create_rejects_unsupported_az(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    net = seed.endpoint_networks[seed.region]
    bad = sorted(s for s, az in net.az_ids.items() if az not in seed.customer_az_ids["allowed"])[0]
    good = subnets_in(seed, seed.customer_az_ids["allowed"])[0]
    with pytest.raises(ClientError) as exc:
        create(sandbox, seed, SubnetIds=[good, bad])
    svc = seed.customer_services["allowed"]
    assert error_of(exc) == (
        "InvalidParameter",
        f"The VPC endpoint service {svc} does not support the availability zone of the "
        f"subnet: {bad}.",
    )


# 6
def test_create_rejects_two_subnets_in_one_az(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    net = seed.endpoint_networks[seed.region]
    az = seed.customer_az_ids["allowed"][0]
    extra = ours(sandbox, seed).create_subnet(
        VpcId=net.vpc_id, CidrBlock="10.10.200.0/24", AvailabilityZoneId=az
    )["Subnet"]["SubnetId"]
    with pytest.raises(ClientError) as exc:
        create(sandbox, seed, SubnetIds=[subnets_in(seed, [az])[0], extra])
    assert error_of(exc)[0] == "DuplicateSubnetsInSameZone"


# 7
def test_cross_region_create(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    name = seed.customer_services["other_region"]
    all_ours = subnets_in(seed, sorted(set(seed.endpoint_networks[seed.region].az_ids.values())))
    # Without ServiceRegion a remote service is not found in our Region.
    with pytest.raises(ClientError) as exc:
        create(sandbox, seed, ServiceName=name, SubnetIds=all_ours)
    assert error_of(exc)[0] == "InvalidServiceName"
    with pytest.raises(ClientError):
        ours(sandbox, seed).describe_vpc_endpoint_services(ServiceNames=[name])
    # Consumer-Region view with ServiceRegions finds it.
    d = ours(sandbox, seed).describe_vpc_endpoint_services(
        ServiceNames=[name], ServiceRegions=[seed.other_region]
    )["ServiceDetails"][0]
    assert d["ServiceRegion"] == seed.other_region
    ep = create(sandbox, seed, ServiceName=name, SubnetIds=all_ours, ServiceRegion=seed.other_region)
    assert ep["ServiceRegion"] == seed.other_region
    assert len(ep["NetworkInterfaceIds"]) == len(all_ours)
    assert state_of(sandbox, seed, ep["VpcEndpointId"]) == "available"
    # A wrong ServiceRegion is rejected.
    with pytest.raises(ClientError) as exc:
        create(sandbox, seed, ServiceName=name, SubnetIds=all_ours, ServiceRegion="eu-west-1")
    assert error_of(exc)[0] == "InvalidServiceName"


def test_cross_region_requires_supported_region(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    svc = new_service(sandbox, seed, seed.other_region, AcceptanceRequired=False,
                      SupportedRegions=[seed.other_region])
    customer(sandbox, seed, seed.other_region).modify_vpc_endpoint_service_permissions(
        ServiceId=svc["ServiceId"], AddAllowedPrincipals=[seed.principal_arn]
    )
    name = svc["ServiceName"]
    # Visible in its own Region, but not usable from ours.
    assert ours(sandbox, seed, seed.other_region).describe_vpc_endpoint_services(ServiceNames=[name])
    with pytest.raises(ClientError) as exc:
        ours(sandbox, seed).describe_vpc_endpoint_services(
            ServiceNames=[name], ServiceRegions=[seed.other_region]
        )
    assert error_of(exc)[0] == "InvalidServiceName"
    with pytest.raises(ClientError) as exc:
        create(sandbox, seed, ServiceName=name, ServiceRegion=seed.other_region)
    assert error_of(exc)[0] == "InvalidServiceName"


# 8
def test_client_token_idempotency(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    token = unique("tok")
    first = create(sandbox, seed, ClientToken=token)
    again = create(sandbox, seed, ClientToken=token)
    assert again["VpcEndpointId"] == first["VpcEndpointId"]
    other = create(sandbox, seed, ClientToken=unique("tok"))
    assert other["VpcEndpointId"] != first["VpcEndpointId"]
    with pytest.raises(ClientError) as exc:
        create(sandbox, seed, ClientToken=token, SubnetIds=first["SubnetIds"][:1])
    assert error_of(exc)[0] == "IdempotentParameterMismatch"
    # Without a token every call creates a new endpoint (AWS has no implicit token here).
    a, b = create(sandbox, seed), create(sandbox, seed)
    assert a["VpcEndpointId"] != b["VpcEndpointId"]


# 9
def test_state_transitions_with_delay(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    sandbox.set_delays(pending=60)
    ep = create(sandbox, seed)
    assert ep["State"] == "pending"
    assert state_of(sandbox, seed, ep["VpcEndpointId"]) == "pending"
    sandbox.advance(61)
    assert state_of(sandbox, seed, ep["VpcEndpointId"]) == "available"
    sandbox.set_delays(pending=0)
    ep = create(sandbox, seed)
    assert ep["State"] == "pending"  # the create response; the next describe is available
    assert state_of(sandbox, seed, ep["VpcEndpointId"]) == "available"


def test_acceptance_accept(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    sandbox.set_delays(pending=60)
    ep = create(sandbox, seed, "acceptance_required")
    ep_id = ep["VpcEndpointId"]
    assert ep["State"] == "pendingAcceptance"
    sandbox.advance(600)
    assert state_of(sandbox, seed, ep_id) == "pendingAcceptance"  # never moves on its own
    # Only the owner can accept.
    svc_id = seed.customer_service_ids["acceptance_required"]
    with pytest.raises(ClientError):
        ours(sandbox, seed).accept_vpc_endpoint_connections(ServiceId=svc_id, VpcEndpointIds=[ep_id])
    pending = sandbox.connections(seed.customer_services["acceptance_required"], "pendingAcceptance")
    row = next(c for c in pending if c["VpcEndpointId"] == ep_id)
    assert row["VpcEndpointOwner"] == seed.endpoints_account_id
    assert row["VpcEndpointRegion"] == seed.region and row["ServiceId"] == svc_id
    assert sandbox.accept(seed.customer_services["acceptance_required"], ep_id) == []
    assert ep_id not in [
        c["VpcEndpointId"]
        for c in sandbox.connections(seed.customer_services["acceptance_required"], "pendingAcceptance")
    ]
    assert state_of(sandbox, seed, ep_id) == "pending"
    sandbox.advance(61)
    assert state_of(sandbox, seed, ep_id) == "available"
    # Accepting again: not pending acceptance any more → Unsuccessful.
    assert sandbox.accept(seed.customer_services["acceptance_required"], ep_id)[0]["ResourceId"] == ep_id


def test_acceptance_reject(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    ep_id = create(sandbox, seed, "acceptance_required")["VpcEndpointId"]
    assert sandbox.reject(seed.customer_services["acceptance_required"], [ep_id]) == []
    assert state_of(sandbox, seed, ep_id) == "rejected"
    bogus = sandbox.reject(seed.customer_services["acceptance_required"], ["vpce-0000000000000000"])
    assert bogus[0]["Error"]["Code"] == "InvalidVpcEndpoint.NotFound"


# 10
def test_delete_transitions(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    ep = create(sandbox, seed)
    ep_id, enis = ep["VpcEndpointId"], ep["NetworkInterfaceIds"]
    sandbox.set_delays(deleting=60, deleted_visible=60)
    assert ours(sandbox, seed).delete_vpc_endpoints(VpcEndpointIds=[ep_id])["Unsuccessful"] == []
    assert state_of(sandbox, seed, ep_id) == "deleting"
    sandbox.advance(61)
    assert state_of(sandbox, seed, ep_id) == "deleted"
    with pytest.raises(ClientError):
        ours(sandbox, seed).describe_network_interfaces(NetworkInterfaceIds=enis)
    sandbox.advance(61)
    with pytest.raises(ClientError) as exc:
        ours(sandbox, seed).describe_vpc_endpoints(VpcEndpointIds=[ep_id])
    assert error_of(exc)[0] == "InvalidVpcEndpointId.NotFound"


def test_delete_unknown_id_is_unsuccessful(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    res = ours(sandbox, aws_seed).delete_vpc_endpoints(VpcEndpointIds=["vpce-0123456789abcdef0"])
    assert res["Unsuccessful"][0]["ResourceId"] == "vpce-0123456789abcdef0"
    assert res["Unsuccessful"][0]["Error"]["Code"] == "InvalidVpcEndpoint.NotFound"


# 11, 12
def test_enis_inside_subnet_cidr(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    ep = create(sandbox, seed)
    client = ours(sandbox, seed)
    enis = client.describe_network_interfaces(NetworkInterfaceIds=ep["NetworkInterfaceIds"])[
        "NetworkInterfaces"
    ]
    assert len(enis) == len(ep["SubnetIds"]) == len(seed.customer_az_ids["allowed"])
    subnets = {s["SubnetId"]: s for s in client.describe_subnets(SubnetIds=ep["SubnetIds"])["Subnets"]}
    ips = set()
    for eni in enis:
        net = ipaddress.ip_network(subnets[eni["SubnetId"]]["CidrBlock"])
        ip = ipaddress.ip_address(eni["PrivateIpAddress"])
        assert ip in net
        assert int(ip) - int(net.network_address) >= 4 and ip != net.broadcast_address
        assert eni["InterfaceType"] == "vpc_endpoint"
        assert eni["RequesterManaged"] is True
        assert eni["Description"] == f"VPC Endpoint Interface {ep['VpcEndpointId']}"
        assert [g["GroupId"] for g in eni["Groups"]] == seed.endpoint_networks[seed.region].security_group_ids
        ips.add(str(ip))
    assert len(ips) == len(enis)
    dns = [d["DnsName"] for d in ep["DnsEntries"]]
    assert len(dns) == 1 + len(enis)
    assert all(n.startswith(ep["VpcEndpointId"]) and n.endswith(".vpce.amazonaws.com") for n in dns)


# 13
def test_fault_injection_throttle_by_operation(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    token = unique("tok")
    sandbox.inject_fault("RequestLimitExceeded", rate=1.0, operations=["CreateVpcEndpoint"])
    with pytest.raises(ClientError) as exc:
        create(sandbox, seed, ClientToken=token)
    assert error_of(exc) == ("RequestLimitExceeded", "Request limit exceeded.")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    ours(sandbox, seed).describe_vpcs()  # other operations are untouched
    sandbox.clear_faults()
    # "before" faults have no side effect: the token is still unused.
    ep = create(sandbox, seed, ClientToken=token)
    assert ep["State"] == "pending"
    assert ("RequestLimitExceeded", "CreateVpcEndpoint") not in sandbox.injected


@pytest.mark.parametrize(
    ("kind", "status"), [("UnauthorizedOperation", 403), ("InvalidVpcEndpointId.NotFound", 400)]
)
def test_fault_injection_access_denied_and_lagging_describe(
    sandbox: SandboxAws, aws_seed: SandboxSeed, kind: str, status: int
) -> None:
    ep = create(sandbox, aws_seed, ClientToken=unique("tok"))
    sandbox.inject_fault(kind, operations=["DescribeVpcEndpoints"])
    with pytest.raises(ClientError) as exc:
        ours(sandbox, aws_seed).describe_vpc_endpoints(VpcEndpointIds=[ep["VpcEndpointId"]])
    assert error_of(exc)[0] == kind
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    sandbox.clear_faults()
    found = ours(sandbox, aws_seed).describe_vpc_endpoints(VpcEndpointIds=[ep["VpcEndpointId"]])
    assert [e["VpcEndpointId"] for e in found["VpcEndpoints"]] == [ep["VpcEndpointId"]]


def test_fault_injection_rate_is_seeded(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    def pattern() -> list[bool]:
        out = []
        client = ours(sandbox, aws_seed)
        for _ in range(60):
            try:
                client.describe_vpcs()
                out.append(True)
            except ClientError as err:
                assert err.response["Error"]["Code"] == "RequestLimitExceeded"
                out.append(False)
        return out

    sandbox.clear_faults(seed=7)
    sandbox.inject_fault("RequestLimitExceeded", rate=0.3, operations=["DescribeVpcs"])
    ours(sandbox, aws_seed)  # sessions are cached: no AssumeRole inside the pattern
    first = pattern()
    sandbox.reseed(7)
    assert pattern() == first
    failures = first.count(False)
    assert 8 <= failures <= 30  # ~0.3 of 60


def test_fault_injection_5xx_after_phase(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    token = unique("tok")
    sandbox.inject_fault("InternalError", rate=1.0, operations=["CreateVpcEndpoint"], phase="after")
    with pytest.raises(ClientError) as exc:
        create(sandbox, seed, ClientToken=token)
    assert error_of(exc)[0] == "InternalError"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    sandbox.clear_faults()
    sandbox.inject_fault("Unavailable", rate=1.0, operations=["DescribeVpcs"])
    with pytest.raises(ClientError) as exc:
        ours(sandbox, seed).describe_vpcs()
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    sandbox.clear_faults()
    # The lost create happened; retrying with the same token returns that endpoint.
    ep1 = create(sandbox, seed, ClientToken=token)
    ep2 = create(sandbox, seed, ClientToken=token)
    assert ep1["VpcEndpointId"] == ep2["VpcEndpointId"]


def test_fault_injection_latency(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    client = ours(sandbox, aws_seed)
    sandbox.add_latency(0.3, operations=["DescribeVpcs"])
    t0 = time.monotonic()
    client.describe_vpcs()
    slow = time.monotonic() - t0
    t0 = time.monotonic()
    client.describe_subnets()
    fast = time.monotonic() - t0
    assert slow >= 0.3 and fast < 0.3
    with pytest.raises(ValueError):
        sandbox.inject_fault("NoSuchFault")
