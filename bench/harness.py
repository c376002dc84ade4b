"""What every scenario shares: the dev server, the sandboxes process, the RSS sampler, the
driver's Temporal client, and the helpers to start a worker with a fresh store, build the
driver's ``Settings``/``ConnectionsClient`` and wait on the store."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.store import Store
from bench.procs import (
    AwsAdmin,
    Proc,
    Sampler,
    cpu_seconds,
    free_port_pair,
    scrape,
    start_worker,
)
from settings import Settings
from starter.client import ConnectionsClient

T = TypeVar("T")
BAD_STATUSES = ("Failed", "Rejected", "Cancelled")


@dataclass
class Options:
    sizes: list[int]
    reps: int
    per_org: int
    hold_connections: int
    drift_interval: float
    guard_decisions: int
    guard_orgs: list[int]
    pending_times: list[int]
    acceptance_wait: float
    scenarios: list[str]
    history_sample: int
    out_dir: Path
    label: str
    quick: bool
    temporal_db: str = "file"


@dataclass
class Bench:
    opts: Options
    run_dir: Path
    dev: Proc
    address: str
    sandboxes: Proc
    sampler: Sampler
    client: Client
    admin: AwsAdmin
    _seq: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def sb(self) -> dict[str, Any]:
        return self.sandboxes.info

    @property
    def service(self) -> str:
        return str(self.sb["services"]["allowed"])

    @property
    def acceptance_service(self) -> str:
        return str(self.sb["services"]["acceptance_required"])

    def name(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{self._seq}"

    # ------------------------------------------------------------------ settings

    def values(self, *, temporal_address: str | None = None, database_url: str,
               metrics_port: int | None = None, **overrides: Any) -> dict[str, Any]:
        """privnet settings (as typed values) of a worker and of the driver's client."""
        env = self.sb["env"]
        values: dict[str, Any] = {
            "temporal_address": temporal_address or self.address,
            "database_url": database_url,
            "aws_region": env["PRIVNET_AWS_REGION"],
            "aws_role_arn": env["PRIVNET_AWS_ROLE_ARN"],
            "aws_endpoint_url": env["PRIVNET_AWS_ENDPOINT_URL"],
            "aws_principal_arn": env["PRIVNET_AWS_PRINCIPAL_ARN"],
            "endpoint_networks": json.loads(env["PRIVNET_ENDPOINT_NETWORKS"]),
            "kube_url": self.sb["kube_url"],
            "task_namespaces": ["tasks"],
            # "A limit high enough that none is rejected" (issue 12).
            "default_org_limit": 100_000,
            # The poll schedule follows the AWS it runs against (as the dev stack's and the
            # tests' do): the sandboxes make an endpoint available at once, so the first look
            # comes at once. The skipping timelines run production's schedule.
            "endpoint_first_poll_seconds": 0.0,
            "log_level": "INFO",
        }
        if metrics_port is not None:
            values["metrics_port"] = metrics_port
        values.update(overrides)
        return values

    def worker_env(self, values: dict[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in self.sb["env"].items() if k.startswith("AWS_")}
        for key, value in values.items():
            text = json.dumps(value) if isinstance(value, dict | list) else str(value)
            env[f"PRIVNET_{key.upper()}"] = text
        return env

    def fresh_store(self, tag: str) -> tuple[str, Store]:
        """A new SQLite store (the embedded stack's kind) migrated to head."""
        from migrations import upgrade

        path = self.run_dir / f"{tag}.db"
        url = f"sqlite:///{path}"
        store = Store(url)
        upgrade(store)
        return url, store

    @asynccontextmanager
    async def privnet_worker(
        self, tag: str, *, temporal_client: Client | None = None,
        temporal_address: str | None = None, **overrides: Any,
    ) -> AsyncIterator[Worker]:
        """The production worker in its own process, a fresh store, and the driver's
        ``ConnectionsClient`` with the same settings."""
        url, store = self.fresh_store(tag)
        port = free_port_pair()
        values = self.values(temporal_address=temporal_address, database_url=url,
                             metrics_port=port, **overrides)
        proc = await asyncio.to_thread(
            start_worker, f"worker-{tag}", "privnet", self.worker_env(values),
            self.run_dir / "logs")
        self.sampler.watch("worker", proc.pid)
        settings = Settings(**values)
        cc = ConnectionsClient(temporal_client or self.client, store, settings)
        try:
            yield Worker(proc, port, store, cc, settings)
        finally:
            self.sampler.forget("worker")
            await asyncio.to_thread(proc.stop)
            store.dispose()

    @asynccontextmanager
    async def baseline_worker(self, tag: str) -> AsyncIterator[Worker]:
        port = free_port_pair()
        env = {"PRIVNET_TEMPORAL_ADDRESS": self.address, "PRIVNET_METRICS_PORT": str(port),
               "PRIVNET_LOG_LEVEL": "INFO"}
        proc = await asyncio.to_thread(start_worker, f"worker-{tag}", "baseline", env,
                                       self.run_dir / "logs")
        self.sampler.watch("worker", proc.pid)
        try:
            yield Worker(proc, port, None, None, None)
        finally:
            self.sampler.forget("worker")
            await asyncio.to_thread(proc.stop)

    # ------------------------------------------------------------------ measuring

    def cpu(self, worker: Worker | None = None) -> dict[str, float]:
        out = {
            "dev_server": cpu_seconds(self.dev.pid),
            "sandboxes": cpu_seconds(self.sandboxes.pid),
            "driver": cpu_seconds(os.getpid()),
        }
        if worker is not None:
            out["worker"] = cpu_seconds(worker.proc.pid)
        return out

    def kube_stats(self) -> dict[str, Any]:
        from bench.procs import _get_json

        return dict(_get_json(self.sb["kube_stats_url"]))


@dataclass
class Worker:
    proc: Proc
    metrics_port: int
    store: Store | None
    cc: ConnectionsClient | None
    settings: Settings | None

    def sdk_metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port)

    def privnet_metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port + 1)

    def client(self) -> ConnectionsClient:
        assert self.cc is not None
        return self.cc

    def the_store(self) -> Store:
        assert self.store is not None
        return self.store


def per(counts: dict[str, int] | dict[str, float], n: int) -> dict[str, float]:
    return {k: round(v / n, 2) for k, v in counts.items()}


def cpu_per(after: dict[str, float], before: dict[str, float], n: int) -> dict[str, float]:
    """CPU milliseconds per item, by process."""
    return {k: round((after[k] - before[k]) * 1000 / n, 2) for k in after if k in before}


async def wait_store(store: Store, status: str, count: int, *, within: float,
                     interval: float = 0.25) -> float:
    """Poll the store until ``count`` connections are in ``status``; the monotonic time
    it saw them. A connection in a terminal failure status aborts the benchmark."""
    deadline = time.monotonic() + within
    while True:
        counts = await asyncio.to_thread(store.count_by_status)
        now = time.monotonic()
        if counts.get(status, 0) >= count:
            return now
        bad = {s: counts[s] for s in BAD_STATUSES if counts.get(s) and s != status}
        if bad:
            raise RuntimeError(f"connections ended {bad} while waiting for {status}: {counts}")
        if now > deadline:
            raise TimeoutError(f"{counts.get(status, 0)}/{count} {status} after {within:.0f}s: "
                               f"{counts}")
        await asyncio.sleep(interval)


async def wait_closed(client: Client, workflow_ids: Iterable[str], *, within: float) -> float:
    """Wait until every workflow has closed (its last tasks done), so nothing is left for
    the next scenario's worker to replay; the monotonic time they were."""
    async def one(wid: str) -> None:
        try:
            await client.get_workflow_handle(wid).result()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - closed is closed (failed or terminated too)
            pass

    async with asyncio.timeout(within):
        await asyncio.gather(*(one(w) for w in workflow_ids))
    return time.monotonic()


async def terminate_workflows(client: Client, workflow_ids: Iterable[str]) -> None:
    """Terminate what a failed run leaves running, so the next scenario's worker does not
    inherit it (sandbox resources it created stay behind; they are the sandbox's)."""
    async def one(wid: str) -> None:
        try:
            await client.get_workflow_handle(wid).terminate(reason="benchmark run failed")
        except Exception:  # noqa: BLE001 - closed already or never started
            pass

    try:
        async with asyncio.timeout(300):  # the client retries forever if the server is gone
            await gather_limited([partial(one, wid) for wid in workflow_ids], 50)
    except TimeoutError:
        pass


@asynccontextmanager
async def terminated_on_failure(client: Client, workflow_ids: Iterable[str]) -> AsyncIterator[None]:
    ids = list(workflow_ids)
    try:
        yield
    except BaseException:
        await asyncio.shield(terminate_workflows(client, ids))
        raise


async def gather_limited(factories: Iterable[Callable[[], Awaitable[T]]],
                         limit: int | None = None) -> list[T]:
    """Run every coroutine at once (``limit`` None) or at most ``limit`` at a time."""
    if limit is None:
        return list(await asyncio.gather(*(f() for f in factories)))
    sem = asyncio.Semaphore(limit)

    async def one(f: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await f()

    return list(await asyncio.gather(*(one(f) for f in factories)))


async def connect_client(address: str) -> Client:
    return await Client.connect(address, data_converter=pydantic_data_converter)
