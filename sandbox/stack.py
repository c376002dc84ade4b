"""The embedded default stack: ``privnet dev up``, ``privnet demo`` and the e2e tests.

One foreground process owns everything it starts:

* the Temporal dev server (``temporal server start-dev``), persisted to
  ``DIR/temporal.db`` and serving the Web UI, with privnet's search attributes;
* sandbox AWS (moto extended for PrivateLink) and sandbox Kubernetes (Cilium CRDs), in
  threads of this process; their state is snapshotted to ``DIR`` so a restart with the
  same data dir keeps the endpoints and policies of running connections (sandbox
  Kubernetes keeps their uids and resourceVersions too, sandbox AWS its history of every
  endpoint created and deleted, served under ``aws_endpoint_url``/_privnet/);
* the cluster baseline policy, applied to sandbox Kubernetes at start by the same code as
  ``privnet bootstrap``, and ``DIR/kubeconfig`` (its path in ``stack.json`` as
  ``kubeconfig``), so ``kubectl --kubeconfig DIR/kubeconfig get cnp -A`` works as is;
* the SQLite store ``DIR/privnet.db``;
* the worker (``privnet worker``) and the HTTP API (``privnet api``) as subprocesses,
  each in its own process group, with the stack's ``PRIVNET_*`` environment.

When everything answers, ``DIR/stack.json`` is written (see DESIGN.md, "Contracts").
SIGINT/SIGTERM stop everything (process groups) and remove ``stack.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from sandbox.binaries import temporal_cli_path
from workflows.contracts import SEARCH_ATTRIBUTES

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REGION = "us-east-1"
AWS_STATE = "aws-state.pickle"  # sandbox AWS (moto) state, kept across restarts
AWS_SEED = "aws-seed.json"  # the accounts, networks and services it was seeded with
OTHER_REGION = "us-west-2"
STACK_KEYS = (
    "temporal_address",
    "ui_url",
    "api_url",
    "api_token",
    "aws_endpoint_url",
    "kube_url",
    "database_url",
    "endpoints_account_id",
    "customer_account_id",
    "region",
    "task_namespaces",
    "customer_services",
    "kubeconfig",
    "env",
)
TASK_NAMESPACES = ["tasks"]
KUBE_STATE = "kube-state.json"  # sandbox Kubernetes objects, kept across restarts
# Short sandbox timings so the demo reaches Active in seconds.
SANDBOX_DELAYS: dict[str, float] = {"pending": 1.0, "deleting": 0.5, "deleted_visible": 0.5}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_tcp(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback only
            return 200 <= resp.status < 500
    except OSError:
        return False


class Stack:
    """The embedded stack. ``start()`` returns the stack document; ``stop()`` ends it."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = ".privnet",
        *,
        worker: bool = True,
        api: bool = True,
        log: Any = None,
        database_url: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.database_url = database_url  # None: SQLite in the data directory
        self.with_worker = worker
        self.with_api = api
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.aws: Any = None
        self.kube: Any = None
        self.info: dict[str, Any] = {}
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._snap_stop = threading.Event()
        self._aws_requests_snapshotted = -1
        self._snap_thread: threading.Thread | None = None
        self._stopped = False

    # ------------------------------------------------------------------ paths

    @property
    def stack_file(self) -> Path:
        return self.data_dir / "stack.json"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "kubeconfig"

    def _api_token(self) -> str:
        path = self.data_dir / "api-token"
        if path.exists():
            return path.read_text().strip()
        token = secrets.token_urlsafe(24)
        path.write_text(token)
        path.chmod(0o600)
        return token

    # ------------------------------------------------------------------ start

    def start(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.stack_file.unlink()
        try:
            return self._start(t0)
        except BaseException:
            self.stop()
            raise

    def _start(self, t0: float) -> dict[str, Any]:
        temporal_port, ui_port = free_port(), free_port()
        self._start_temporal(temporal_port, ui_port)
        aws_url, seed = self._start_aws()
        task_namespaces = list(TASK_NAMESPACES)
        kube_url = self._start_kube(task_namespaces)
        _wait_tcp(temporal_port, 60, self.procs["temporal"])
        self._wait_temporal(f"127.0.0.1:{temporal_port}")

        database_url = self.database_url or f"sqlite:///{self.data_dir / 'privnet.db'}"
        from activities.store import Store
        from migrations import upgrade

        store = Store(database_url)
        upgrade(store)  # the worker and API find the schema at head
        store.dispose()

        api_port = free_port()
        token = self._api_token()
        ui_url = f"http://127.0.0.1:{ui_port}"
        env = {
            "PRIVNET_TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
            "PRIVNET_TEMPORAL_NAMESPACE": "default",
            "PRIVNET_TEMPORAL_UI_URL": ui_url,
            "PRIVNET_TASK_QUEUE": "privnet",
            "PRIVNET_DATABASE_URL": database_url,
            **seed.env(),  # PRIVNET_AWS_*, PRIVNET_ENDPOINT_NETWORKS and AWS_* credentials
            "PRIVNET_KUBE_URL": kube_url,
            "PRIVNET_TASK_NAMESPACES": json.dumps(task_namespaces),
            "PRIVNET_API_TOKENS": json.dumps([token]),
            "PRIVNET_API_HOST": "127.0.0.1",
            "PRIVNET_API_PORT": str(api_port),
            # The sandbox makes endpoints available in SANDBOX_DELAYS["pending"] seconds,
            # not AWS's 30-150: the poll schedule follows.
            "PRIVNET_ENDPOINT_FIRST_POLL_SECONDS": str(SANDBOX_DELAYS["pending"]),
            "PRIVNET_ENDPOINT_POLL_INTERVAL_SECONDS": str(SANDBOX_DELAYS["pending"]),
        }
        if self.with_worker:
            self._spawn("worker", ["worker"], env)
        if self.with_api:
            self._spawn("api", ["api"], env)
        api_url = f"http://127.0.0.1:{api_port}"
        if self.with_api:
            self._wait_http(f"{api_url}/healthz", "api", 60)
        if self.with_worker:
            self._wait_worker(env["PRIVNET_TEMPORAL_ADDRESS"], 60)

        services = dict(seed.customer_services)
        self.info = {
            "temporal_address": env["PRIVNET_TEMPORAL_ADDRESS"],
            "ui_url": ui_url,
            "api_url": api_url,
            "api_token": token,
            # Also serves sandbox AWS's controls and ground truth under /_privnet/
            # (sandbox/aws/admin.py): faults, lag, quota, clock, accept/reject, history.
            "aws_endpoint_url": aws_url,
            "kube_url": kube_url,
            "database_url": database_url,
            "endpoints_account_id": seed.endpoints_account_id,
            "customer_account_id": seed.customer_account_id,
            "region": seed.region,
            "task_namespaces": task_namespaces,
            "customer_services": {
                k: services[k]
                for k in ("allowed", "not_allowed", "acceptance_required", "other_region")
            },
            "kubeconfig": str(self.kubeconfig),
            "env": env,
        }
        tmp = self.stack_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.info, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(self.stack_file)
        self._log(f"stack up in {time.monotonic() - t0:.1f}s: {self.stack_file}")
        return self.info

    def _start_temporal(self, port: int, ui_port: int) -> None:
        cmd = [
            temporal_cli_path(),
            "server",
            "start-dev",
            "--db-filename",
            str(self.data_dir / "temporal.db"),
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--ui-port",
            str(ui_port),
            "--ui-disable-news-fetch",
            "--log-level",
            "warn",
        ]
        for key in SEARCH_ATTRIBUTES:
            cmd += ["--search-attribute", f"{key.name}=Keyword"]
        self._popen("temporal", cmd, dict(os.environ))

    def _wait_temporal(self, address: str) -> None:
        import asyncio

        from temporalio.client import Client

        async def ping() -> None:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client = await Client.connect(address)
                    await client.count_workflows()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

        asyncio.run(ping())

    def _wait_worker(self, address: str, timeout: float) -> None:
        import asyncio

        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
        from temporalio.client import Client

        async def pollers() -> None:
            client = await Client.connect(address)
            deadline = time.monotonic() + timeout
            while True:
                proc = self.procs.get("worker")
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(
                        f"the worker exited with {proc.returncode}: see {self.logs / 'worker.log'}"
                    )
                resp = await client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace="default",
                        task_queue=TaskQueue(name="privnet"),
                        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                    )
                )
                if resp.pollers:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError("the worker did not poll the task queue in time")
                await asyncio.sleep(0.1)

        asyncio.run(pollers())

    def _wait_http(self, url: str, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not _http_ok(url):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}: see {self.logs / (name + '.log')}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer in {timeout}s")
            time.sleep(0.05)

    def _start_aws(self) -> tuple[str, Any]:
        from sandbox.aws import SandboxAws, SandboxSeed

        self.aws = _make_sandbox_aws(SandboxAws, self.data_dir)
        url = self.aws.start()
        state, seed_file = self.data_dir / AWS_STATE, self.data_dir / AWS_SEED
        if state.exists() and seed_file.exists():
            # Same accounts, services and endpoints as before the restart.
            self.aws.restore(state)
            seed = SandboxSeed.model_validate_json(seed_file.read_text())
            seed = seed.model_copy(update={"endpoint_url": url})
        else:
            # Two endpoint VPCs per region: AWS's default quota of 50 interface endpoints
            # per VPC, and privnet moving on to the next VPC, as in production.
            seed = self.aws.seed_default(DEFAULT_REGION, OTHER_REGION, vpcs_per_region=2)
            self.aws.snapshot(state)
        seed_file.write_text(seed.model_dump_json(indent=2))
        return url, seed

    def _start_kube(self, task_namespaces: list[str]) -> str:
        from sandbox.kube import DEFAULT_NAMESPACES, SandboxKube

        self.kube = SandboxKube([*DEFAULT_NAMESPACES, *task_namespaces])
        snap = self.data_dir / KUBE_STATE
        if snap.exists():
            try:
                self.kube.restore(json.loads(snap.read_text()))
            except (ValueError, KeyError, TypeError, OSError) as err:
                self._log(f"sandbox kube: ignoring an unreadable {snap} ({err})")
        url = str(self.kube.start())
        self._apply_baseline(url, task_namespaces)
        write_kubeconfig(self.kubeconfig, url, task_namespaces[0])
        self._snap_thread = threading.Thread(target=self._snapshot_loop, daemon=True)
        self._snap_thread.start()
        return url

    def _apply_baseline(self, kube_url: str, task_namespaces: list[str]) -> None:
        """The isolation world is complete from the start: what ``privnet bootstrap``
        applies, through the same activities code, over HTTP."""
        from kubernetes import client

        from activities.kubernetes import KubernetesActivities

        api_client = client.ApiClient(client.Configuration(host=kube_url))
        try:
            wrote = KubernetesActivities(api_client, task_namespaces).apply_baseline()
        finally:
            api_client.close()
        self._log(f"sandbox kube: cluster baseline {'applied' if wrote else 'up to date'} "
                  f"(task namespaces {', '.join(task_namespaces)})")

    def _snapshot(self) -> None:
        if self.kube is not None:
            tmp = self.data_dir / f"{KUBE_STATE}.tmp"
            tmp.write_text(json.dumps(self.kube.snapshot()))
            tmp.replace(self.data_dir / KUBE_STATE)
        if self.aws is not None:
            seen = sum(self.aws.requests.values())
            if seen != self._aws_requests_snapshotted:  # only when AWS was called since
                self.aws.snapshot(self.data_dir / AWS_STATE)
                self._aws_requests_snapshotted = seen

    def _snapshot_loop(self) -> None:
        while not self._snap_stop.wait(1.0):
            with contextlib.suppress(Exception):
                self._snapshot()

    def _popen(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            self.procs[name] = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(self.data_dir),
                start_new_session=True,  # own process group: stop() signals the group
            )
        finally:
            log.close()

    def _spawn(self, name: str, args: list[str], stack_env: dict[str, str]) -> None:
        env = dict(os.environ)
        env.update(stack_env)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._popen(name, [sys.executable, "-m", "starter.cli", *args], env)

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for path in (self.stack_file, self.kubeconfig):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        # Worker and API first (they talk to the rest), Temporal last.
        order = [n for n in ("api", "worker") if n in self.procs] + [
            n for n in self.procs if n not in ("api", "worker")
        ]
        for name in order:
            _terminate(self.procs[name])
        self._snap_stop.set()
        with contextlib.suppress(Exception):
            self._snapshot()
        for sandbox in (self.kube, self.aws):
            if sandbox is not None:
                with contextlib.suppress(Exception):
                    sandbox.stop()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def write_kubeconfig(path: Path, server: str, namespace: str = "default") -> None:
    """A kubeconfig for sandbox Kubernetes (plain HTTP, no credentials), as the only
    context, so ``kubectl --kubeconfig PATH`` needs no other flag."""
    import yaml

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "privnet-sandbox",
        "clusters": [{"name": "privnet-sandbox", "cluster": {"server": server}}],
        "users": [{"name": "privnet-sandbox", "user": {}}],
        "contexts": [{"name": "privnet-sandbox", "context": {
            "cluster": "privnet-sandbox", "user": "privnet-sandbox", "namespace": namespace}}],
        "preferences": {},
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)


def _make_sandbox_aws(cls: Any, data_dir: Path) -> Any:
    aws = cls()
    aws.set_delays(**SANDBOX_DELAYS)
    return aws


# ---------------------------------------------------------------------- foreground


def _wait_for_signal() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()


def print_summary(info: dict[str, Any]) -> None:
    print(
        "\n".join(
            [
                "privnet stack is up",
                f"  Temporal     {info['temporal_address']}",
                f"  Temporal UI  {info['ui_url']}",
                f"  HTTP API     {info['api_url']}  (Authorization: Bearer {info['api_token']})",
                f"  API docs     {info['api_url']}/docs",
                f"  sandbox AWS  {info['aws_endpoint_url']}",
                f"  sandbox kube {info['kube_url']}  "
                f"(kubectl --kubeconfig {info['kubeconfig']} get cnp -A)",
                f"  store        {info['database_url']}",
                "  customer services (sandbox):",
                *[f"    {k:<20} {v}" for k, v in info["customer_services"].items()],
                "Try:",
                f"  privnet create --org acme --service-name "
                f"{info['customer_services']['allowed']} --wait",
                "Ctrl-C stops everything.",
            ]
        ),
        flush=True,
    )


def run_foreground(data_dir: str = ".privnet", worker: bool = True, as_json: bool = False) -> int:
    stack = Stack(data_dir, worker=worker)
    # Signals during start-up must still stop what was started.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        info = stack.start()
        if as_json:
            print(json.dumps(info), flush=True)
        else:
            print_summary(info)
        _wait_for_signal()
    except KeyboardInterrupt:
        pass
    except Exception as err:
        print(f"privnet: the stack did not start: {err} (logs in {stack.logs})", file=sys.stderr)
        stack.stop()
        return 1
    finally:
        stack.stop()
    return 0


# ---------------------------------------------------------------------- demo


def run_demo(data_dir: str | None = None, once: bool = False, as_json: bool = False) -> int:
    import asyncio
    import tempfile

    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="privnet-demo-")
        data_dir = tmp.name
    stack = Stack(data_dir)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    t0 = time.monotonic()
    try:
        info = stack.start()
        print_summary(info)
        for key, value in info["env"].items():
            os.environ[key] = value
        code = asyncio.run(_demo_connection(info, t0))
        if code != 0 or once:
            return code
        print("\nThe stack keeps running; Ctrl-C stops it.", flush=True)
        _wait_for_signal()
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        print(f"privnet demo: {err} (logs in {stack.logs})", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.cleanup()


async def _demo_connection(info: dict[str, Any], t0: float) -> int:
    from settings import Settings
    from starter.client import ConnectionsClient

    settings = Settings()  # type: ignore[call-arg]
    client = await ConnectionsClient.connect(settings)
    org = "acme"
    service = info["customer_services"]["allowed"]
    print(f"\n$ privnet create --org {org} --service-name {service} --wait", flush=True)
    view = await client.create(org, service, display_name="orders database", ports=[5432])
    t_create = time.monotonic()
    async for v in client.watch(org, view.connection_id, until={"Active"}):
        extra = f"  {v.reason}: {v.message}" if v.reason else ""
        print(f"  {time.monotonic() - t_create:5.1f}s  {v.status}{extra}", flush=True)
        view = v
    if view.status != "Active":
        print(f"the demo connection ended {view.status}: {view.message}", file=sys.stderr)
        return 1
    view = await client.get(org, view.connection_id)
    print(f"\nActive {time.monotonic() - t_create:.1f}s after create "
          f"({time.monotonic() - t0:.1f}s after start)")
    print(f"  endpoint  {view.vpc_endpoint_id}")
    print(f"  ips       {', '.join(view.ips)}")
    if view.dns_names:
        print(f"  dns       {view.dns_names[0]}")
    print("\nRendered CiliumNetworkPolicy:")
    try:
        print(await _rendered_policy(settings, org, view.connection_id))
    except Exception as err:  # the demo still succeeded; say why the policy is not shown
        print(f"  (could not read the policy: {err})")
    print(f"\nTemporal UI: {client.workflow_url(view.workflow_id or '')}", flush=True)
    return 0


async def _rendered_policy(settings: Any, org: str, connection_id: str) -> str:
    import asyncio
    import inspect

    import yaml

    from activities.kubernetes import KubernetesActivities

    kube = KubernetesActivities.from_settings(settings)
    result = await asyncio.to_thread(kube.list_policies, org)
    if inspect.isawaitable(result):
        result = await result
    from workflows.contracts import policy_name

    wanted = policy_name(org, connection_id)
    docs = []
    for body in result or []:
        meta = body.get("metadata") or {}
        if meta.get("name") == wanted:
            for k in ("uid", "resourceVersion", "creationTimestamp", "generation",
                      "managedFields"):
                meta.pop(k, None)
            docs.append(body)
    return str(yaml.safe_dump_all(docs, sort_keys=False)).rstrip()


def main() -> None:  # python -m sandbox.stack [DIR]
    sys.exit(run_foreground(sys.argv[1] if len(sys.argv) > 1 else ".privnet"))


if __name__ == "__main__":
    main()
