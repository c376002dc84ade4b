"""AwsActivities against the sandbox AWS over HTTP: the customer account owns an internal
NLB and endpoint services, our endpoints account holds the endpoints."""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.testing import ActivityEnvironment

from activities.aws import (
    TAG_CONNECTION_ID,
    TAG_MANAGED_BY,
    TAG_ORG_ID,
    AwsActivities,
    classify_state,
)
from sandbox.aws import SandboxAws, SandboxSeed
from settings import EndpointNetwork
from tests.aws_fixtures import (
    attempt,
    aws_acts,
    aws_seed,
    make_activities,
    retrying,
    sandbox,
    sandbox_aws,
    unique,
)
from workflows.contracts import (
    ENDPOINT_NOT_DELETED_YET,
    ENDPOINT_NOT_FOUND,
    RETRYABLE_THROTTLED,
    RETRYABLE_TRANSIENT,
    STATE_UNCHANGED,
    CheckPrincipalInput,
    CreateEndpointInput,
    DeleteEndpointInput,
    EndpointAddresses,
    EndpointAddressesInput,
    EndpointRef,
    Reason,
    ServiceInfo,
    WaitStateInput,
)

__all__ = ["aws_acts", "aws_seed", "sandbox", "sandbox_aws"]

ORG = "aws-activities-test"


def check_input(seed: SandboxSeed, key: str, conn: str, region: str | None = None) -> CheckPrincipalInput:
    name = seed.customer_services[key]
    return CheckPrincipalInput(
        org_id=ORG, connection_id=conn, service_name=name, region=region or seed.region,
        service_region=name.split(".")[3],
    )


def create_input(info: ServiceInfo, chk: CheckPrincipalInput) -> CreateEndpointInput:
    return CreateEndpointInput(
        org_id=chk.org_id, connection_id=chk.connection_id, service_name=chk.service_name,
        region=chk.region, service_region=chk.service_region, service_az_ids=info.az_ids,
    )


def wait_until_not(acts: AwsActivities, region: str, ep_id: str, last: str | None) -> str:
    """The poll loop Temporal's retry policy would run around wait_for_state_change."""
    return retrying(
        acts.wait_for_state_change,
        WaitStateInput(region=region, vpc_endpoint_id=ep_id, last_state=last),
    ).state


def provision(acts: AwsActivities, seed: SandboxSeed, key: str, conn: str) -> EndpointAddresses:
    """check → create → wait until available → addresses, with emulated retries, as the
    workflow does it (the poll that sees ``available`` reads the IPs too)."""
    chk = check_input(seed, key, conn)
    info = retrying(acts.check_principal, chk)
    ref = retrying(acts.create_endpoint, create_input(info, chk))
    state, addresses = ref.state, None
    while state.lower() != "available":
        seen = retrying(
            acts.wait_for_state_change,
            WaitStateInput(region=chk.region, vpc_endpoint_id=ref.vpc_endpoint_id, last_state=state),
        )
        state, addresses = seen.state, seen.addresses
        assert state.lower() in ("pending", "available"), state
    return addresses or retrying(
        acts.get_endpoint_addresses,
        EndpointAddressesInput(region=chk.region, vpc_endpoint_id=ref.vpc_endpoint_id),
    )


def endpoints_of(sb: SandboxAws, seed: SandboxSeed, conn: str, region: str | None = None) -> list[dict[str, Any]]:
    ec2: Any = sb.client("ec2", region or seed.region, seed.endpoints_account_id)
    eps = ec2.describe_vpc_endpoints(
        Filters=[{"Name": f"tag:{TAG_CONNECTION_ID}", "Values": [conn]}]
    )["VpcEndpoints"]
    return list(eps)


def subnet_cidrs(sb: SandboxAws, seed: SandboxSeed, region: str) -> dict[str, str]:
    ec2: Any = sb.client("ec2", region, seed.endpoints_account_id)
    subnets = ec2.describe_subnets(SubnetIds=seed.endpoint_networks[region].subnet_ids)["Subnets"]
    return {s["SubnetId"]: s["CidrBlock"] for s in subnets}


# ---------------------------------------------------------------- check_principal


def test_check_principal_allowed(aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    info = aws_acts.check_principal(check_input(aws_seed, "allowed", unique()))
    ours = set(aws_seed.endpoint_networks[aws_seed.region].az_ids.values())
    assert info.az_ids == aws_seed.customer_az_ids["allowed"]
    assert info.usable_az_ids == sorted(set(info.az_ids) & ours) and info.usable_az_ids
    assert info.acceptance_required is False
    assert info.service_id == aws_seed.customer_service_ids["allowed"]
    assert info.supported_regions == [aws_seed.region]
    acc = aws_acts.check_principal(check_input(aws_seed, "acceptance_required", unique()))
    assert acc.acceptance_required is True


def test_check_principal_not_allowed_names_our_principal(aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    with pytest.raises(ApplicationError) as exc:
        aws_acts.check_principal(check_input(aws_seed, "not_allowed", unique()))
    err = exc.value
    assert err.type == Reason.PRINCIPAL_NOT_ALLOWED and err.non_retryable
    # principal derived from STS GetCallerIdentity in the assumed endpoints role
    assert f"arn:aws:iam::{aws_seed.endpoints_account_id}:root" in err.message
    assert "allowed principals" in err.message
    assert aws_acts.calls.snapshot().get("GetCallerIdentity") == 1


def test_check_principal_az_not_supported(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    net = seed.endpoint_networks[seed.region]
    others = sorted(s for s, az in net.az_ids.items() if az not in seed.customer_az_ids["allowed"])
    networks = {seed.region: EndpointNetwork(
        vpc_id=net.vpc_id, subnet_ids=others, security_group_ids=net.security_group_ids)}
    acts = make_activities(seed, endpoint_networks=networks)
    chk = check_input(seed, "allowed", unique())
    with pytest.raises(ApplicationError) as exc:
        acts.check_principal(chk)
    err = exc.value
    assert err.type == Reason.AZ_NOT_SUPPORTED and err.non_retryable
    assert str(seed.customer_az_ids["allowed"]) in err.message
    assert str(sorted({net.az_ids[s] for s in others})) in err.message
    # create_endpoint refuses before creating anything
    with pytest.raises(ApplicationError) as exc:
        acts.create_endpoint(create_input(ServiceInfo(
            service_name=chk.service_name, az_ids=seed.customer_az_ids["allowed"],
            acceptance_required=False), chk))
    assert exc.value.type == Reason.AZ_NOT_SUPPORTED
    assert "CreateVpcEndpoint" not in acts.calls.snapshot()
    assert endpoints_of(sandbox, seed, chk.connection_id) == []


def test_check_principal_cross_region(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    acts = make_activities(seed)
    info = acts.check_principal(check_input(seed, "other_region", unique()))
    assert info.supported_regions == sorted([seed.region, seed.other_region])
    assert info.usable_az_ids == sorted(set(seed.endpoint_networks[seed.region].az_ids.values()))
    # A service that does not support our Region.
    cust: Any = sandbox.client("ec2", seed.other_region, seed.customer_account_id)
    svc = cust.create_vpc_endpoint_service_configuration(
        NetworkLoadBalancerArns=[seed.customer_nlb_arns[seed.other_region]],
        AcceptanceRequired=False, SupportedRegions=[seed.other_region],
    )["ServiceConfiguration"]
    cust.modify_vpc_endpoint_service_permissions(
        ServiceId=svc["ServiceId"], AddAllowedPrincipals=[seed.principal_arn])
    chk = CheckPrincipalInput(org_id=ORG, connection_id=unique(), service_name=svc["ServiceName"],
                              region=seed.region, service_region=seed.other_region)
    with pytest.raises(ApplicationError) as exc:
        acts.check_principal(chk)
    assert exc.value.type == Reason.REGION_NOT_SUPPORTED and exc.value.non_retryable
    assert seed.region in exc.value.message and "supported Regions" in exc.value.message
    # Not allowed cross-Region is still PRINCIPAL_NOT_ALLOWED.
    cust.modify_vpc_endpoint_service_permissions(
        ServiceId=svc["ServiceId"], RemoveAllowedPrincipals=[seed.principal_arn])
    with pytest.raises(ApplicationError) as exc:
        acts.check_principal(chk)
    assert exc.value.type == Reason.PRINCIPAL_NOT_ALLOWED


def test_unconfigured_region_is_configuration_error(aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    chk = check_input(aws_seed, "allowed", unique(), region="eu-central-1")
    with pytest.raises(ApplicationError) as exc:
        aws_acts.check_principal(chk)
    assert exc.value.type == Reason.CONFIGURATION_ERROR and "PRIVNET_ENDPOINT_NETWORKS" in exc.value.message


# ---------------------------------------------------------------- create / wait / addresses


def test_same_region_create_wait_addresses(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    sandbox.set_delays(pending=60)
    conn = unique()
    chk = check_input(seed, "allowed", conn)
    info = aws_acts.check_principal(chk)
    ref = aws_acts.create_endpoint(create_input(info, chk))
    assert ref.created and ref.state == "pending"
    # Unchanged state: a retryable, benign STATE_UNCHANGED.
    with pytest.raises(ApplicationError) as exc:
        aws_acts.wait_for_state_change(WaitStateInput(
            region=seed.region, vpc_endpoint_id=ref.vpc_endpoint_id, last_state="PENDING"))
    assert exc.value.type == STATE_UNCHANGED and not exc.value.non_retryable
    assert exc.value.category == ApplicationErrorCategory.BENIGN
    sandbox.advance(61)
    assert wait_until_not(aws_acts, seed.region, ref.vpc_endpoint_id, "pending") == "available"
    addrs = aws_acts.get_endpoint_addresses(
        EndpointAddressesInput(region=seed.region, vpc_endpoint_id=ref.vpc_endpoint_id))
    assert addrs.state == "available" and len(addrs.ips) == len(info.usable_az_ids)
    cidrs = subnet_cidrs(sandbox, seed, seed.region)
    ep = endpoints_of(sandbox, seed, conn)[0]
    assert {seed.endpoint_networks[seed.region].az_ids[s] for s in ep["SubnetIds"]} == set(info.usable_az_ids)
    for ip in addrs.ips:
        assert any(ipaddress.ip_address(ip) in ipaddress.ip_network(cidrs[s]) for s in ep["SubnetIds"])
    assert addrs.dns_names and all(n.endswith(".vpce.amazonaws.com") for n in addrs.dns_names)
    assert len(addrs.network_interface_ids) == len(addrs.ips)
    tags = {t["Key"]: t["Value"] for t in ep["Tags"]}
    assert tags[TAG_ORG_ID] == ORG and tags[TAG_CONNECTION_ID] == conn and tags[TAG_MANAGED_BY] == "privnet"
    assert ep["OwnerId"] == seed.endpoints_account_id  # created in the endpoints account
    assert [g["GroupId"] for g in ep["Groups"]] == seed.endpoint_networks[seed.region].security_group_ids
    # A repeated first attempt replays the ClientToken: the same endpoint, no lookup.
    aws_acts.calls.reset()
    again = aws_acts.create_endpoint(create_input(info, chk))
    assert again.vpc_endpoint_id == ref.vpc_endpoint_id
    assert aws_acts.calls.snapshot() == {"CreateVpcEndpoint": 1}
    # A retry attempt (ambiguous earlier outcome) finds it by its tags first.
    retried = attempt(2).run(aws_acts.create_endpoint, create_input(info, chk))
    assert retried == EndpointRef(vpc_endpoint_id=ref.vpc_endpoint_id, state="available", created=False)
    assert len(endpoints_of(sandbox, seed, conn)) == 1


def test_lost_create_response_does_not_duplicate(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    chk = check_input(seed, "allowed", unique())
    info = aws_acts.check_principal(chk)
    sandbox.inject_fault("InternalError", rate=1.0, operations=["CreateVpcEndpoint"], phase="after")
    with pytest.raises(ApplicationError) as exc:
        aws_acts.create_endpoint(create_input(info, chk))
    assert exc.value.type == RETRYABLE_TRANSIENT and not exc.value.non_retryable
    sandbox.clear_faults()
    # Temporal's retry (attempt 2) looks the endpoint up by its tags.
    ref = attempt(2).run(aws_acts.create_endpoint, create_input(info, chk))
    assert ref.created is False
    assert [e["VpcEndpointId"] for e in endpoints_of(sandbox, seed, chk.connection_id)] == [ref.vpc_endpoint_id]
    # Even a first attempt cannot duplicate it: the ClientToken replay returns it.
    assert aws_acts.create_endpoint(create_input(info, chk)).vpc_endpoint_id == ref.vpc_endpoint_id
    assert len(endpoints_of(sandbox, seed, chk.connection_id)) == 1


def test_cross_region_endpoint(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    conn = unique()
    addrs = provision(aws_acts, seed, "other_region", conn)
    ep = endpoints_of(sandbox, seed, conn)[0]
    assert ep["ServiceRegion"] == seed.other_region
    assert len(addrs.ips) == len(set(seed.endpoint_networks[seed.region].az_ids.values()))


def test_acceptance_required_then_accepted(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    chk = check_input(seed, "acceptance_required", unique())
    info = aws_acts.check_principal(chk)
    ref = aws_acts.create_endpoint(create_input(info, chk))
    assert ref.state == "pendingAcceptance"
    wait = WaitStateInput(region=seed.region, vpc_endpoint_id=ref.vpc_endpoint_id, last_state=ref.state)
    for _ in range(3):
        with pytest.raises(ApplicationError) as exc:
            aws_acts.wait_for_state_change(wait)
        assert exc.value.type == STATE_UNCHANGED
    assert sandbox.accept(chk.service_name, ref.vpc_endpoint_id) == []
    state = wait_until_not(aws_acts, seed.region, ref.vpc_endpoint_id, "pendingAcceptance")
    assert state in ("pending", "available")
    if state == "pending":
        state = wait_until_not(aws_acts, seed.region, ref.vpc_endpoint_id, state)
    assert state == "available"
    addrs = aws_acts.get_endpoint_addresses(
        EndpointAddressesInput(region=seed.region, vpc_endpoint_id=ref.vpc_endpoint_id))
    assert addrs.ips


def test_acceptance_required_then_rejected(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    chk = check_input(seed, "acceptance_required", unique())
    info = aws_acts.check_principal(chk)
    ref = aws_acts.create_endpoint(create_input(info, chk))
    sandbox.reject(chk.service_name, ref.vpc_endpoint_id)
    state = wait_until_not(aws_acts, seed.region, ref.vpc_endpoint_id, "pendingAcceptance")
    assert state == "rejected"
    err = classify_state(state)
    assert err is not None and err.type == Reason.ENDPOINT_REJECTED and err.non_retryable
    assert "accept" in err.message


def test_wait_reports_attempt_via_activity_environment(aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    addrs = provision(aws_acts, aws_seed, "allowed", unique())
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=4)
    state = env.run(aws_acts.wait_for_state_change, WaitStateInput(
        region=aws_seed.region, vpc_endpoint_id=addrs.vpc_endpoint_id, last_state="pending"))
    assert state.state == "available" and state.attempt == 4


def test_wait_on_missing_endpoint_is_endpoint_not_found(aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    with pytest.raises(ApplicationError) as exc:
        aws_acts.wait_for_state_change(WaitStateInput(
            region=aws_seed.region, vpc_endpoint_id="vpce-0123456789abcdef0", last_state="pending"))
    assert exc.value.type == ENDPOINT_NOT_FOUND and exc.value.non_retryable


# ---------------------------------------------------------------- delete


@pytest.mark.parametrize("by_id", [True, False])
def test_delete_and_wait_deleted(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed, by_id: bool) -> None:
    seed = aws_seed
    conn = unique()
    addrs = provision(aws_acts, seed, "allowed", conn)
    sandbox.set_delays(deleting=60, deleted_visible=60)
    inp = DeleteEndpointInput(region=seed.region, connection_id=conn, org_id=ORG,
                              vpc_endpoint_id=addrs.vpc_endpoint_id if by_id else None)
    assert aws_acts.delete_endpoint(inp).vpc_endpoint_ids == [addrs.vpc_endpoint_id]
    with pytest.raises(ApplicationError) as exc:
        aws_acts.wait_endpoint_deleted(inp)
    assert exc.value.type == ENDPOINT_NOT_DELETED_YET and not exc.value.non_retryable
    assert exc.value.category == ApplicationErrorCategory.BENIGN
    sandbox.advance(61)
    aws_acts.wait_endpoint_deleted(inp)  # "deleted" counts as gone
    sandbox.advance(61)
    aws_acts.wait_endpoint_deleted(inp)  # and so does "no longer listed"
    # Already gone = success, and a new create after deletion makes a fresh endpoint lookup.
    assert aws_acts.delete_endpoint(inp).vpc_endpoint_ids == []
    assert endpoints_of(sandbox, seed, conn) == []


def test_delete_nothing_there(aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    inp = DeleteEndpointInput(region=aws_seed.region, connection_id=unique(), org_id=ORG)
    assert aws_acts.delete_endpoint(inp).vpc_endpoint_ids == []
    aws_acts.wait_endpoint_deleted(inp)


# ---------------------------------------------------------------- faults, counts


def test_throttling_is_retryable(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    sandbox.inject_fault("RequestLimitExceeded", rate=1.0, operations=["DescribeVpcEndpointServices"])
    with pytest.raises(ApplicationError) as exc:
        aws_acts.check_principal(check_input(aws_seed, "allowed", unique()))
    assert exc.value.type == RETRYABLE_THROTTLED and not exc.value.non_retryable


def test_fifty_connections_under_throttling_no_duplicates(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    acts = make_activities(seed)
    sandbox.clear_faults(seed=99)
    sandbox.inject_fault("RequestLimitExceeded", rate=0.3)
    # Some creates succeed but lose their response: only the tag lookup + ClientToken
    # keep them from being duplicated.
    sandbox.inject_fault("InternalError", rate=0.2, operations=["CreateVpcEndpoint"], phase="after")
    conns = [unique("bulk") for _ in range(50)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda c: provision(acts, seed, "allowed", c), conns))
    elapsed = time.monotonic() - t0
    injected = list(sandbox.injected)
    sandbox.clear_faults()
    assert elapsed < 20
    throttled = sum(1 for kind, _ in injected if kind == "RequestLimitExceeded")
    lost_creates = sum(1 for kind, _ in injected if kind == "InternalError")
    assert throttled >= 50 and lost_creates >= 3, (throttled, lost_creates)
    assert all(r.state == "available" and r.ips for r in results)
    ec2: Any = sandbox.client("ec2", seed.region, seed.endpoints_account_id)
    eps = ec2.describe_vpc_endpoints(
        Filters=[{"Name": f"tag:{TAG_CONNECTION_ID}", "Values": conns}])["VpcEndpoints"]
    by_conn: dict[str, list[str]] = {}
    for ep in eps:
        tag = {t["Key"]: t["Value"] for t in ep["Tags"]}[TAG_CONNECTION_ID]
        by_conn.setdefault(tag, []).append(ep["VpcEndpointId"])
    assert sorted(by_conn) == sorted(conns)
    assert all(len(ids) == 1 for ids in by_conn.values()), by_conn
    assert {r.vpc_endpoint_id for r in results} == {ids[0] for ids in by_conn.values()}
    all_ips = [ip for r in results for ip in r.ips]
    assert len(all_ips) == len(set(all_ips))  # no IP handed out twice


def test_api_calls_per_connection(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    acts = make_activities(aws_seed)
    provision(acts, aws_seed, "allowed", unique())
    warm = acts.calls.snapshot()
    # Once per process: AssumeRole (credentials) and DescribeSubnets (subnet AZs, cached).
    assert warm.get("AssumeRole") == 1 and warm.get("DescribeSubnets") == 1
    acts.calls.reset()
    provision(acts, aws_seed, "allowed", unique())
    calls = acts.calls.snapshot()
    assert calls == {
        "DescribeVpcEndpointServices": 1,
        "DescribeVpcEndpoints": 1,  # the poll that sees available (no lookup before a create)
        "CreateVpcEndpoint": 1,
        "DescribeNetworkInterfaces": 1,  # read by that same poll
    }
    assert acts.calls.total <= 4
    assert sum(warm.values()) <= 8


def test_credentials_assume_role_refreshable(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    from botocore.credentials import DeferredRefreshableCredentials

    acts = make_activities(aws_seed)
    creds = acts._session.get_credentials()
    assert isinstance(creds, DeferredRefreshableCredentials)
    ident = acts.client("sts", aws_seed.region).get_caller_identity()
    assert ident["Account"] == aws_seed.endpoints_account_id
    assert ":assumed-role/privnet-endpoints/" in ident["Arn"]
    assert acts.calls.snapshot().get("AssumeRole") == 1
    assert acts.client("ec2", aws_seed.region) is acts.client("ec2", aws_seed.region)
    # Without PRIVNET_AWS_ROLE_ARN: the ambient credentials, no AssumeRole.
    plain = make_activities(aws_seed, aws_role_arn=None)
    ident = plain.client("sts", aws_seed.region).get_caller_identity()
    assert ident["Account"] != aws_seed.endpoints_account_id
    assert "AssumeRole" not in plain.calls.snapshot()


def test_delete_by_tag_never_touches_another_orgs_endpoint(
    sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed
) -> None:
    """Connection ids are unique per org only: two orgs may both have 'db'."""
    seed = aws_seed
    conn = unique("same")
    mine = provision(aws_acts, seed, "allowed", conn)
    chk = check_input(seed, "allowed", conn).model_copy(update={"org_id": "other-org"})
    info = retrying(aws_acts.check_principal, chk)
    theirs = retrying(aws_acts.create_endpoint, create_input(info, chk))
    assert theirs.vpc_endpoint_id != mine.vpc_endpoint_id
    inp = DeleteEndpointInput(region=seed.region, connection_id=conn, org_id=ORG)
    assert aws_acts.delete_endpoint(inp).vpc_endpoint_ids == [mine.vpc_endpoint_id]
    other = DeleteEndpointInput(region=seed.region, connection_id=conn, org_id="other-org")
    ep = aws_acts.get_endpoint_addresses(
        EndpointAddressesInput(region=seed.region, vpc_endpoint_id=theirs.vpc_endpoint_id)
    )
    assert ep.state.lower() not in ("deleting", "deleted")
    assert aws_acts.delete_endpoint(other).vpc_endpoint_ids == [theirs.vpc_endpoint_id]


def test_a_steps_passing_status_is_written_before_the_step_acts(
    sandbox: SandboxAws, aws_seed: SandboxSeed, tmp_path: Any
) -> None:
    """Release 4: check_principal and create_endpoint write the status they pass through
    first. A store that is down fails the attempt before any AWS call (the step retries the
    write first again), so no endpoint exists that the store does not say is being made."""
    from sqlalchemy.exc import OperationalError

    from activities.aws import CallCounter
    from activities.store import Store, record_checked
    from tests.aws_fixtures import FAST, base_session, make_settings
    from workflows.contracts import ConnectionStatus, StatusRecord

    up = Store(f"sqlite:///{tmp_path / 'store.db'}")
    up.create_schema()
    down = Store("postgresql+psycopg://privnet@127.0.0.1:1/test?connect_timeout=2")  # refused
    store = {"now": down}
    acts = AwsActivities(
        make_settings(aws_seed), base_session(), client_config=FAST, counter=CallCounter(),
        status_writer=lambda rec: record_checked(store["now"], rec),
    )
    conn = unique()
    chk = check_input(aws_seed, "allowed", conn)

    def rec(seq: int, status: ConnectionStatus) -> StatusRecord:
        return StatusRecord(
            org_id=ORG, connection_id=conn, seq=seq, at="2026-11-27T00:00:00Z", status=status,
            endpoint_service_name=chk.service_name, region=chk.region,
            service_region=chk.service_region, workflow_id=f"privnet-conn:{ORG}:{conn}",
        )

    checking = chk.model_copy(update={"status": rec(1, ConnectionStatus.CHECKING_PRINCIPAL)})
    with pytest.raises(OperationalError):
        acts.check_principal(checking)
    assert acts.calls.snapshot() == {}  # no AWS call before its status is on record
    store["now"] = up
    info = acts.check_principal(checking)
    creating = create_input(info, chk).model_copy(
        update={"status": rec(2, ConnectionStatus.CREATING_ENDPOINT)}
    )
    store["now"] = down
    with pytest.raises(OperationalError):
        acts.create_endpoint(creating)
    assert endpoints_of(sandbox, aws_seed, conn) == []
    store["now"] = up
    ref = acts.create_endpoint(creating)
    assert [e["VpcEndpointId"] for e in endpoints_of(sandbox, aws_seed, conn)] == [ref.vpc_endpoint_id]
    view = up.get(ORG, conn)
    assert view is not None and view.status == "CreatingEndpoint"
    assert [e.status for e in view.timeline or []] == ["CheckingPrincipal", "CreatingEndpoint"]
