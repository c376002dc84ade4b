"""The privnet worker: registers every workflow and activity on the task queue.

Clients (boto3, kubernetes, SQLAlchemy, Temporal) are built once from settings and
injected into the activity classes; sync activities run in a thread pool. Logs are
structlog JSON bound with workflow id / activity / org / connection; SDK and privnet
metrics are served for Prometheus when ``PRIVNET_METRICS_PORT`` is set. SIGTERM and
SIGINT shut the worker down cleanly (running activities finish or are cancelled).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import CodeType
from typing import Any

import structlog
import temporalio.bridge.worker
from temporalio import activity
from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, WorkflowSerializationContext
from temporalio.converter._extstore import StorageOperationMetrics
from temporalio.exceptions import ApplicationError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
    WorkflowInstance,
    WorkflowInstanceDetails,
)
from temporalio.worker._workflow import _CommandAwareDataConverter
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
from temporalio.worker.workflow_sandbox._runner import _Instance as _SandboxInstance

from settings import Settings, get_settings
from workflows.connection import PrivateConnectionWorkflow
from workflows.contracts import LOCAL_ACTIVITY_DEADLINE
from workflows.org_guard import OrgGuardWorkflow
from workflows.preflight import PreflightWorkflow, SetupFactsWorkflow
from workflows.sweeper import SweepWorkflow

log = structlog.get_logger("privnet.worker")

WORKFLOWS: list[type] = [
    PrivateConnectionWorkflow,
    OrgGuardWorkflow,
    PreflightWorkflow,
    SetupFactsWorkflow,
    SweepWorkflow,
]


def configure_logging(level: str = "INFO") -> None:
    """JSON logs on stderr; stdlib loggers (temporalio, botocore) go through structlog too."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("botocore").setLevel(logging.WARNING)


class _BindLogContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        arg = input.args[0] if input.args else None
        with structlog.contextvars.bound_contextvars(
            workflow_id=info.workflow_id,
            activity=info.activity_type,
            attempt=info.attempt,
            org_id=getattr(arg, "org_id", None),
            connection_id=getattr(arg, "connection_id", None),
        ):
            return await super().execute_activity(input)


class LogContextInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _BindLogContext(next)


class _LocalDeadline(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        limit = info.schedule_to_close_timeout
        if info.is_local and limit and info.attempt > 1:
            deadline = info.scheduled_time + limit
            if datetime.now(UTC) >= deadline:
                raise ApplicationError(
                    f"{info.activity_type} did not succeed within its {limit} deadline "
                    f"({info.attempt - 1} attempts)",
                    type=LOCAL_ACTIVITY_DEADLINE,
                    non_retryable=True,
                )
        return await super().execute_activity(input)


class LocalActivityDeadline(Interceptor):
    """Ends a local activity's retries at its schedule-to-close deadline. The SDK (1.35)
    enforces that deadline while an attempt runs and across retries that wait on a workflow
    timer, but not across the retries that wait inside the workflow task (backoffs up to the
    local retry threshold, 1 min by default): when it passes during one of those backoffs,
    the local activity is retried forever (tests/test_local_activity_deadline.py shows it).
    Those retries keep the original schedule time, so one that starts past the deadline
    fails here instead, non-retryable, and the workflow sees the step's deadline as with an
    activity."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _LocalDeadline(next)


class _Failpoint(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, points: Failpoints) -> None:
        super().__init__(next)
        self._points = points

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        arg = input.args[0] if input.args else None
        name = activity.info().activity_type
        if self._points.matches(name, "before", arg):
            await self._points.hold(name, "before", arg)
        result = await super().execute_activity(input)
        if self._points.matches(name, "after", arg):
            await self._points.hold(name, "after", arg)
        return result


class Failpoints(Interceptor):
    """Crash tests only (``PRIVNET_FAILPOINTS``): an activity matching a point blocks before
    its body or after it (its side effect done, its completion not yet reported) and the
    hit is appended to ``PRIVNET_FAILPOINT_LOG``, so a test can SIGKILL this very process at
    the worst moment and prove a new worker finishes the job exactly once."""

    def __init__(self, points: Sequence[dict[str, str]], log_path: str | None) -> None:
        self._points = list(points)
        self._log = Path(log_path) if log_path else None

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Failpoint(next, self)

    def matches(self, name: str, phase: str, arg: Any) -> bool:
        for p in self._points:
            if p.get("activity") != name or p.get("phase", "after") != phase:
                continue
            if "connection_id" in p and getattr(arg, "connection_id", None) != p["connection_id"]:
                continue
            if "status" in p and str(getattr(arg, "status", "")) != p["status"]:
                continue
            return True
        return False

    async def hold(self, name: str, phase: str, arg: Any) -> None:
        if self._log is not None:
            line = f"{name} {phase} {getattr(arg, 'connection_id', '-')}\n"
            await asyncio.to_thread(_append, self._log, line)
        log.warning("failpoint reached; holding until killed", activity=name, phase=phase)
        await asyncio.Event().wait()


def _append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def runtime_for(settings: Settings) -> Runtime | None:
    if settings.metrics_port is None:
        return None
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(bind_address=f"0.0.0.0:{settings.metrics_port}")
        )
    )


async def connect_patiently(
    settings: Settings, runtime: Runtime | None = None, within: float | None = None
) -> Client:
    """The worker's connect: a worker started while Temporal restarts (a rollout, a crash
    loop) waits for it instead of exiting (found by the soak: a worker restarted during a
    dev server restart died with "Connection refused")."""
    deadline = time.monotonic() + (
        settings.temporal_connect_timeout_seconds if within is None else within
    )
    delay = 0.5
    while True:
        try:
            return await connect(settings, runtime)
        except RuntimeError as err:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("waiting for Temporal", address=settings.temporal_address,
                        error=str(err)[:200], retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def tls_config(settings: Settings) -> bool | TLSConfig:
    """mTLS for a self-hosted cluster, TLS for Temporal Cloud API keys, else plaintext."""
    if settings.temporal_tls_cert and settings.temporal_tls_key:
        return TLSConfig(
            client_cert=Path(settings.temporal_tls_cert).read_bytes(),
            client_private_key=Path(settings.temporal_tls_key).read_bytes(),
        )
    return bool(settings.temporal_api_key)


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """A Temporal client for a local server, a self-hosted cluster (mTLS) or Temporal Cloud."""
    tls = tls_config(settings)
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        api_key=settings.temporal_api_key,
        tls=tls,
        data_converter=pydantic_data_converter,
        runtime=runtime,
    )


def activities_of(*objects: object) -> list[Callable[..., Any]]:
    """Every ``@activity.defn`` method of the given activity-class instances."""
    found: list[Callable[..., Any]] = []
    for obj in objects:
        for name in dir(type(obj)):
            attr = getattr(type(obj), name, None)
            if callable(attr) and hasattr(attr, "__temporal_activity_definition"):
                found.append(getattr(obj, name))
    return found


def real_activities(client: Client, settings: Settings) -> list[object]:
    """The production activity classes, built from settings."""
    from activities.aws import AwsActivities
    from activities.guard import GuardActivities
    from activities.kubernetes import KubernetesActivities
    from activities.preflight import PreflightActivities
    from activities.store import OrgSlotActivities, Store, StoreActivities, record_checked
    from activities.sweeper import SweeperActivities
    from migrations import prepare_store

    store = Store.from_settings(settings)
    prepare_store(settings, store)
    write = functools.partial(record_checked, store)  # statuses steps pass through
    return [
        AwsActivities(settings, status_writer=write),
        KubernetesActivities.from_settings(settings, status_writer=write),
        StoreActivities(store),
        OrgSlotActivities(store),
        GuardActivities(client, settings.guard_queue, settings.guard_leak_check_interval_seconds),
        PreflightActivities(settings, store),
        SweeperActivities(settings, store, client),
    ]


class Workers:
    """The worker process's Temporal workers, started and stopped together: connections on
    the task queue, org guards on their own queue (``Settings.guard_queue``), so a guard's
    decisions never wait behind hundreds of connection tasks and guards stay out of the
    connections' sticky cache."""

    def __init__(self, workers: Sequence[Worker]) -> None:
        self.workers = list(workers)

    async def __aenter__(self) -> Workers:
        started: list[Worker] = []
        try:
            for w in self.workers:
                await w.__aenter__()
                started.append(w)
        except BaseException:
            for w in reversed(started):
                await w.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for w in reversed(self.workers):
            await w.__aexit__(*exc)


@functools.lru_cache(maxsize=64)
def _compiled(code: str) -> CodeType:
    return compile(code, "<string>", "exec")


class _CompiledOnceInstance(_SandboxInstance):
    """The SDK's sandboxed instance, its few fixed snippets compiled once: it ``exec``s a
    source string for every activation and every payload's serialization context, which
    compiles it each time (10.6% of the bench worker's GIL time at N=200, py-spy)."""

    def _run_code(self, code: str, **extra_globals: Any) -> None:
        super()._run_code(_compiled(code), **extra_globals)  # type: ignore[arg-type]


class CompiledOnceSandboxedRunner(SandboxedWorkflowRunner):
    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _CompiledOnceInstance(det, self.runner_class, self.restrictions)


# The sandbox re-imports every module that is not passed through for every workflow run it
# starts: privnet's own workflow modules hold constants and classes only (no state a run
# could change), so they are imported once and shared. Measured (bench/README): a cached
# connection workflow 281 -> 222 KB, an org guard ~138 -> ~124 KB, and no module re-run per
# new workflow. Third-party and standard modules stay sandboxed as before; tests/test_replay
# replays the recorded histories under the default, strict sandbox, which re-imports them.
WORKFLOW_RUNNER = CompiledOnceSandboxedRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows")
)


def payload_passes_idle(converter: DataConverter) -> bool:
    """Whether the SDK's payload passes have nothing to do for ``converter``: no codec, no
    external storage, and no part of it reads a serialization or store context."""
    probe = WorkflowSerializationContext(namespace="probe", workflow_id="probe")
    return (
        converter.payload_codec is None
        and converter.external_storage is None
        and converter.with_context(probe) is converter
    )


_passes_wrapped = False


def skip_idle_payload_passes() -> None:
    """Skip the workflow worker's per-activation payload passes when they would do nothing.

    For every activation the SDK (1.35) builds a command-aware data converter twice (each
    build constructs a new payload converter) and walks every payload of the activation
    three times and of its completion three times: codec, external storage, storage
    references. It asks the sandboxed workflow, per payload, which command the payload
    belongs to, so that a context-aware codec can use it. privnet's converter (pydantic, no
    codec, no external storage) makes every pass an identity: together they were 16% of the
    bench worker's GIL time at N=200 (py-spy). This wraps the three SDK functions, process
    wide and once, to return at once for such a converter; any other converter (a codec, a
    context-aware one) takes the SDK's path unchanged. The one thing skipped besides: the
    SDK's error for a payload stored externally by some other client while this worker has
    no external storage; such a payload then fails to decode in the converter instead.
    ``tests/test_replay.py`` checks both ways and fails if an SDK upgrade moves these."""
    global _passes_wrapped
    if _passes_wrapped:
        return
    _passes_wrapped = True
    bridge = temporalio.bridge.worker
    decode, encode = bridge.decode_activation, bridge.encode_completion
    create = _CommandAwareDataConverter.create

    async def decode_activation(activation: Any, data_converter: DataConverter, **kw: Any) -> Any:
        if payload_passes_idle(data_converter):
            return StorageOperationMetrics()
        return await decode(activation, data_converter, **kw)

    async def encode_completion(completion: Any, data_converter: DataConverter, **kw: Any) -> Any:
        if payload_passes_idle(data_converter):
            return StorageOperationMetrics()
        return await encode(completion, data_converter, **kw)

    def command_aware(
        instance: WorkflowInstance,
        context_free_dc: DataConverter,
        workflow_context_dc: DataConverter,
        workflow_context: WorkflowSerializationContext,
    ) -> DataConverter:
        if workflow_context_dc is context_free_dc and payload_passes_idle(context_free_dc):
            return context_free_dc  # every command's converter would be this one
        return create(instance, context_free_dc, workflow_context_dc, workflow_context)

    bridge.decode_activation = decode_activation  # type: ignore[assignment]
    bridge.encode_completion = encode_completion  # type: ignore[assignment]
    _CommandAwareDataConverter.create = staticmethod(command_aware)  # type: ignore[method-assign,assignment]


def build_worker(
    client: Client,
    settings: Settings,
    *,
    activities: Sequence[object] | None = None,
    task_queue: str | None = None,
    max_concurrent_activities: int | None = None,
    extra_workflows: Sequence[type] = (),
    max_cached_workflows: int | None = None,
) -> Workers:
    """The workers for every workflow; ``activities`` are activity-class instances (default:
    the real adapters from settings; tests inject fakes registered under the same names).
    Both workers register every activity (the guard's local activities run where it runs)."""
    objs = list(activities) if activities is not None else real_activities(client, settings)
    skip_idle_payload_passes()
    interceptors: list[Interceptor] = [LogContextInterceptor(), LocalActivityDeadline()]
    if settings.failpoints:
        interceptors.append(Failpoints(settings.failpoints, settings.failpoint_log))
    queue = task_queue or settings.task_queue
    slots = max_concurrent_activities or settings.worker_activity_slots
    executor = ThreadPoolExecutor(max_workers=slots)
    common: dict[str, Any] = {
        "activities": activities_of(*objs),
        "activity_executor": executor,
        "interceptors": interceptors,
        "graceful_shutdown_timeout": timedelta(seconds=10),
        "workflow_runner": WORKFLOW_RUNNER,
    }
    cache = settings.worker_cache_size if max_cached_workflows is None else max_cached_workflows
    connections = Worker(
        client,
        task_queue=queue,
        # OrgGuardWorkflow too: guards started on this queue before it had its own.
        workflows=[*WORKFLOWS, *extra_workflows],
        max_cached_workflows=cache,
        max_concurrent_activities=slots,
        **common,
    )
    guards = Worker(
        client,
        task_queue=f"{queue}-guards" if task_queue else settings.guard_queue,
        workflows=[OrgGuardWorkflow],
        # Guards only work while their org creates or deletes: keep few of them cached (an
        # evicted one replays its short history on its next decision) so that the memory
        # goes to the connections, which run drift checks all the time.
        max_cached_workflows=min(cache, settings.worker_guard_cache_size),
        max_concurrent_activities=max(4, slots // 8),
        **common,
    )
    return Workers([connections, guards])


async def run_worker(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        # privnet's own counters (AWS calls by operation) beside the SDK's port.
        start_http_server(settings.metrics_port + 1)
    client = await connect_patiently(settings, runtime_for(settings))
    worker = build_worker(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker started",
        task_queue=settings.task_queue,
        temporal=settings.temporal_address,
        namespace=settings.temporal_namespace,
    )
    async with worker:
        await stop.wait()
        log.info("shutting down")
    log.info("worker stopped")


def main() -> None:
    asyncio.run(run_worker())
    # As the CLI's main does (`privnet worker` exits through it): the worker has stopped and
    # logged "worker stopped"; skip interpreter finalization, during which the SDK's Rust
    # runtime threads can call back into Python and abort the process ("Fatal Python error:
    # PyGILState_Release", temporalio/sdk-python#300; seen once by the SIGTERM test on a
    # fresh clone).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
