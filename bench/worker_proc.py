"""``python -m bench.worker_proc privnet|baseline``: one worker process.

``privnet`` is the production worker: ``worker.build_worker`` with the real activities,
configured from ``PRIVNET_*`` exactly like ``privnet worker`` (logging, SDK metrics on
``PRIVNET_METRICS_PORT``, privnet's AWS call counters on the port after it).
``baseline`` runs ``BaselineWorkflow`` on its own task queue with the same runtime and the
same concurrency settings. Prints ``READY`` once polling; SIGTERM shuts down cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from temporalio.worker import Worker

from bench.workflows import BASELINE_TASK_QUEUE, BaselineWorkflow, noop
from settings import get_settings
from worker import build_worker, configure_logging, connect, runtime_for


async def run(mode: str) -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    if settings.metrics_port is not None and mode == "privnet":
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port + 1)
    client = await connect(settings, runtime_for(settings))
    worker: Any
    if mode == "privnet":
        worker = build_worker(client, settings)
    else:
        # build_worker's concurrency and cache settings, nothing privnet-specific.
        worker = Worker(
            client,
            task_queue=BASELINE_TASK_QUEUE,
            workflows=[BaselineWorkflow],
            activities=[noop],
            max_cached_workflows=1000,
            max_concurrent_activities=64,
            activity_executor=ThreadPoolExecutor(max_workers=64),
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        print("READY", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["privnet", "baseline"])
    args = parser.parse_args()
    asyncio.run(run(args.mode))


if __name__ == "__main__":
    main()
