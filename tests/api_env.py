"""One real privnet behind the HTTP API for a test module: the session Temporal dev server,
a worker from ``worker.build_worker`` with the real activities, sandbox AWS and sandbox
Kubernetes over HTTP, and a SQLite store. Also snapshots of everything a request could
change, so a test can prove that a refused request changed nothing."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment

from sandbox.aws import SandboxAws, SandboxSeed
from sandbox.kube import SandboxKube
from settings import Settings
from starter.api import create_app
from starter.client import ConnectionsClient
from tests.wfutil import SANDBOX_PENDING, SANDBOX_POLL_SETTINGS


@dataclass
class ApiEnv:
    http: httpx.AsyncClient  # no Authorization header: pass one per request
    client: ConnectionsClient
    seed: SandboxSeed
    aws: SandboxAws
    kube: SandboxKube
    settings: Settings
    store: Any


@asynccontextmanager
async def api_env(
    temporal_env: WorkflowEnvironment,
    tmp: Path,
    tokens: Any,
    configure: Callable[[SandboxSeed], dict[str, Any]] | None = None,
    **overrides: Any,
) -> AsyncIterator[ApiEnv]:
    from activities.store import Store
    from worker import build_worker

    aws = SandboxAws()
    aws.start()
    aws.set_delays(pending=SANDBOX_PENDING, deleting=0.2, deleted_visible=0.2)
    seed = aws.seed_default("us-east-1", "us-west-2")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    kube = SandboxKube()
    kube_url = kube.start()
    values: dict[str, Any] = {
        "temporal_address": temporal_env.client.service_client.config.target_host,
        "task_queue": "edge-" + uuid.uuid4().hex[:8],
        "database_url": f"sqlite:///{tmp / 'privnet.db'}",
        "aws_principal_arn": seed.principal_arn,
        "kube_url": kube_url,
        "task_namespaces": ["tasks"],
        "api_tokens": tokens,
        **SANDBOX_POLL_SETTINGS,
    }
    values.update(overrides)
    if configure is not None:
        values.update(configure(seed))
    settings = seed.settings(**values)
    store = Store(settings.database_url)
    store.create_schema()
    cc = ConnectionsClient(temporal_env.client, store, settings)

    async def factory(_: Settings) -> ConnectionsClient:
        return cc

    app = create_app(settings, factory)
    worker = build_worker(temporal_env.client, settings)
    try:
        async with worker:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://privnet") as http:
                yield ApiEnv(http, cc, seed, aws, kube, settings, store)
    finally:
        kube.stop()
        aws.stop()


REPO = Path(__file__).resolve().parent.parent


async def run_cli(env: ApiEnv, *args: str) -> tuple[int, str, str]:
    """``python -m starter.cli ARGS`` against this env (asynchronously: the worker runs in
    this event loop). Returns (exit code, stdout, stderr)."""
    s = env.settings
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVNET_")}
    proc_env.update(
        PYTHONPATH=str(REPO),
        PRIVNET_TEMPORAL_ADDRESS=s.temporal_address,
        PRIVNET_TASK_QUEUE=s.task_queue,
        PRIVNET_DATABASE_URL=s.database_url,
        PRIVNET_AWS_REGION=s.aws_region,
        PRIVNET_ENDPOINT_NETWORKS=json.dumps(
            {r: n.model_dump() for r, n in s.endpoint_networks.items()}
        ),
        PRIVNET_KUBE_URL=s.kube_url or "",
        PRIVNET_TASK_NAMESPACES=json.dumps(s.task_namespaces),
        PRIVNET_SWEEP_INTERVAL_SECONDS=str(s.sweep_interval_seconds),
        PRIVNET_SWEEP_GRACE_SECONDS=str(s.sweep_grace_seconds),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starter.cli", *args,
        cwd=str(REPO / "tests"), env=proc_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def snapshot(env: ApiEnv) -> dict[str, Any]:
    """Everything a request could have changed, read from the sandboxes and the store."""
    endpoints = {}
    for region in (env.seed.region, env.seed.other_region):
        ec2 = env.aws.client("ec2", region, env.seed.endpoints_account_id)
        endpoints[region] = sorted(
            (e["VpcEndpointId"], e["State"]) for e in ec2.describe_vpc_endpoints()["VpcEndpoints"]
        )
    workflows = [
        wf.id
        async for wf in env.client.temporal.list_workflows(
            f'TaskQueue="{env.settings.task_queue}"'
        )
    ]
    return {
        "rows": [v.model_dump(mode="json") for v in env.store.list()],
        "endpoints": endpoints,
        "kube": env.kube.objects,
        "workflows": sorted(workflows),
        "kube_writes": env.kube.write_count,
    }
