"""AWS API calls per connection, by operation, for a connection whose endpoint is available
at once (sandbox AWS, same Region), and for a delete (ownership check, delete, one look
until gone). Never run as a test.

    .venv/bin/python -m bench.aws_calls [--connections N]

Measured on this sandbox: 6 calls per connection before (a DescribeVpcEndpoints tag
lookup before every create), 5 after (the ClientToken makes the create idempotent; the
lookup runs only on a retry attempt or after IdempotentParameterMismatch).
"""

from __future__ import annotations

import argparse
import json
import time

import boto3

from activities.aws import AwsActivities, CallCounter
from sandbox.aws import SANDBOX_ACCESS_KEY, SANDBOX_SECRET_KEY, SandboxAws
from workflows.contracts import (
    CheckPrincipalInput,
    CreateEndpointInput,
    DeleteEndpointInput,
    EndpointAddressesInput,
    WaitStateInput,
)


def delete_connection(acts: AwsActivities, region: str, conn: str, endpoint_id: str) -> None:
    inp = DeleteEndpointInput(region=region, org_id="bench", connection_id=conn,
                              vpc_endpoint_id=endpoint_id)
    assert acts.delete_endpoint(inp).vpc_endpoint_ids == [endpoint_id]
    acts.wait_endpoint_deleted(inp)  # zero sandbox delays: gone on the first look


def one_connection(acts: AwsActivities, service_name: str, region: str, conn: str) -> str:
    chk = CheckPrincipalInput(org_id="bench", connection_id=conn, service_name=service_name,
                              region=region, service_region=region)
    info = acts.check_principal(chk)
    ref = acts.create_endpoint(CreateEndpointInput(
        org_id="bench", connection_id=conn, service_name=service_name, region=region,
        service_region=region, service_az_ids=info.az_ids))
    state = acts.wait_for_state_change(
        WaitStateInput(region=region, vpc_endpoint_id=ref.vpc_endpoint_id, last_state=ref.state))
    assert state.state == "available", state
    acts.get_endpoint_addresses(
        EndpointAddressesInput(region=region, vpc_endpoint_id=ref.vpc_endpoint_id))
    return ref.vpc_endpoint_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=20)
    args = parser.parse_args()
    sandbox = SandboxAws()
    sandbox.start()
    try:
        seed = sandbox.seed_default()
        settings = seed.settings(aws_endpoint_url=sandbox.url)
        counter = CallCounter()
        acts = AwsActivities(settings, boto3.Session(
            aws_access_key_id=SANDBOX_ACCESS_KEY, aws_secret_access_key=SANDBOX_SECRET_KEY,
            region_name=seed.region), counter=counter)
        service = seed.customer_services["allowed"]
        one_connection(acts, service, seed.region, "bench-first")
        first = counter.snapshot()
        counter.reset()
        t0 = time.perf_counter()
        made = [one_connection(acts, service, seed.region, f"bench-{i}")
                for i in range(args.connections)]
        elapsed = time.perf_counter() - t0
        steady = counter.snapshot()
        per = {op: n / args.connections for op, n in sorted(steady.items())}
        counter.reset()
        for i, ep in enumerate(made):
            delete_connection(acts, seed.region, f"bench-{i}", ep)
        deletes = {op: n / args.connections for op, n in sorted(counter.snapshot().items())}
        print(json.dumps({
            "first_connection_calls": first,
            "first_connection_total": sum(first.values()),
            "steady_calls_per_connection": per,
            "steady_total_per_connection": sum(per.values()),
            "delete_calls_per_connection": deletes,
            "delete_total_per_connection": sum(deletes.values()),
            "connections": args.connections,
            "seconds_per_connection": round(elapsed / args.connections, 4),
        }, indent=2))
    finally:
        sandbox.stop()


if __name__ == "__main__":
    main()
