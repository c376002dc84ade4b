"""``python -m bench.sandboxes``: sandbox AWS and sandbox Kubernetes in one process of their
own (so their request handling never competes with the worker for a GIL), seeded for the
benchmark; prints one JSON line (URLs, seed, the worker's environment), then serves until
SIGTERM.

Benchmark setup on top of the default seed: zero AWS delays (endpoints available at
once), and one endpoint VPC with /20 subnets and the per-VPC endpoint quota raised, so
1,000 live endpoints fit in one VPC and what is measured is orchestration, not VPC
spill-over. A tiny HTTP server reports sandbox Kubernetes' request and write counts.
"""

from __future__ import annotations

import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sandbox.aws import SandboxAws, create_endpoint_network
from sandbox.kube import SandboxKube

BENCH_VPC_PREFIX = "10.100"  # not used by the default seed (10.10-10.2x, 10.5x)
QUOTA = 100_000


def _stats_server(kube: SandboxKube) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = json.dumps({
                "requests": len(kube.requests),
                "writes": dict(kube.writes),
                "conflicts": kube.conflicts,
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    aws = SandboxAws()
    aws.start()
    aws.set_delays(pending=0, deleting=0, deleted_visible=0)
    seed = aws.seed_default()
    aws.set_quota(interface_endpoints_per_vpc=QUOTA)
    big = create_endpoint_network(aws, seed.region, BENCH_VPC_PREFIX, subnet_bits=20)
    seed = seed.model_copy(
        update={"endpoint_networks": {**seed.endpoint_networks, seed.region: big}})
    kube = SandboxKube()
    kube_url = kube.start()
    stats = _stats_server(kube)
    print(json.dumps({
        "aws_url": aws.url,
        "kube_url": kube_url,
        "kube_stats_url": f"http://127.0.0.1:{stats.server_address[1]}/",
        "region": seed.region,
        "services": seed.customer_services,
        "env": seed.env(),
    }), flush=True)
    stop.wait()
    stats.shutdown()
    kube.stop()
    aws.stop()


if __name__ == "__main__":
    main()
