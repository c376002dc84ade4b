"""``python -m sandbox.kube``: the sandbox API server on its own, until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
import signal
import threading

from sandbox.kube.resources import DEFAULT_NAMESPACES
from sandbox.kube.server import SandboxKube


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.kube",
        description="Kubernetes API emulator serving the Cilium policy CRDs (no auth)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--namespace", action="append", dest="namespaces",
                        help="namespace to create (repeatable); default: "
                        + ", ".join(DEFAULT_NAMESPACES))
    args = parser.parse_args(argv)
    namespaces = list(DEFAULT_NAMESPACES)
    if args.namespaces:
        namespaces = sorted(set(args.namespaces) | {"default", "kube-system"})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    kube = SandboxKube(namespaces)
    url = kube.start(port=args.port, host=args.host)
    print(json.dumps({"kube_url": url}), flush=True)
    stop.wait()
    kube.stop()


if __name__ == "__main__":
    main()
