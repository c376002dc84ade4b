"""The real AWS CLI (``awscli`` from PyPI) referees sandbox AWS after privnet acted:
privnet's endpoints listed by tag page by page, an endpoint's ENIs, and the customer
accepting a pending connection, which privnet's poll then sees."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from activities.aws import AwsActivities
from sandbox.aws import SandboxAws, SandboxSeed
from tests.aws_fixtures import aws_acts, aws_seed, sandbox, sandbox_aws, unique
from tests.test_aws_activities import check_input, create_input, provision, wait_until_not
from workflows.contracts import EndpointAddressesInput

__all__ = ["aws_acts", "aws_seed", "sandbox", "sandbox_aws"]


def aws_cli() -> str:
    found = Path(sys.executable).with_name("aws")
    if found.exists():
        return str(found)
    on_path = shutil.which("aws")
    if on_path is None:
        pytest.skip("the AWS CLI is not installed (pip install awscli: it is in the [dev] extra)")
    return on_path


def aws(sb: SandboxAws, account: str, region: str, *args: str) -> Any:
    """``aws <args> --output json`` as ``account`` against the sandbox; parsed stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(sb.credentials(account))
    env.update({"AWS_DEFAULT_REGION": region, "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_PAGER": ""})
    proc = subprocess.run(
        [aws_cli(), "--endpoint-url", sb.url, "--output", "json", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def test_cli_lists_endpoints_page_by_page(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    org = unique("cli-org")
    made = set()
    for _ in range(7):
        chk = check_input(seed, "allowed", unique()).model_copy(update={"org_id": org})
        info = aws_acts.check_principal(chk)
        made.add(aws_acts.create_endpoint(create_input(info, chk)).vpc_endpoint_id)
    ours = seed.endpoints_account_id
    flt = f"Name=tag:privnet.dev/org-id,Values={org}"
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        args = ["ec2", "describe-vpc-endpoints", "--filters", flt, "--page-size", "2",
                "--max-items", "3"]
        if token:
            args += ["--starting-token", token]
        out = aws(sandbox, ours, seed.region, *args)
        pages += 1
        seen += [e["VpcEndpointId"] for e in out["VpcEndpoints"]]
        assert all({t["Key"]: t["Value"] for t in e["Tags"]}["privnet.dev/managed-by"] == "privnet"
                   for e in out["VpcEndpoints"])
        token = out.get("NextToken")
        if not token:
            break
        assert len(out["VpcEndpoints"]) == 3
    assert pages == 3 and len(seen) == 7 and set(seen) == made
    # One endpoint's ENIs, as privnet reported them.
    ep_id = sorted(made)[0]
    addrs = aws_acts.get_endpoint_addresses(
        EndpointAddressesInput(region=seed.region, vpc_endpoint_id=ep_id))
    enis = aws(sandbox, ours, seed.region, "ec2", "describe-network-interfaces",
               "--network-interface-ids", *addrs.network_interface_ids)["NetworkInterfaces"]
    assert sorted(e["PrivateIpAddress"] for e in enis) == addrs.ips
    assert {e["InterfaceType"] for e in enis} == {"vpc_endpoint"}
    assert all(e["Description"] == f"VPC Endpoint Interface {ep_id}" for e in enis)


def test_cli_customer_accepts_a_pending_connection(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    seed = aws_seed
    chk = check_input(seed, "acceptance_required", unique())
    info = aws_acts.check_principal(chk)
    ref = aws_acts.create_endpoint(create_input(info, chk))
    assert ref.state == "pendingAcceptance"
    cust, svc_id = seed.customer_account_id, seed.customer_service_ids["acceptance_required"]
    pending = aws(sandbox, cust, seed.region, "ec2", "describe-vpc-endpoint-connections",
                  "--filters", f"Name=service-id,Values={svc_id}",
                  "Name=vpc-endpoint-state,Values=pendingAcceptance")["VpcEndpointConnections"]
    row = next(c for c in pending if c["VpcEndpointId"] == ref.vpc_endpoint_id)
    assert row["VpcEndpointOwner"] == seed.endpoints_account_id
    out = aws(sandbox, cust, seed.region, "ec2", "accept-vpc-endpoint-connections",
              "--service-id", svc_id, "--vpc-endpoint-ids", ref.vpc_endpoint_id)
    assert out["Unsuccessful"] == []
    state = wait_until_not(aws_acts, seed.region, ref.vpc_endpoint_id, "pendingAcceptance")
    if state == "pending":
        state = wait_until_not(aws_acts, seed.region, ref.vpc_endpoint_id, state)
    assert state == "available"
    # Accepting again is refused per endpoint (Unsuccessful), as EC2 reports it.
    again = aws(sandbox, cust, seed.region, "ec2", "accept-vpc-endpoint-connections",
                "--service-id", svc_id, "--vpc-endpoint-ids", ref.vpc_endpoint_id)
    assert again["Unsuccessful"][0]["ResourceId"] == ref.vpc_endpoint_id


def test_cli_sees_privnet_endpoint_deleted(sandbox: SandboxAws, aws_acts: AwsActivities, aws_seed: SandboxSeed) -> None:
    from workflows.contracts import DeleteEndpointInput

    seed = aws_seed
    conn = unique()
    addrs = provision(aws_acts, seed, "allowed", conn)
    aws_acts.delete_endpoint(DeleteEndpointInput(
        region=seed.region, org_id="aws-activities-test", connection_id=conn,
        vpc_endpoint_id=addrs.vpc_endpoint_id))
    env_args = ["ec2", "describe-vpc-endpoints", "--filters",
                f"Name=tag:privnet.dev/connection-id,Values={conn}"]
    left = aws(sandbox, seed.endpoints_account_id, seed.region, *env_args)["VpcEndpoints"]
    assert left == []
