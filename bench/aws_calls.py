"""AWS API calls per connection, by operation, for a connection whose endpoint is available
at once (sandbox AWS, same Region). Never run as a test.

    .venv/bin/python -m bench.aws_calls [--connections N]
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
    EndpointAddressesInput,
    WaitStateInput,
)


def one_connection(acts: AwsActivities, service_name: str, region: str, conn: str) -> None:
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
        for i in range(args.connections):
            one_connection(acts, service, seed.region, f"bench-{i}")
        elapsed = time.perf_counter() - t0
        steady = counter.snapshot()
        per = {op: n / args.connections for op, n in sorted(steady.items())}
        print(json.dumps({
            "first_connection_calls": first,
            "first_connection_total": sum(first.values()),
            "steady_calls_per_connection": per,
            "steady_total_per_connection": sum(per.values()),
            "connections": args.connections,
            "seconds_per_connection": round(elapsed / args.connections, 4),
        }, indent=2))
    finally:
        sandbox.stop()


if __name__ == "__main__":
    main()
