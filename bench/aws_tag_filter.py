"""Latency of privnet's tag lookup (DescribeVpcEndpoints filtered by the org and connection
tags) as the number of endpoints in the sandbox grows. Never run as a test.

    .venv/bin/python -m bench.aws_tag_filter [--sizes 1,200,1000] [--repeat 20]

Endpoints are created in a large VPC of their own (one /20 subnet per AZ) so IPs never run
out; the sandbox's per-VPC quota is raised for the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from sandbox.aws import SandboxAws


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,200,1000")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    sandbox = SandboxAws()
    sandbox.start()
    try:
        seed = sandbox.seed_default()
        if hasattr(sandbox, "set_quota"):
            sandbox.set_quota(interface_endpoints_per_vpc=max(sizes) + 10)
        ec2: Any = sandbox.client("ec2", seed.region, seed.endpoints_account_id)
        vpc = ec2.create_vpc(CidrBlock="10.200.0.0/16")["Vpc"]["VpcId"]
        azs = seed.customer_az_ids["allowed"]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.200.{16 * i}.0/20",
                              AvailabilityZoneId=az)["Subnet"]["SubnetId"]
            for i, az in enumerate(azs)
        ]
        service = seed.customer_services["allowed"]
        made = 0
        results: dict[int, dict[str, float]] = {}
        for size in sizes:
            while made < size:
                ec2.create_vpc_endpoint(
                    VpcEndpointType="Interface", VpcId=vpc, ServiceName=service,
                    SubnetIds=subnets, TagSpecifications=[{
                        "ResourceType": "vpc-endpoint",
                        "Tags": [{"Key": "privnet.dev/org-id", "Value": f"org-{made % 50}"},
                                 {"Key": "privnet.dev/connection-id", "Value": f"c-{made}"}]}])
                made += 1
            times = []
            for i in range(args.repeat):
                conn = f"c-{(i * 7919) % size}"
                t0 = time.perf_counter()
                found = ec2.describe_vpc_endpoints(Filters=[
                    {"Name": "tag:privnet.dev/connection-id", "Values": [conn]},
                    {"Name": "tag:privnet.dev/org-id", "Values": [f"org-{int(conn[2:]) % 50}"]},
                ])["VpcEndpoints"]
                times.append(time.perf_counter() - t0)
                assert len(found) == 1, (conn, len(found))
            results[size] = {"median_ms": round(statistics.median(times) * 1000, 1),
                             "max_ms": round(max(times) * 1000, 1)}
            print(json.dumps({"endpoints": size, **results[size]}), flush=True)
    finally:
        sandbox.stop()


if __name__ == "__main__":
    main()
