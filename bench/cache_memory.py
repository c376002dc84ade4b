"""``python -m bench.cache_memory N PER_ORG``: memory of one cached workflow, in process.

One dev server, one worker (``worker.build_worker`` with the unit tests' fakes, so only
Temporal and the workflows use memory), N connections over N/PER_ORG orgs created and
left Active; prints the worker's RSS growth per connection (guards included: with
PER_ORG=50 it is the connection alone, with 2 half a guard more). Measures what the
sandbox, the cache and the workflow's own state cost; not a timed figure.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from sandbox.binaries import temporal_cli_path
from tests.fakes import FakeEnv, fake_worker
from tests.wfutil import make_input, start, wait_status
from workflows.contracts import SEARCH_ATTRIBUTES


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


async def main(n: int, per_org: int) -> None:
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter, search_attributes=SEARCH_ATTRIBUTES,
        dev_server_existing_path=temporal_cli_path())
    try:
        world = Path(tempfile.mkdtemp()) / "world.json"
        async with fake_worker(env.client, world, FakeEnv) as fe:
            warm = await start(env.client, make_input("warm", "c0"), fe.task_queue)
            await wait_status(warm, "Active", 60)
            gc.collect()
            before = rss_mb()
            handles = [await start(env.client, make_input(
                f"org{i // per_org}", f"c{i}", step_timeout=timedelta(seconds=120),
                default_org_limit=per_org), fe.task_queue) for i in range(n)]
            for h in handles:
                await wait_status(h, "Active", 300)
            await asyncio.sleep(5)
            gc.collect()
            after = rss_mb()
            print(f"n={n} per_org={per_org} rss {before:.1f} -> {after:.1f} MB: "
                  f"{(after - before) * 1024 / n:.0f} KB per connection")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
