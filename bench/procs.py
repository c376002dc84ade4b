"""The processes the benchmark starts and watches, and what it reads from outside them.

Every measured component runs in its own process so the GIL of one never slows another:
the Temporal dev server (the ``temporal`` binary), the sandboxes (sandbox AWS and sandbox
Kubernetes, ``python -m bench.sandboxes``), the worker (``python -m bench.worker_proc``);
the driver (this process) only starts workflows and reads results. Memory and CPU come
from ``/proc/<pid>``; worker metrics from its Prometheus port; AWS call counts from the
sandbox's own request counters (its admin API).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A free port whose successor is free too (the worker serves the SDK's metrics on
    the first, privnet's counters on the second, as ``privnet worker`` does)."""
    for _ in range(100):
        port = free_port()
        with contextlib.ExitStack() as stack:
            try:
                for p in (port, port + 1):
                    s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    s.bind(("0.0.0.0", p))  # noqa: S104 - where the worker binds them
            except OSError:
                continue
            return port
    raise RuntimeError("no two adjacent free ports found")


# --------------------------------------------------------------------------- /proc


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return parse_rss(text)


def parse_rss(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used (its threads included, not children)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    return parse_cpu(text)


def parse_cpu(stat_text: str) -> float:
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat_text.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


class Sampler(threading.Thread):
    """Samples the RSS of the registered processes every ``interval`` seconds; windows
    (``since`` a monotonic time) give their peak and mean."""

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval = interval
        self._pids: dict[str, int] = {}
        self._samples: dict[str, list[tuple[float, int]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self._pids[name] = pid
            self._samples[name] = []

    def forget(self, name: str) -> None:
        with self._lock:
            self._pids.pop(name, None)

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        now = time.monotonic()
        with self._lock:
            pids = dict(self._pids)
        for name, pid in pids.items():
            rss = rss_bytes(pid)
            if rss:
                with self._lock:
                    self._samples[name].append((now, rss))

    def window(self, name: str, since: float, until: float | None = None) -> dict[str, float]:
        """Peak, mean and last RSS (MB) of ``name`` between ``since`` and ``until``."""
        self.sample()
        end = until if until is not None else float("inf")
        with self._lock:
            values = [r for t, r in self._samples.get(name, []) if since <= t <= end]
        if not values:
            return {"peak_mb": 0.0, "mean_mb": 0.0, "last_mb": 0.0, "samples": 0}
        mb = 1024 * 1024
        return {
            "peak_mb": round(max(values) / mb, 1),
            "mean_mb": round(sum(values) / len(values) / mb, 1),
            "last_mb": round(values[-1] / mb, 1),
            "samples": len(values),
        }

    def stop(self) -> None:
        self._stop.set()


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A child process in its own session; ``stop`` ends exactly this process group."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def log_count(self, needle: str) -> int:
        """How many lines of this process's log contain ``needle``."""
        try:
            with self.log_path.open(errors="replace") as f:
                return sum(1 for line in f if needle in line)
        except OSError:
            return 0


def spawn(name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log: IO[bytes] = log_path.open("ab")
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    popen = subprocess.Popen(  # noqa: S603 - our own commands
        cmd, cwd=REPO_ROOT, env=full_env, stdout=subprocess.PIPE, stderr=log,
        start_new_session=True,
    )
    log.close()
    return Proc(name, popen, log_path)


def read_line(proc: Proc, timeout: float) -> str:
    """The next line the process prints on stdout (its readiness announcement)."""
    assert proc.popen.stdout is not None
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.popen.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(timeout)
    if not out or not out[0]:
        tail = proc.log_path.read_text(errors="replace")[-3000:] if proc.log_path.exists() else ""
        proc.stop()
        raise RuntimeError(f"{proc.name} exited or did not start within {timeout:.0f}s; its "
                           f"log ends:\n{tail}")
    return out[0].decode().strip()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


TEMPORAL_DBS = ("file", "memory")


def dev_server_command(cli: str, data_dir: Path, port: int, search_attributes: Iterable[str],
                       db: str = "file") -> list[str]:
    """The dev server's command line. ``file``: a SQLite file, as the embedded stack runs
    it. ``memory``: no file, as ``WorkflowEnvironment.start_local`` runs it for the tests;
    the server then costs about half the CPU per operation and keeps the cores busy, so the
    ratio is the ratio of CPU per item (README, "What the dev server's database changes")."""
    if db not in TEMPORAL_DBS:
        raise ValueError(f"unknown dev server database {db!r}: choose from {TEMPORAL_DBS}")
    cmd = [cli, "server", "start-dev"]
    if db == "file":
        cmd += ["--db-filename", str(data_dir / "temporal.db")]
    cmd += ["--ip", "127.0.0.1", "--port", str(port), "--headless", "--log-level", "warn"]
    for name in search_attributes:
        cmd += ["--search-attribute", f"{name}=Keyword"]
    return cmd


def start_dev_server(data_dir: Path, search_attributes: Iterable[str],
                     db: str = "file") -> tuple[Proc, str]:
    """``temporal server start-dev`` with privnet's search attributes, headless (the Web UI
    is not part of what is measured); ``db`` as in ``dev_server_command``."""
    from sandbox.binaries import temporal_cli_path

    port = free_port()
    cmd = dev_server_command(temporal_cli_path(), data_dir, port, search_attributes, db)
    proc = spawn("temporal-dev-server", cmd, {}, data_dir / "logs")
    deadline = time.monotonic() + 90
    while True:
        if not proc.alive():
            raise RuntimeError(f"the dev server exited: see {proc.log_path}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            break
        if time.monotonic() > deadline:
            proc.stop()
            raise TimeoutError("the Temporal dev server did not listen within 90s")
        time.sleep(0.2)
    return proc, f"127.0.0.1:{port}"


def start_sandboxes(data_dir: Path) -> Proc:
    proc = spawn("sandboxes", python_module("bench.sandboxes"), {}, data_dir / "logs")
    proc.info = json.loads(read_line(proc, 180))
    return proc


def start_worker(name: str, mode: str, env: dict[str, str], log_dir: Path,
                 *extra: str) -> Proc:
    proc = spawn(name, python_module("bench.worker_proc", mode, *extra), env, log_dir)
    line = read_line(proc, 180)
    if line != "READY":
        proc.stop()
        raise RuntimeError(f"worker {name} said {line!r} instead of READY: see {proc.log_path}")
    return proc


# --------------------------------------------------------------------------- HTTP readers


def _get_json(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,  # noqa: S310 - loopback only
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


class AwsAdmin:
    """The sandbox AWS controls and counters (``/_privnet/``, sandbox/aws/admin.py)."""

    def __init__(self, aws_url: str) -> None:
        self.base = aws_url.rstrip("/") + "/_privnet"

    def requests(self) -> dict[str, int]:
        """Requests served so far by AWS operation (the admin API's own excluded)."""
        counts = _get_json(f"{self.base}/config")["requests"]
        return {op: int(n) for op, n in counts.items() if not op.startswith("_")}

    def set_delays(self, **delays: float) -> None:
        _get_json(f"{self.base}/delays", "POST", delays)

    def force_state(self, endpoint_id: str, state: str) -> None:
        _get_json(f"{self.base}/endpoints/{endpoint_id}/state", "POST", {"state": state})

    def accept(self, endpoint_id: str) -> None:
        """The service owner accepts the endpoint connection."""
        _get_json(f"{self.base}/endpoints/{endpoint_id}/accept", "POST", {})


def diff_counts(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))
            if after.get(k, 0) - before.get(k, 0)}


def scrape(port: int) -> dict[str, float]:
    """A Prometheus text endpoint as ``{'name{labels}': value}``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:  # noqa: S310
            text = resp.read().decode()
    except OSError:
        return {}
    return parse_prometheus(text)


def parse_prometheus(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


def metric(metrics: dict[str, float], name: str, *, within: str = "", **labels: str) -> float:
    """Sum of every series of ``name`` whose labels include ``labels`` (and whose label text
    contains ``within``, e.g. ``-guards"`` for the org guards' task queue)."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name or within not in rest:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total
