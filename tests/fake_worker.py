"""A worker process with the fake activities, for crash tests:
``python -m tests.fake_worker ADDRESS TASK_QUEUE WORLD_DB``. The test SIGKILLs it while an
activity is paused after its side effect, then starts another one."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from settings import Settings
from tests.fakes import FakeWorld, fake_activities
from worker import build_worker


async def main(address: str, task_queue: str, world_path: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    world = FakeWorld(Path(world_path))
    worker = build_worker(
        client,
        Settings(),
        task_queue=task_queue,
        activities=fake_activities(world, client, task_queue),
        # No sticky cache: after a crash the next worker picks workflow tasks up at once.
        max_cached_workflows=0,
    )
    print("worker ready", flush=True)
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
