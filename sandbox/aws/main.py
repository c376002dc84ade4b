"""``python -m sandbox.aws``: the sandbox AWS alone, seeded; prints the seed as JSON."""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> None:
    from sandbox.aws.server import SandboxAws

    parser = argparse.ArgumentParser(description="Run the sandbox AWS (moto + PrivateLink)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--other-region", default="us-west-2")
    args = parser.parse_args(argv)
    sandbox = SandboxAws(args.host, args.port)
    sandbox.start()
    seed = sandbox.seed_default(args.region, args.other_region)
    print(seed.model_dump_json(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sandbox.stop()
