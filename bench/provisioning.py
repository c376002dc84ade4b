"""Provisioning throughput through the real stack pieces: Temporal dev server, worker with
the real activities, sandbox AWS (endpoints available at once) and sandbox Kubernetes.

Reports one run's figures as ratios (these machines are shared and noisy):
  - concurrent speed-up: time for N connections one after another / N at once
  - delete vs create latency
Never run as a test:  .venv/bin/python bench/provisioning.py [N]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from activities.store import Store  # noqa: E402
from sandbox.aws import SandboxAws  # noqa: E402
from sandbox.binaries import temporal_cli_path  # noqa: E402
from sandbox.kube import SandboxKube  # noqa: E402
from starter.client import ConnectionsClient  # noqa: E402
from worker import build_worker  # noqa: E402
from workflows.contracts import SEARCH_ATTRIBUTES  # noqa: E402


async def one(client: ConnectionsClient, org: str, service: str, cid: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    await client.create(org, service, connection_id=cid)
    view = await client.wait_for(org, cid, ["Active", "Failed", "Rejected"])
    assert view.status == "Active", view
    t1 = time.perf_counter()
    await client.delete(org, cid)
    view = await client.wait_for(org, cid, ["Deleted", "Failed"])
    assert view.status == "Deleted", view
    return t1 - t0, time.perf_counter() - t1


async def main(n: int) -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    aws, kube = SandboxAws(), SandboxKube()
    aws.start()
    aws.set_delays(pending=0, deleting=0, deleted_visible=0)
    seed = aws.seed_default()
    kube_url = kube.start()
    tmp = Path(tempfile.mkdtemp())
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_existing_path=temporal_cli_path(),
    )
    settings = seed.settings(
        temporal_address=env.client.service_client.config.target_host,
        database_url=f"sqlite:///{tmp / 'bench.db'}",
        aws_principal_arn=seed.principal_arn,
        kube_url=kube_url,
        default_org_limit=n,
    )
    store = Store(settings.database_url)
    store.create_schema()
    client = ConnectionsClient(env.client, store, settings)
    service = seed.customer_services["allowed"]
    try:
        async with build_worker(env.client, settings):
            await one(client, "warmup", service, "w0")  # AssumeRole, caches, JIT-ish warmup
            t0 = time.perf_counter()
            serial = [await one(client, "serial", service, f"s{i}") for i in range(n)]
            t_serial = time.perf_counter() - t0
            t0 = time.perf_counter()
            parallel = await asyncio.gather(
                *(one(client, "parallel", service, f"p{i}") for i in range(n))
            )
            t_parallel = time.perf_counter() - t0
    finally:
        await env.shutdown()
        kube.stop()
        aws.stop()
    create = sorted(c for c, _ in serial)
    delete = sorted(d for _, d in serial)
    print(
        json.dumps(
            {
                "connections": n,
                "concurrent_speedup_serial_over_parallel": round(t_serial / t_parallel, 2),
                "median_delete_over_median_create": round(delete[n // 2] / create[n // 2], 2),
                "parallel_slowest_create_over_serial_median_create": round(
                    max(c for c, _ in parallel) / create[n // 2], 2
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
