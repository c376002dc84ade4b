"""The real pieces for durability tests: sandbox AWS and sandbox Kubernetes served over HTTP
in this process, a SQLite store file, and the real ``worker.py`` run as a subprocess against
them (so it can be SIGKILLed). Assertions read the truth from the sandboxes (sandbox AWS's
inventory and history of creations, the objects sandbox Kubernetes stored) and the store, never from the code under
test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client

from activities.store import Store
from sandbox.aws import ENDPOINTS_ACCOUNT_ID, SandboxAws, SandboxSeed
from sandbox.kube import SandboxKube
from settings import Settings
from tests.wfutil import SANDBOX_PENDING, SANDBOX_POLL_SETTINGS, fast_options
from workflows.contracts import CURRENT_RELEASE, ConnectionInput

ROOT = Path(__file__).resolve().parents[1]
NAMESPACES = ["tasks", "batch"]
TAG_ORG = "privnet.dev/org-id"
TAG_CONN = "privnet.dev/connection-id"


@dataclass
class RealWorld:
    aws: SandboxAws
    seed: SandboxSeed
    kube: SandboxKube
    kube_url: str
    store_url: str
    temporal_address: str
    task_queue: str
    tmp: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return Store(self.store_url)

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "temporal_address": self.temporal_address,
            "task_queue": self.task_queue,
            "database_url": self.store_url,
            "aws_principal_arn": self.seed.principal_arn,
            "kube_url": self.kube_url,
            "task_namespaces": NAMESPACES,
            **SANDBOX_POLL_SETTINGS,
        }
        values.update(overrides)
        return self.seed.settings(**values)

    @asynccontextmanager
    async def worker(self, client: Client, **overrides: Any) -> AsyncIterator[Settings]:
        """The real worker (every real activity) in this process, on the world's queue."""
        from worker import build_worker

        settings = self.settings(**overrides)
        async with build_worker(client, settings):
            yield settings

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVNET_")}
        env.update(self.seed.env())
        env.update(
            {
                "PRIVNET_TEMPORAL_ADDRESS": self.temporal_address,
                "PRIVNET_TASK_QUEUE": self.task_queue,
                "PRIVNET_DATABASE_URL": self.store_url,
                "PRIVNET_KUBE_URL": self.kube_url,
                "PRIVNET_TASK_NAMESPACES": json.dumps(NAMESPACES),
                "PRIVNET_LOG_LEVEL": "INFO",
            }
        )
        env.update(extra)
        return env

    def spawn_worker(
        self, failpoints: list[dict[str, str]] | None = None, *, name: str = "worker"
    ) -> subprocess.Popen[bytes]:
        """Run the real ``worker.py``; returns once it polls the task queue."""
        log = self.tmp / f"{name}-{uuid.uuid4().hex[:6]}.log"
        extra: dict[str, str] = {}
        if failpoints:
            extra["PRIVNET_FAILPOINTS"] = json.dumps(failpoints)
            extra["PRIVNET_FAILPOINT_LOG"] = str(self.failpoint_log)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "worker.py")],
                cwd=ROOT,
                env=self.env(**extra),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers.append(proc)
        deadline = time.monotonic() + 60
        while b"worker started" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        return proc

    @property
    def failpoint_log(self) -> Path:
        return self.tmp / "failpoints.log"

    def failpoints_hit(self) -> list[str]:
        path = self.failpoint_log
        return path.read_text().splitlines() if path.exists() else []

    def wait_failpoints(self, expected: set[tuple[str, str]], within: float = 90) -> None:
        """Until every (activity, connection id) in ``expected`` holds a worker."""
        deadline = time.monotonic() + within
        while True:
            hit = {tuple(line.split()[::2]) for line in self.failpoints_hit()}
            if expected <= hit:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"failpoints never reached: {sorted(expected - hit)}")
            time.sleep(0.05)

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                self.kill(proc)
        self.workers.clear()

    # ------------------------------------------------------------------ ground truth

    def ec2(self, region: str | None = None) -> Any:
        return self.aws.client("ec2", region or self.seed.region, ENDPOINTS_ACCOUNT_ID)

    def created(self, org: str, conn: str) -> list[str]:
        """Every endpoint ever created for this connection (the sandbox's own history)."""
        return [
            e["vpc_endpoint_id"]
            for e in self.aws.history()
            if e["event"] == "created" and (e["org_id"], e["connection_id"]) == (org, conn)
        ]

    def live_endpoints(self, org: str, conn: str) -> list[dict[str, Any]]:
        """The connection's endpoints AWS holds now, not deleted (the sandbox's inventory:
        neither faults nor eventual-consistency lag hide anything from it)."""
        return [
            row
            for row in self.aws.inventory()
            if row["tags"].get(TAG_ORG) == org
            and row["tags"].get(TAG_CONN) == conn
            and str(row["state"]).lower() not in ("deleted", "deleting")
        ]

    def policies(self, org: str, conn: str) -> list[dict[str, Any]]:
        """The CiliumNetworkPolicies sandbox Kubernetes stores for this connection."""
        return [
            p
            for p in self.kube.policies()
            if (p["metadata"].get("labels") or {}).get(TAG_ORG) == org
            and (p["metadata"].get("labels") or {}).get(TAG_CONN) == conn
        ]


def policy_ips(policy: dict[str, Any]) -> list[str]:
    cidrs = [c for rule in policy["spec"].get("egress", []) for c in rule.get("toCIDR", [])]
    return sorted(c.removesuffix("/32") for c in cidrs)


def real_input(world: RealWorld, org: str, conn: str, service: str, **opts: Any) -> ConnectionInput:
    """A connection as the starter makes it, with test-speed timings (a dead worker's
    attempt is retried after ``step_timeout``)."""
    base: dict[str, Any] = {"step_timeout": timedelta(seconds=4), "visibility_window": timedelta(0)}
    base.update(opts)
    return ConnectionInput(
        org_id=org,
        connection_id=conn,
        endpoint_service_name=service,
        region=world.seed.region,
        options=fast_options(**base),
        release=CURRENT_RELEASE,
    )


def make_world(temporal_address: str, tmp: Path) -> Iterator[RealWorld]:
    """Start the sandboxes; yield the world; stop workers and sandboxes."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # in-process workers
        os.environ.setdefault(key, "testing")
    aws = SandboxAws()
    aws.start()
    aws.set_delays(pending=SANDBOX_PENDING, deleting=0.3, deleted_visible=0.5)
    seed = aws.seed_default("us-east-1", "us-west-2")
    kube = SandboxKube(NAMESPACES)
    kube_url = kube.start()
    store_url = f"sqlite:///{tmp / 'store.db'}"
    Store(store_url).create_schema()
    world = RealWorld(
        aws=aws,
        seed=seed,
        kube=kube,
        kube_url=kube_url,
        store_url=store_url,
        temporal_address=temporal_address,
        task_queue="real-" + uuid.uuid4().hex[:8],
        tmp=tmp,
    )
    try:
        yield world
    finally:
        world.stop_workers()
        kube.stop()
        aws.stop()
