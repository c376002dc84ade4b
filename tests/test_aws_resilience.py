"""AwsActivities against AWS's real limits in the sandbox: EC2 eventual consistency,
ambiguous creates, ownership before delete, per-VPC quotas across several VPCs, and
lookups longer than one page. The truth is read from sandbox AWS (inventory, boto3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.aws import TAG_CONNECTION_ID, TAG_ORG_ID, AwsActivities
from sandbox.aws import SandboxAws, SandboxSeed, create_endpoint_network
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
from tests.test_aws_activities import check_input
from workflows.contracts import (
    ENDPOINT_NOT_FOUND,
    ENDPOINT_NOT_VISIBLE_YET,
    CreateEndpointInput,
    DeleteEndpointInput,
    EndpointAddressesInput,
    Reason,
    WaitStateInput,
)

__all__ = ["aws_acts", "aws_seed", "sandbox", "sandbox_aws"]

ORG = "resilience-org"
_prefixes = iter(range(200, 250))


def soon(minutes: float = 5) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def past() -> datetime:
    return datetime.now(UTC) - timedelta(seconds=1)


def inventory(sb: SandboxAws, ep_id: str) -> dict[str, Any] | None:
    return next((r for r in sb.inventory() if r["vpc_endpoint_id"] == ep_id), None)


def new_input(seed: SandboxSeed, org: str = ORG, conn: str | None = None) -> CreateEndpointInput:
    chk = check_input(seed, "allowed", conn or unique()).model_copy(update={"org_id": org})
    return CreateEndpointInput(
        org_id=org, connection_id=chk.connection_id, service_name=chk.service_name,
        region=chk.region, service_region=chk.service_region,
        service_az_ids=seed.customer_az_ids["allowed"],
    )


def networks(sb: SandboxAws, seed: SandboxSeed, n: int) -> list[EndpointNetwork]:
    out = []
    for _ in range(n):
        net = create_endpoint_network(sb, seed.region, f"10.{next(_prefixes)}")
        out.append(EndpointNetwork(vpc_id=net.vpc_id, subnet_ids=net.subnet_ids,
                                   security_group_ids=net.security_group_ids))
    return out


def expect(err_type: str, fn: Any, arg: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as exc:
        fn(arg)
    assert exc.value.type == err_type, exc.value
    return exc.value


# ---------------------------------------------------------------- eventual consistency


def test_not_found_before_the_deadline_is_retried(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    sandbox.set_delays(lag=60)
    inp = new_input(seed)
    ref = aws_acts.create_endpoint(inp)
    ep = ref.vpc_endpoint_id
    wait = WaitStateInput(region=seed.region, vpc_endpoint_id=ep, last_state=ref.state,
                          not_found_retry_until=soon())
    addr = EndpointAddressesInput(region=seed.region, vpc_endpoint_id=ep,
                                  not_found_retry_until=soon())
    delete = DeleteEndpointInput(region=seed.region, org_id=ORG, connection_id=inp.connection_id,
                                 vpc_endpoint_id=ep, not_found_retry_until=soon())
    for fn, arg in ((aws_acts.wait_for_state_change, wait),
                    (aws_acts.get_endpoint_addresses, addr),
                    (aws_acts.delete_endpoint, delete),
                    (aws_acts.wait_endpoint_deleted, delete)):
        err = expect(ENDPOINT_NOT_VISIBLE_YET, fn, arg)
        assert not err.non_retryable and err.category == ApplicationErrorCategory.BENIGN
    # After the deadline a NotFound is ENDPOINT_NOT_FOUND (the workflow's verdict to make).
    late = wait.model_copy(update={"not_found_retry_until": past()})
    assert expect(ENDPOINT_NOT_FOUND, aws_acts.wait_for_state_change, late).non_retryable
    expect(ENDPOINT_NOT_FOUND, aws_acts.get_endpoint_addresses,
           addr.model_copy(update={"not_found_retry_until": None}))
    assert inventory(sandbox, ep)["state"] == "available"  # type: ignore[index]  # nothing deleted
    # Once EC2 catches up, the same inputs succeed: Temporal's retry was the right call.
    sandbox.advance(61)
    assert aws_acts.wait_for_state_change(wait).state == "available"
    assert aws_acts.get_endpoint_addresses(addr).ips
    assert aws_acts.delete_endpoint(delete).vpc_endpoint_ids == [ep]


def test_delete_after_the_deadline_trusts_only_the_tag_lookup(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    inp = new_input(seed)
    live = aws_acts.create_endpoint(inp).vpc_endpoint_id
    # A NotFound id after the deadline: the tag lookup finds the live endpoint → deleted.
    stale = DeleteEndpointInput(region=seed.region, org_id=ORG, connection_id=inp.connection_id,
                                vpc_endpoint_id="vpce-0123456789abcdef0",
                                not_found_retry_until=past())
    assert aws_acts.delete_endpoint(stale).vpc_endpoint_ids == [live]
    assert inventory(sandbox, live) is None or inventory(sandbox, live)["state"] in ("deleting", "deleted")  # type: ignore[index]
    # Nothing by tags either: already gone.
    assert aws_acts.delete_endpoint(stale).vpc_endpoint_ids == []
    aws_acts.wait_endpoint_deleted(stale)


def test_delete_never_touches_an_endpoint_that_is_not_ours(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    conn = unique()
    mine = aws_acts.create_endpoint(new_input(seed, conn=conn)).vpc_endpoint_id
    theirs = aws_acts.create_endpoint(new_input(seed, org="other-org", conn=conn)).vpc_endpoint_id
    for org, c in (("other-org", conn), (ORG, unique())):  # wrong org; wrong connection
        res = aws_acts.delete_endpoint(DeleteEndpointInput(
            region=seed.region, org_id=org, connection_id=c, vpc_endpoint_id=mine))
        assert res.vpc_endpoint_ids == [] and res.skipped_vpc_endpoint_ids == [mine]
    # An endpoint with our org/connection tags but not privnet's managed-by tag.
    ec2: Any = sandbox.client("ec2", seed.region, seed.endpoints_account_id)
    net = seed.endpoint_networks[seed.region]
    subnets = sorted({net.az_ids[s]: s for s in sorted(net.subnet_ids, reverse=True)
                      if net.az_ids[s] in seed.customer_az_ids["allowed"]}.values())
    by_hand = ec2.create_vpc_endpoint(
        VpcEndpointType="Interface", VpcId=net.vpc_id, ServiceName=seed.customer_services["allowed"],
        SubnetIds=subnets, TagSpecifications=[{"ResourceType": "vpc-endpoint", "Tags": [
            {"Key": TAG_ORG_ID, "Value": ORG}, {"Key": TAG_CONNECTION_ID, "Value": conn}]}],
    )["VpcEndpoint"]["VpcEndpointId"]
    res = aws_acts.delete_endpoint(DeleteEndpointInput(
        region=seed.region, org_id=ORG, connection_id=conn, vpc_endpoint_id=by_hand))
    assert res.skipped_vpc_endpoint_ids == [by_hand]
    by_tags = aws_acts.delete_endpoint(DeleteEndpointInput(
        region=seed.region, org_id=ORG, connection_id=conn))
    assert by_tags.vpc_endpoint_ids == [mine]
    for ep_id in (theirs, by_hand):
        assert inventory(sandbox, ep_id)["state"] == "available"  # type: ignore[index]


# ---------------------------------------------------------------- ambiguous creates


def test_idempotent_parameter_mismatch_finds_the_endpoint_by_tags(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    first, second = networks(sandbox, seed, 2)
    inp = new_input(seed)
    a = make_activities(seed, endpoint_networks={seed.region: first})
    ref = a.create_endpoint(inp)
    # The network changed: the same ClientToken with other parameters.
    b = make_activities(seed, endpoint_networks={seed.region: second})
    again = b.create_endpoint(inp)
    assert again.vpc_endpoint_id == ref.vpc_endpoint_id and again.created is False
    assert b.calls.snapshot()["CreateVpcEndpoint"] == 1
    # Nothing visible by tags (EC2 lag): a clear, non-retryable failure naming the fix.
    sandbox.set_delays(lag=60)
    lagging = new_input(seed)
    a.create_endpoint(lagging)
    with pytest.raises(ApplicationError) as exc:
        b.create_endpoint(lagging)
    assert exc.value.type == Reason.ENDPOINT_CREATE_FAILED and exc.value.non_retryable
    assert "PRIVNET_ENDPOINT_NETWORKS" in exc.value.message and lagging.connection_id in exc.value.message


def test_retry_attempt_looks_up_first_attempt_does_not(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    inp = new_input(aws_seed)
    aws_acts.create_endpoint(new_input(aws_seed))  # warm: credentials, subnet AZs
    aws_acts.calls.reset()
    ref = aws_acts.create_endpoint(inp)
    assert aws_acts.calls.snapshot() == {"CreateVpcEndpoint": 1}
    aws_acts.calls.reset()
    again = attempt(3).run(aws_acts.create_endpoint, inp)
    assert again.vpc_endpoint_id == ref.vpc_endpoint_id and not again.created
    assert aws_acts.calls.snapshot() == {"DescribeVpcEndpoints": 1}
    # A retry that finds nothing (the first attempt failed before AWS) creates.
    fresh = new_input(aws_seed)
    made = attempt(2).run(aws_acts.create_endpoint, fresh)
    assert made.created and inventory(sandbox, made.vpc_endpoint_id) is not None


# ---------------------------------------------------------------- quotas, several VPCs


def test_full_vpc_goes_to_the_next_and_all_full_is_quota_exceeded(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    first, second = networks(sandbox, seed, 2)
    sandbox.set_quota(interface_endpoints_per_vpc=2)
    acts = make_activities(seed, endpoint_networks={seed.region: [first, second]})
    vpc_of = {}
    for i in range(4):
        acts.calls.reset()
        ref = acts.create_endpoint(new_input(seed))
        vpc_of[ref.vpc_endpoint_id] = inventory(sandbox, ref.vpc_endpoint_id)["vpc_id"]  # type: ignore[index]
        # 1, 2: first VPC. 3: refused by the first, created in the second. 4: the first
        # is remembered full, no call wasted on it.
        assert acts.calls.snapshot().get("CreateVpcEndpoint") == (2 if i == 2 else 1)
    assert sorted(vpc_of.values()) == sorted([first.vpc_id] * 2 + [second.vpc_id] * 2)
    with pytest.raises(ApplicationError) as exc:
        acts.create_endpoint(new_input(seed))
    err = exc.value
    assert err.type == Reason.QUOTA_EXCEEDED and err.non_retryable
    assert "Service Quotas" in err.message and "PRIVNET_ENDPOINT_NETWORKS" in err.message
    assert first.vpc_id in err.message and second.vpc_id in err.message
    # Room again in the first VPC (an endpoint deleted): a fresh worker uses it.
    ep = next(e for e, v in vpc_of.items() if v == first.vpc_id)
    sandbox.client("ec2", seed.region, seed.endpoints_account_id).delete_vpc_endpoints(VpcEndpointIds=[ep])
    fresh = make_activities(seed, endpoint_networks={seed.region: [first, second]})
    ref = fresh.create_endpoint(new_input(seed))
    assert inventory(sandbox, ref.vpc_endpoint_id)["vpc_id"] == first.vpc_id  # type: ignore[index]


def test_hundreds_of_endpoints_fit_across_vpcs_in_one_region(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    nets = networks(sandbox, seed, 5)
    sandbox.set_quota(interface_endpoints_per_vpc=50)  # AWS's default
    acts = make_activities(seed, endpoint_networks={seed.region: nets})
    refs = [acts.create_endpoint(new_input(seed, org=f"org-{i % 120}")) for i in range(230)]
    per_vpc: dict[str, int] = {}
    for ref in refs:
        row = inventory(sandbox, ref.vpc_endpoint_id)
        assert row is not None
        per_vpc[row["vpc_id"]] = per_vpc.get(row["vpc_id"], 0) + 1
    assert sorted(per_vpc.values()) == [30, 50, 50, 50, 50]
    assert set(per_vpc) == {n.vpc_id for n in nets}
    # Filling VPCs in order costs one refused create per VPC, not one per endpoint.
    assert acts.calls.snapshot()["CreateVpcEndpoint"] == 230 + 4


def test_single_object_network_setting_still_works(aws_seed: SandboxSeed) -> None:
    from settings import Settings

    net = aws_seed.endpoint_networks[aws_seed.region]
    one = {"vpc_id": net.vpc_id, "subnet_ids": net.subnet_ids}
    s = Settings(endpoint_networks={"us-east-1": one, "eu-west-1": [one, {"vpc_id": "vpc-2"}]})  # type: ignore[arg-type]
    assert [n.vpc_id for n in s.networks_for("us-east-1")] == [net.vpc_id]
    assert [n.vpc_id for n in s.networks_for("eu-west-1")] == [net.vpc_id, "vpc-2"]
    assert s.networks_for("ap-south-1") == []


# ---------------------------------------------------------------- pagination, pool


def test_lookups_follow_next_token(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    conn = unique("dup")
    inp = new_input(seed, conn=conn)
    acts = make_activities(seed, page_size=5)
    ec2: Any = sandbox.client("ec2", seed.region, seed.endpoints_account_id)
    params = acts._create_params(inp, acts.settings.networks_for(seed.region)[0],
                                 acts._choose_subnets(inp, acts.settings.networks_for(seed.region)[0]))
    params.pop("ClientToken")
    # 12 endpoints carrying this connection's tags (e.g. left by a buggy release).
    dups = sorted(ec2.create_vpc_endpoint(**params)["VpcEndpoint"]["VpcEndpointId"] for _ in range(12))
    acts.calls.reset()
    found = attempt(2).run(acts.create_endpoint, inp)
    assert found.vpc_endpoint_id in dups and not found.created
    assert acts.calls.snapshot() == {"DescribeVpcEndpoints": 3}  # 5 + 5 + 2
    # The server paging on its own (no MaxResults sent) is followed too.
    sandbox.set_default_page_size(4)
    plain = make_activities(seed)
    res = plain.delete_endpoint(DeleteEndpointInput(region=seed.region, org_id=ORG, connection_id=conn))
    assert res.vpc_endpoint_ids == dups
    assert all(inventory(sandbox, d) is None or inventory(sandbox, d)["state"] != "available"  # type: ignore[index]
               for d in dups)
    addrs = retrying(plain.get_endpoint_addresses, EndpointAddressesInput(
        region=seed.region, vpc_endpoint_id=plain.create_endpoint(new_input(seed)).vpc_endpoint_id))
    assert addrs.ips


def test_boto3_pool_follows_the_setting(aws_seed: SandboxSeed) -> None:
    default = make_activities(aws_seed)
    assert default.client("ec2", aws_seed.region).meta.config.max_pool_connections == 64
    small = make_activities(aws_seed, aws_max_pool_connections=7)
    assert small.client("ec2", aws_seed.region).meta.config.max_pool_connections == 7
    assert small.settings.aws_max_pool_connections == 7
