"""Bad input is refused at the edge with a named code, never a 5xx, and changes nothing:
the same rules through the HTTP API (real app, real worker, sandbox AWS and Kubernetes),
the CLI (exit 2, the same message) and ``ConnectionsClient`` (``InvalidInput``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from starter import validation
from starter.cli import run as cli_run
from tests.api_env import ApiEnv, api_env, bearer, snapshot
from workflows.contracts import InvalidInput

TOKEN = "edge-" + uuid.uuid4().hex
REPO = Path(__file__).resolve().parent.parent
SVC = "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0"


@pytest.fixture(scope="module")
async def env(temporal_env: WorkflowEnvironment, tmp_path_factory: Any) -> AsyncIterator[ApiEnv]:
    async with api_env(temporal_env, tmp_path_factory.mktemp("bad"), [TOKEN]) as e:
        yield e


def _body(**fields: Any) -> bytes:
    return json.dumps({"endpoint_service_name": SVC, **fields}).encode()


# (name, method, path, raw body or None, status, code)
CREATE = "/v1/orgs/acme/connections"
CHECK = "/v1/orgs/acme/connections:check"
CASES: list[tuple[str, str, str, bytes | None, int, str]] = [
    # org id in the path
    ("org uppercase", "POST", "/v1/orgs/Acme/connections", _body(), 422, "INVALID_ORG_ID"),
    ("org too long", "POST", f"/v1/orgs/{'a' * 64}/connections", _body(), 422, "INVALID_ORG_ID"),
    ("org leading dash", "POST", "/v1/orgs/-acme/connections", _body(), 422, "INVALID_ORG_ID"),
    ("org with space", "POST", "/v1/orgs/ac%20me/connections", _body(), 422, "INVALID_ORG_ID"),
    ("org trailing newline", "POST", "/v1/orgs/acme%0A/connections", _body(), 422,
     "INVALID_ORG_ID"),
    ("org non-ascii", "POST", "/v1/orgs/acm%C3%A9/connections", _body(), 422, "INVALID_ORG_ID"),
    ("list bad org", "GET", "/v1/orgs/ACME/connections", None, 422, "INVALID_ORG_ID"),
    ("get bad id", "GET", "/v1/orgs/acme/connections/Orders_DB", None, 422,
     "INVALID_CONNECTION_ID"),
    ("delete bad id", "DELETE", "/v1/orgs/acme/connections/db-", None, 422,
     "INVALID_CONNECTION_ID"),
    # the body as a whole
    ("not json", "POST", CREATE, b"{", 400, "MALFORMED_JSON"),
    ("cut short", "POST", CREATE, _body()[:30], 400, "MALFORMED_JSON"),
    ("not utf-8", "POST", CREATE, b'{"endpoint_service_name": "\xff\xfe"}', 400,
     "MALFORMED_JSON"),
    ("NaN", "POST", CREATE, f'{{"endpoint_service_name": "{SVC}", "ports": [NaN]}}'.encode(),
     400, "MALFORMED_JSON"),
    ("deep nesting", "POST", CREATE, b"[" * 10_000, 400, "MALFORMED_JSON"),
    ("array body", "POST", CREATE, b"[]", 422, "INVALID_BODY"),
    ("string body", "POST", CREATE, b'"hello"', 422, "INVALID_BODY"),
    ("null body", "POST", CREATE, b"null", 422, "INVALID_BODY"),
    ("empty body", "POST", CREATE, b"", 422, "INVALID_BODY"),
    ("unknown field", "POST", CREATE, _body(service="x"), 422, "UNKNOWN_FIELD"),
    ("misspelt field", "POST", CREATE, json.dumps({"endpoint_service": SVC}).encode(), 422,
     "UNKNOWN_FIELD"),
    ("duplicate field", "POST", CREATE,
     f'{{"endpoint_service_name": "{SVC}", "endpoint_service_name": "{SVC}"}}'.encode(), 422,
     "DUPLICATE_FIELD"),
    ("missing service", "POST", CREATE, b"{}", 422, "MISSING_FIELD"),
    ("body too large", "POST", CREATE, _body(display_name="x" * 20_000), 413, "BODY_TOO_LARGE"),
    # service name
    ("service short form", "POST", CREATE,
     json.dumps({"endpoint_service_name": "vpce-svc-123"}).encode(), 422, "INVALID_SERVICE_NAME"),
    ("service leading space", "POST", CREATE,
     json.dumps({"endpoint_service_name": " " + SVC}).encode(), 422, "INVALID_SERVICE_NAME"),
    ("service trailing newline", "POST", CREATE,
     json.dumps({"endpoint_service_name": SVC + "\n"}).encode(), 422, "INVALID_SERVICE_NAME"),
    ("service uppercase hex", "POST", CREATE,
     json.dumps({"endpoint_service_name": SVC.upper()}).encode(), 422, "INVALID_SERVICE_NAME"),
    ("service fake region", "POST", CREATE,
     json.dumps({"endpoint_service_name": SVC.replace("us-east-1", "us-east-9")}).encode(), 422,
     "INVALID_SERVICE_NAME"),
    ("service hex too long", "POST", CREATE,
     json.dumps({"endpoint_service_name": SVC + "12"}).encode(), 422, "INVALID_SERVICE_NAME"),
    ("service number", "POST", CREATE, json.dumps({"endpoint_service_name": 5}).encode(), 422,
     "INVALID_SERVICE_NAME"),
    ("service null", "POST", CREATE, json.dumps({"endpoint_service_name": None}).encode(), 422,
     "INVALID_SERVICE_NAME"),
    # region
    ("region unknown", "POST", CREATE, _body(region="us-east-9"), 422, "INVALID_REGION"),
    ("region uppercase", "POST", CREATE, _body(region="US-EAST-1"), 422, "INVALID_REGION"),
    ("region number", "POST", CREATE, _body(region=1), 422, "INVALID_REGION"),
    ("region empty", "POST", CREATE, _body(region=""), 422, "INVALID_REGION"),
    ("region not offered", "POST", CREATE, _body(region="eu-west-1"), 422, "REGION_NOT_OFFERED"),
    # connection id
    ("id uppercase", "POST", CREATE, _body(connection_id="Orders_DB"), 422,
     "INVALID_CONNECTION_ID"),
    ("id too long", "POST", CREATE, _body(connection_id="c" * 41), 422, "INVALID_CONNECTION_ID"),
    ("id trailing dash", "POST", CREATE, _body(connection_id="db-"), 422,
     "INVALID_CONNECTION_ID"),
    ("id number", "POST", CREATE, _body(connection_id=42), 422, "INVALID_CONNECTION_ID"),
    ("id trailing newline", "POST", CREATE, _body(connection_id="db\n"), 422,
     "INVALID_CONNECTION_ID"),
    # ports
    ("port zero", "POST", CREATE, _body(ports=[0]), 422, "INVALID_PORT"),
    ("port too big", "POST", CREATE, _body(ports=[65536]), 422, "INVALID_PORT"),
    ("port negative", "POST", CREATE, _body(ports=[-1]), 422, "INVALID_PORT"),
    ("port bool", "POST", CREATE, _body(ports=[True]), 422, "INVALID_PORT"),
    ("port float", "POST", CREATE, _body(ports=[80.0]), 422, "INVALID_PORT"),
    ("port string", "POST", CREATE, _body(ports=["80"]), 422, "INVALID_PORT"),
    ("ports not a list", "POST", CREATE, _body(ports="80"), 422, "INVALID_PORT"),
    ("ports object", "POST", CREATE, _body(ports={"a": 1}), 422, "INVALID_PORT"),
    ("41 ports", "POST", CREATE, _body(ports=list(range(1, 42))), 422, "TOO_MANY_PORTS"),
    # display name
    ("name empty", "POST", CREATE, _body(display_name=""), 422, "INVALID_DISPLAY_NAME"),
    ("name too long", "POST", CREATE, _body(display_name="n" * 129), 422, "INVALID_DISPLAY_NAME"),
    ("name NUL", "POST", CREATE, _body(display_name="bad\x00name"), 422, "INVALID_DISPLAY_NAME"),
    ("name newline", "POST", CREATE, _body(display_name="two\nlines"), 422,
     "INVALID_DISPLAY_NAME"),
    ("name line separator", "POST", CREATE, _body(display_name="a\u2028b"), 422,
     "INVALID_DISPLAY_NAME"),
    ("name number", "POST", CREATE, _body(display_name=12), 422, "INVALID_DISPLAY_NAME"),
    # pre-flight check and setup
    ("check unknown field", "POST", CHECK, _body(ports=[80]), 422, "UNKNOWN_FIELD"),
    ("check bad service", "POST", CHECK, json.dumps({"endpoint_service_name": "x"}).encode(),
     422, "INVALID_SERVICE_NAME"),
    ("check not json", "POST", CHECK, b'{"endpoint_service_name": ', 400, "MALFORMED_JSON"),
    ("check bad region", "POST", CHECK, _body(region="moon-1"), 422, "INVALID_REGION"),
    ("setup bad region", "GET", "/v1/setup?region=mars-east-1", None, 422, "INVALID_REGION"),
    ("setup bad org", "GET", "/v1/setup?org=Not%20An%20Org", None, 422, "INVALID_ORG_ID"),
]


def test_there_are_at_least_40_distinct_cases() -> None:
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)
    assert len({(c[1], c[2], c[3]) for c in CASES}) == len(CASES)


@pytest.mark.timeout(300)
async def test_bad_inputs_are_refused_and_change_nothing(env: ApiEnv) -> None:
    before = await snapshot(env)
    env.kube.reset_counters()
    failures = []
    for name, method, path, raw, status, code in CASES:
        headers = {**bearer(TOKEN), "Content-Type": "application/json"}
        r = await env.http.request(method, path, content=raw, headers=headers)
        try:
            body = r.json()
        except ValueError:
            body = {"raw": r.text}
        got = (r.status_code, body.get("error", {}).get("code"))
        if got != (status, code) or not body["error"].get("message"):
            failures.append(f"{name}: expected {(status, code)}, got {got}: {body}")
    assert not failures, "\n".join(failures)

    # A valid pre-flight check afterwards: it starts one short workflow, proving that the
    # workflow listing below sees what this task queue started (and nothing else was).
    r = await env.http.post(CHECK, json={"endpoint_service_name": SVC}, headers=bearer(TOKEN))
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    after = await snapshot(env)
    while len(after["workflows"]) == len(before["workflows"]) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        after = await snapshot(env)
    started = sorted(set(after["workflows"]) - set(before["workflows"]))
    assert len(started) == 1 and started[0].startswith("privnet-check:acme:"), started
    assert env.kube.write_count == 0
    for key in ("rows", "endpoints", "kube"):
        assert after[key] == before[key], key


# (argv after "create"/other command, code): the CLI refuses the same inputs with exit 2.
CLI_CASES: list[tuple[list[str], str]] = [
    (["create", "--org", "Acme", "--service-name", SVC], "INVALID_ORG_ID"),
    (["create", "--org", "acme\n", "--service-name", SVC], "INVALID_ORG_ID"),
    (["create", "--org", "acme", "--service-name", SVC + "\n"], "INVALID_SERVICE_NAME"),
    (["create", "--org", "acme", "--service-name", SVC.replace("us-east-1", "us-east-9")],
     "INVALID_SERVICE_NAME"),
    (["create", "--org", "acme", "--service-name", SVC, "--region", "us-east-9"],
     "INVALID_REGION"),
    (["create", "--org", "acme", "--service-name", SVC, "--region", "eu-west-1"],
     "REGION_NOT_OFFERED"),
    (["create", "--org", "acme", "--service-name", SVC, "--id", "Orders_DB"],
     "INVALID_CONNECTION_ID"),
    (["create", "--org", "acme", "--service-name", SVC, "--port", "0"], "INVALID_PORT"),
    (["create", "--org", "acme", "--service-name", SVC,
      *[a for p in range(1, 42) for a in ("--port", str(p))]], "TOO_MANY_PORTS"),
    (["create", "--org", "acme", "--service-name", SVC, "--name", "a\x07b"],
     "INVALID_DISPLAY_NAME"),
    (["check", "--org", "acme", "--service-name", "nope"], "INVALID_SERVICE_NAME"),
    (["setup", "--region", "mars-east-1"], "INVALID_REGION"),
    (["get", "acme", "db\n"], "INVALID_CONNECTION_ID"),
    (["delete", "Bad", "db"], "INVALID_ORG_ID"),
]

NETWORKS = json.dumps(
    {"us-east-1": {"vpc_id": "vpc-1", "subnet_ids": ["subnet-1"], "security_group_ids": []}}
)


@pytest.mark.parametrize(("argv", "code"), CLI_CASES, ids=[c[1] + str(i) for i, c in
                                                         enumerate(CLI_CASES)])
def test_cli_refuses_with_exit_2_and_the_rules_message(
    argv: list[str], code: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unreachable Temporal: refusing must not need it.
    monkeypatch.setenv("PRIVNET_TEMPORAL_ADDRESS", "127.0.0.1:9")
    monkeypatch.setenv("PRIVNET_ENDPOINT_NETWORKS", NETWORKS)
    monkeypatch.chdir(REPO / "tests")  # no .privnet/stack.json here
    assert cli_run(argv) == 2
    err = capsys.readouterr().err
    assert f"privnet: error: {code}: " in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_cli_message_is_the_rules_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI prints exactly what the API puts in ``error.message`` (one rule set)."""
    monkeypatch.chdir(REPO / "tests")
    with pytest.raises(InvalidInput) as refused:
        validation.connection_id("Orders_DB")
    assert cli_run(["get", "acme", "Orders_DB"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"privnet: error: INVALID_CONNECTION_ID: {refused.value.message}"
    )


def test_cli_subprocess_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVNET_")}
    env.update(PYTHONPATH=str(REPO), PRIVNET_TEMPORAL_ADDRESS="127.0.0.1:9")
    r = subprocess.run(
        [sys.executable, "-m", "starter.cli", "create", "--org", "acme", "--service-name", SVC,
         "--port", "70000"],
        cwd=str(REPO / "tests"), env=env, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert "INVALID_PORT" in r.stderr and "70000" in r.stderr


CLIENT_CASES: list[tuple[dict[str, Any], str]] = [
    ({"org_id": "Acme"}, "INVALID_ORG_ID"),
    ({"endpoint_service_name": SVC + " "}, "INVALID_SERVICE_NAME"),
    ({"region": "us-east-9"}, "INVALID_REGION"),
    ({"region": "eu-west-1"}, "REGION_NOT_OFFERED"),
    ({"connection_id": "x" * 41}, "INVALID_CONNECTION_ID"),
    ({"ports": [True]}, "INVALID_PORT"),
    ({"ports": [443.0]}, "INVALID_PORT"),
    ({"ports": "443"}, "INVALID_PORT"),
    ({"ports": range(1, 100)}, "TOO_MANY_PORTS"),
    ({"display_name": "tab\there"}, "INVALID_DISPLAY_NAME"),
]


@pytest.mark.timeout(120)
async def test_client_raises_invalid_input_and_starts_nothing(env: ApiEnv) -> None:
    before = await snapshot(env)
    for overrides, code in CLIENT_CASES:
        args: dict[str, Any] = {"org_id": "acme", "endpoint_service_name": SVC, **overrides}
        with pytest.raises(InvalidInput) as refused:
            await env.client.create(**args)
        assert refused.value.code == code, (overrides, refused.value)
    for call, code in (
        (env.client.check("acme", "com.amazonaws.vpce.us-east-1.vpce-svc-xyz"),
         "INVALID_SERVICE_NAME"),
        (env.client.setup(region="nowhere-1"), "INVALID_REGION"),
        (env.client.get("acme", "BAD"), "INVALID_CONNECTION_ID"),
        (env.client.delete("acme!", "db"), "INVALID_ORG_ID"),
        (env.client.set_limit("acme", True), "INVALID_LIMIT"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidInput) as refused:
            await call
        assert refused.value.code == code
    after = await snapshot(env)
    assert after == before
