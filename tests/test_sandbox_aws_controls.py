"""Fidelity rows 14-19 of sandbox/aws (boto3 over HTTP) and the sandbox's controls: the
admin HTTP API under /_privnet/ and the same calls in process, with the ground truth."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from sandbox.aws import SandboxAws, SandboxSeed, UnknownEndpoint, create_endpoint_network
from tests.aws_fixtures import aws_seed, sandbox, sandbox_aws, unique
from tests.test_sandbox_aws import create, customer, error_of, ours, state_of

__all__ = ["aws_seed", "sandbox", "sandbox_aws"]

_prefixes = iter(range(100, 200))


def fresh_network(sb: SandboxAws, seed: SandboxSeed) -> Any:
    """A VPC of its own (quota counts per VPC), same AZs as the seed's."""
    return create_endpoint_network(sb, seed.region, f"10.{next(_prefixes)}")


def create_in(sb: SandboxAws, seed: SandboxSeed, net: Any, **kw: Any) -> dict[str, Any]:
    subnets = sorted(s for s, az in net.az_ids.items() if az in seed.customer_az_ids["allowed"])
    by_az = {net.az_ids[s]: s for s in reversed(subnets)}
    return create(sb, seed, VpcId=net.vpc_id, SubnetIds=sorted(by_az.values()),
                  SecurityGroupIds=net.security_group_ids, **kw)


def tagged(conn: str, org: str = "ctl-org") -> list[dict[str, Any]]:
    return [{"ResourceType": "vpc-endpoint", "Tags": [
        {"Key": "privnet.dev/org-id", "Value": org},
        {"Key": "privnet.dev/connection-id", "Value": conn}]}]


def admin(sb: SandboxAws, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{sb.url}/_privnet/{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# 14
def test_eventual_consistency_lag(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    sandbox.set_delays(lag=30)
    token, conn = unique("tok"), unique()
    ep = create(sandbox, seed, ClientToken=token, TagSpecifications=tagged(conn))
    ep_id = ep["VpcEndpointId"]
    with pytest.raises(ClientError) as exc:
        ours(sandbox, seed).describe_vpc_endpoints(VpcEndpointIds=[ep_id])
    assert error_of(exc)[0] == "InvalidVpcEndpointId.NotFound"
    by_tag = [{"Name": "tag:privnet.dev/connection-id", "Values": [conn]}]
    assert ours(sandbox, seed).describe_vpc_endpoints(Filters=by_tag)["VpcEndpoints"] == []
    gone = ours(sandbox, seed).delete_vpc_endpoints(VpcEndpointIds=[ep_id])["Unsuccessful"]
    assert gone[0]["Error"]["Code"] == "InvalidVpcEndpoint.NotFound"
    # A ClientToken replay still returns it (nothing duplicated).
    assert create(sandbox, seed, ClientToken=token, TagSpecifications=tagged(conn))["VpcEndpointId"] == ep_id
    # The ground truth sees it all along.
    row = next(r for r in sandbox.inventory() if r["vpc_endpoint_id"] == ep_id)
    assert row["visible"] is False and row["tags"]["privnet.dev/connection-id"] == conn
    sandbox.advance(31)
    assert state_of(sandbox, seed, ep_id) == "available"
    assert [e["VpcEndpointId"] for e in
            ours(sandbox, seed).describe_vpc_endpoints(Filters=by_tag)["VpcEndpoints"]] == [ep_id]


# 15
def test_states_failed_expired_partial(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    sandbox.set_delays(expire=100)
    pending = create(sandbox, seed, "acceptance_required")["VpcEndpointId"]
    sandbox.advance(99)
    assert state_of(sandbox, seed, pending) == "pendingAcceptance"
    sandbox.advance(2)
    assert state_of(sandbox, seed, pending) == "expired"
    assert sandbox.accept(seed.customer_services["acceptance_required"], pending)[0]["Error"][
        "Code"] == "InvalidState"
    for forced in ("failed", "partial"):
        ep_id = create(sandbox, seed)["VpcEndpointId"]
        assert sandbox.force_state(ep_id, forced)["state"] == forced
        assert state_of(sandbox, seed, ep_id) == forced
    with pytest.raises(ValueError):
        sandbox.force_state(ep_id, "melted")
    with pytest.raises(UnknownEndpoint):
        sandbox.force_state("vpce-0000000000000000f", "failed")


# 9, 17
def test_owner_rejects_accepted_connection(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    name = seed.customer_services["acceptance_required"]
    ep_id = create(sandbox, seed, "acceptance_required")["VpcEndpointId"]
    assert sandbox.accept(name, ep_id) == []
    assert state_of(sandbox, seed, ep_id) == "available"
    # The owner's RejectVpcEndpointConnections on an accepted endpoint.
    assert customer(sandbox, seed).reject_vpc_endpoint_connections(
        ServiceId=seed.customer_service_ids["acceptance_required"], VpcEndpointIds=[ep_id]
    )["Unsuccessful"] == []
    assert state_of(sandbox, seed, ep_id) == "rejected"
    # By endpoint id alone (the soak's control), on a service without acceptance.
    other = create(sandbox, seed)["VpcEndpointId"]
    assert state_of(sandbox, seed, other) == "available"
    assert sandbox.reject_endpoint(other)["state"] == "rejected"
    assert sandbox.reject_endpoint(other)["unsuccessful"][0]["Error"]["Code"] == "InvalidState"


# 16, 8
def test_quota_per_vpc(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    net = fresh_network(sandbox, seed)
    sandbox.set_quota(interface_endpoints_per_vpc=3)
    tokens = [unique("tok") for _ in range(3)]
    made = [create_in(sandbox, seed, net, ClientToken=t)["VpcEndpointId"] for t in tokens]
    with pytest.raises(ClientError) as exc:
        create_in(sandbox, seed, net)
    assert error_of(exc)[0] == "VpcEndpointLimitExceeded"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # A token replay returns the original endpoint before the quota check.
    assert create_in(sandbox, seed, net, ClientToken=tokens[0])["VpcEndpointId"] == made[0]
    # Other VPCs are not affected.
    create_in(sandbox, seed, fresh_network(sandbox, seed))
    # A deleting endpoint still counts; a deleted one frees its slot.
    sandbox.set_delays(deleting=60)
    ours(sandbox, seed).delete_vpc_endpoints(VpcEndpointIds=[made[0]])
    with pytest.raises(ClientError):
        create_in(sandbox, seed, net)
    sandbox.advance(61)
    assert create_in(sandbox, seed, net)["State"] == "pending"


# 18
def test_pagination_describe_vpc_endpoints(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    conn = unique()
    made = sorted(create(sandbox, seed, TagSpecifications=tagged(conn))["VpcEndpointId"]
                  for _ in range(12))
    flt = [{"Name": "tag:privnet.dev/connection-id", "Values": [conn]}]
    client = ours(sandbox, seed)
    first = client.describe_vpc_endpoints(Filters=flt, MaxResults=5)
    assert len(first["VpcEndpoints"]) == 5 and first["NextToken"]
    seen = [e["VpcEndpointId"] for e in first["VpcEndpoints"]]
    token = first["NextToken"]
    # An endpoint created between pages neither repeats nor shifts the next page.
    late = create(sandbox, seed, TagSpecifications=tagged(conn))["VpcEndpointId"]
    while token:
        resp = client.describe_vpc_endpoints(Filters=flt, MaxResults=5, NextToken=token)
        seen += [e["VpcEndpointId"] for e in resp["VpcEndpoints"]]
        token = resp.get("NextToken")
    assert len(seen) == len(set(seen)) and set(made) <= set(seen)
    assert set(seen) - set(made) <= {late}
    pages = client.get_paginator("describe_vpc_endpoints").paginate(
        Filters=flt, PaginationConfig={"PageSize": 4})
    assert sorted(e["VpcEndpointId"] for p in pages for e in p["VpcEndpoints"]) == sorted([*made, late])
    # Above 1,000 only 1,000 come back; a bad or foreign token is refused.
    assert len(client.describe_vpc_endpoints(Filters=flt, MaxResults=5000)["VpcEndpoints"]) == 13
    for bad in ("garbage!", first["NextToken"]):
        with pytest.raises(ClientError) as exc:
            client.describe_subnets(MaxResults=5, NextToken=bad)
        assert error_of(exc)[0] == "InvalidPaginationToken"
    # The server's own page size (a test knob): callers must follow NextToken.
    sandbox.set_default_page_size(5)
    once = client.describe_vpc_endpoints(Filters=flt)
    assert len(once["VpcEndpoints"]) == 5 and once["NextToken"]


def test_pagination_enis_subnets_services(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    client = ours(sandbox, seed)
    net = seed.endpoint_networks[seed.region]
    flt = [{"Name": "vpc-id", "Values": [net.vpc_id]}]
    all_subnets = client.describe_subnets(Filters=flt)["Subnets"]
    assert len(all_subnets) > 5
    page = client.describe_subnets(Filters=flt, MaxResults=5)
    assert len(page["Subnets"]) == 5 and page["NextToken"]
    rest = client.describe_subnets(Filters=flt, MaxResults=5, NextToken=page["NextToken"])
    assert {s["SubnetId"] for s in page["Subnets"] + rest["Subnets"]} == {
        s["SubnetId"] for s in all_subnets}
    with pytest.raises(ParamValidationError):  # botocore enforces the documented minimum
        client.describe_subnets(Filters=flt, MaxResults=2)
    ep = create(sandbox, seed)
    with pytest.raises(ClientError) as exc:
        client.describe_network_interfaces(NetworkInterfaceIds=ep["NetworkInterfaceIds"], MaxResults=5)
    assert error_of(exc)[0] == "InvalidParameterCombination"
    enis = client.get_paginator("describe_network_interfaces").paginate(
        Filters=[{"Name": "vpc-id", "Values": [net.vpc_id]}], PaginationConfig={"PageSize": 5})
    assert set(ep["NetworkInterfaceIds"]) <= {e["NetworkInterfaceId"] for p in enis
                                              for e in p["NetworkInterfaces"]}
    names = client.describe_vpc_endpoint_services()["ServiceNames"]
    assert len(names) > 2
    got: list[str] = []
    for p in client.get_paginator("describe_vpc_endpoint_services").paginate(
            PaginationConfig={"PageSize": 2}):
        assert len(p["ServiceDetails"]) <= 2
        got += p["ServiceNames"]
    assert sorted(got) == sorted(names)


# 19
def test_tag_filter_index(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    client = ours(sandbox, seed)
    ep_id = create(sandbox, seed)["VpcEndpointId"]
    key, value = "privnet.dev/connection-id", unique("late")

    def found(v: str) -> list[str]:
        return [e["VpcEndpointId"] for e in client.describe_vpc_endpoints(
            Filters=[{"Name": f"tag:{key}", "Values": [v]}])["VpcEndpoints"]]

    assert found(value) == []
    client.create_tags(Resources=[ep_id], Tags=[{"Key": key, "Value": value}])
    assert found(value) == [ep_id]
    client.create_tags(Resources=[ep_id], Tags=[{"Key": key, "Value": value + "-x"}])
    assert found(value) == [] and found(value + "-x") == [ep_id]
    assert ep_id in found(value[:-2] + "*")  # wildcards still work (a scan)
    client.delete_tags(Resources=[ep_id], Tags=[{"Key": key}])
    assert found(value + "-x") == []
    desc = client.describe_vpc_endpoints(VpcEndpointIds=[ep_id])["VpcEndpoints"][0]
    assert all(t["Key"] != key for t in desc.get("Tags", []))


# ---------------------------------------------------------------- admin API and truth


def test_admin_faults_delays_quota_clock(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    status, rule = admin(sandbox, "POST", "faults", {
        "kind": "RequestLimitExceeded", "rate": 1.0, "operations": ["DescribeVpcs"]})
    assert status == 200 and rule["rule"]["operations"] == ["DescribeVpcs"]
    with pytest.raises(ClientError) as exc:
        ours(sandbox, aws_seed).describe_vpcs()
    assert error_of(exc)[0] == "RequestLimitExceeded"
    assert admin(sandbox, "POST", "faults", {"kind": "latency", "latency": 0.01})[0] == 200
    assert len(admin(sandbox, "GET", "config")[1]["faults"]) == 2
    assert admin(sandbox, "DELETE", "faults?seed=5")[0] == 200
    ours(sandbox, aws_seed).describe_vpcs()
    assert admin(sandbox, "POST", "faults", {"kind": "Nope"})[0] == 400
    assert admin(sandbox, "POST", "faults", {"kind": "InternalError", "rate": 2})[0] == 400
    assert admin(sandbox, "POST", "faults/seed", {"seed": 9}) == (200, {"seed": 9})
    status, delays = admin(sandbox, "POST", "delays", {"pending": 5, "lag": 2, "expire": 60})
    assert status == 200 and delays["pending"] == 5 and delays["lag"] == 2 and delays["expire"] == 60
    assert sandbox.delays.lag == 2
    assert admin(sandbox, "POST", "delays", {"pending": -1})[0] == 400
    assert admin(sandbox, "POST", "quotas", {"interface_endpoints_per_vpc": 7})[1] == {
        "interface_endpoints_per_vpc": 7}
    assert admin(sandbox, "POST", "pagination", {"default_page_size": 3})[1] == {"default_page_size": 3}
    before = sandbox.clock()
    status, clock = admin(sandbox, "POST", "clock/advance", {"seconds": 100})
    assert status == 200 and clock["clock"] >= before + 100
    assert admin(sandbox, "POST", "clock/advance", {})[0] == 400
    assert admin(sandbox, "GET", "nothing-here")[0] == 404


def test_admin_customer_side_ips_and_ground_truth(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    conn = unique()
    start = len(sandbox.history())
    sandbox.set_delays(deleting=10)
    pending = create(sandbox, seed, "acceptance_required", TagSpecifications=tagged(conn))
    ep_id = pending["VpcEndpointId"]
    status, row = admin(sandbox, "POST", f"endpoints/{ep_id}/accept")
    assert status == 200 and row["state"] == "pending" and row["unsuccessful"] == []
    assert state_of(sandbox, seed, ep_id) == "available"
    old_ips = next(r for r in admin(sandbox, "GET", "endpoints")[1]["endpoints"]
                   if r["vpc_endpoint_id"] == ep_id)["ips"]
    status, new = admin(sandbox, "POST", f"endpoints/{ep_id}/replace-ips")
    assert status == 200 and len(new["ips"]) == len(old_ips) and not set(new["ips"]) & set(old_ips)
    enis = ours(sandbox, seed).describe_network_interfaces(
        NetworkInterfaceIds=pending["NetworkInterfaceIds"])["NetworkInterfaces"]
    assert sorted(e["PrivateIpAddress"] for e in enis) == new["ips"]
    assert admin(sandbox, "POST", f"endpoints/{ep_id}/reject")[1]["state"] == "rejected"
    assert admin(sandbox, "POST", f"endpoints/{ep_id}/state", {"state": "partial"})[1]["state"] == "partial"
    assert admin(sandbox, "POST", "endpoints/vpce-00000000000000000/accept")[0] == 404
    assert admin(sandbox, "POST", f"endpoints/{ep_id}/state", {"state": "bogus"})[0] == 400
    ours(sandbox, seed).delete_vpc_endpoints(VpcEndpointIds=[ep_id])
    sandbox.advance(11)
    status, hist = admin(sandbox, "GET", f"history?since={start}")
    mine = [e for e in hist["events"] if e["vpc_endpoint_id"] == ep_id]
    assert [e["event"] for e in mine] == [
        "created", "state", "state", "state", "state", "state", "deleting", "deleted"]
    assert [e["state"] for e in mine][:3] == ["pendingAcceptance", "pending", "available"]
    assert all(e["connection_id"] == conn and e["org_id"] == "ctl-org" for e in mine)
    times = [e["t"] for e in mine]
    assert times == sorted(times)
    assert mine[-1]["t"] - mine[-2]["t"] == pytest.approx(10, abs=0.5)  # dated when due
    assert mine[-1]["state"] == "deleted"
    assert ep_id not in {r["vpc_endpoint_id"] for r in sandbox.inventory()}  # gone now


def test_history_survives_snapshot(sandbox: SandboxAws, aws_seed: SandboxSeed, tmp_path: Path) -> None:
    ep_id = create(sandbox, aws_seed, TagSpecifications=tagged(unique()))["VpcEndpointId"]
    path = tmp_path / "aws-state.pickle"
    sandbox.snapshot(path)
    saved = pickle.loads(path.read_bytes())  # noqa: S301 - written just above
    assert any(e["vpc_endpoint_id"] == ep_id and e["event"] == "created" for e in saved["history"])
    # A fresh process restores it: same endpoints, the history continues.
    script = (
        "import sys; from sandbox.aws import SandboxAws\n"
        "sb = SandboxAws(); sb.restore(sys.argv[1])\n"
        "h = [e['event'] for e in sb.history() if e['vpc_endpoint_id'] == sys.argv[2]]\n"
        "inv = [r['state'] for r in sb.inventory() if r['vpc_endpoint_id'] == sys.argv[2]]\n"
        "print(h, inv)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path), ep_id], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.strip() == "['created', 'state'] ['available']"


def test_tag_index_forgets_endpoints_that_are_gone(sandbox: SandboxAws, aws_seed: SandboxSeed) -> None:
    from moto.ec2.models import ec2_backends

    conn = unique()
    ep_id = create(sandbox, aws_seed, TagSpecifications=tagged(conn))["VpcEndpointId"]
    backend = ec2_backends[aws_seed.endpoints_account_id][aws_seed.region]
    key = ("privnet.dev/connection-id", conn)
    assert backend.__dict__["_pl_tag_index"][key] == {ep_id}
    ours(sandbox, aws_seed).delete_vpc_endpoints(VpcEndpointIds=[ep_id])
    with pytest.raises(ClientError):  # zero delays: deleted and gone on the next look
        state_of(sandbox, aws_seed, ep_id)
    assert key not in backend.__dict__["_pl_tag_index"] and ep_id not in backend.tags
