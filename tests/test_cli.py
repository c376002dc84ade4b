"""The privnet CLI without a stack: configuration precedence, durations, bad input (exit 2)
before any connection attempt, unreachable Temporal (exit 1, one line)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from settings import Settings
from starter.cli import build_parser, load_stack_env, parse_duration

REPO = Path(__file__).resolve().parent.parent
SERVICE = "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0"


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRIVNET_")}
    base["PYTHONPATH"] = str(REPO)
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "starter.cli", *args],
        cwd=str(cwd), env=base, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0s", 0), ("90", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "m", "15 minutes", "1x", "-5m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_options_work_before_or_after_the_subcommand() -> None:
    p = build_parser()
    assert p.parse_args(["--json", "list"]).json is True
    assert p.parse_args(["list", "--json"]).json is True
    assert p.parse_args(["list"]).json is False
    assert p.parse_args(["--stack", "a.json", "get", "o", "c"]).stack == "a.json"
    assert p.parse_args(["stuck"]).older_than == timedelta(minutes=15)


def test_environment_overrides_stack_env_which_overrides_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = tmp_path / "stack.json"
    stack.write_text(json.dumps({"env": {
        "PRIVNET_TEMPORAL_ADDRESS": "127.0.0.1:1111",
        "PRIVNET_TASK_QUEUE": "from-stack",
    }}))
    for key in ("PRIVNET_TEMPORAL_ADDRESS", "PRIVNET_TASK_QUEUE", "PRIVNET_API_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PRIVNET_TASK_QUEUE", "from-env")
    doc = load_stack_env(str(stack))
    assert doc is not None
    s = Settings()  # type: ignore[call-arg]
    assert s.temporal_address == "127.0.0.1:1111"  # stack env
    assert s.task_queue == "from-env"  # environment wins
    assert s.api_port == 8080  # default
    for key in ("PRIVNET_TEMPORAL_ADDRESS", "PRIVNET_TASK_QUEUE"):
        monkeypatch.delenv(key, raising=False)


def test_default_stack_file_is_used_when_present(tmp_path: Path) -> None:
    (tmp_path / ".privnet").mkdir()
    (tmp_path / ".privnet" / "stack.json").write_text(
        json.dumps({"env": {"PRIVNET_TEMPORAL_ADDRESS": "127.0.0.1:9"}})
    )
    r = _run("list", cwd=tmp_path)
    assert r.returncode == 1
    assert "127.0.0.1:9" in r.stderr  # the stack's address was used (and is unreachable)
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_input_exits_2_before_connecting(tmp_path: Path) -> None:
    env = {"PRIVNET_TEMPORAL_ADDRESS": "127.0.0.1:9"}
    r = _run("create", "--org", "acme", "--service-name", "nope", cwd=tmp_path, env=env)
    assert r.returncode == 2
    assert "INVALID_SERVICE_NAME" in r.stderr
    assert "com.amazonaws.vpce.<region>.vpce-svc-<hex id>" in r.stderr
    r = _run("get", "Bad Org", "c-1", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "INVALID_ORG_ID" in r.stderr
    r = _run("list", "--stack", str(tmp_path / "missing.json"), cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = _run("stuck", "--older-than", "soon", cwd=tmp_path, env=env)
    assert r.returncode == 2  # argparse usage error


async def test_create_wait_prints_every_status_even_when_the_connection_ended_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``create`` returns once the connection leaves admission: a connection that fails
    fast (a service that does not allow our principal) may already be Failed by then. The
    fresh-clone suite caught ``--wait`` printing nothing of its transitions in that case."""
    from starter import cli
    from workflows.contracts import ConnectionView

    ended = ConnectionView(
        org_id="acme", connection_id="c1", status="Failed", reason="PRINCIPAL_NOT_ALLOWED",
        message="allow our principal", endpoint_service_name=SERVICE, region="us-east-1",
        service_region="us-east-1",
    )
    watched: list[str] = []

    class Client:  # the CLI's side only; the real client's watch is tested in test_api
        async def create(self, *args: object, **kwargs: object) -> ConnectionView:
            return ended

        async def watch(self, org: str, cid: str, **kwargs: object):  # type: ignore[no-untyped-def]
            watched.append(cid)
            for status in ("Pending", "CheckingPrincipal", "Failed"):
                yield ended.model_copy(update={"status": status})

        async def get(self, org: str, cid: str) -> ConnectionView:
            return ended

        def workflow_url(self, workflow_id: str) -> str:
            return "http://ui/" + workflow_id

    async def client(settings: Settings) -> Client:
        return Client()

    monkeypatch.setattr(cli, "_client", client)
    args = build_parser().parse_args(["create", "--org", "acme", "--service-name", SERVICE,
                                      "--region", "us-east-1", "--wait"])
    with pytest.raises(cli.CommandFailed, match="PRINCIPAL_NOT_ALLOWED"):
        await cli.cmd_create(args, Settings())
    out = capsys.readouterr().out
    assert watched == ["c1"]
    assert "acme/c1  CheckingPrincipal" in out and "acme/c1  Failed" in out
