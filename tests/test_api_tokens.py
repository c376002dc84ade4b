"""Org-scoped API tokens through the HTTP API (real app, worker, sandbox AWS and
Kubernetes): a token outside its scope gets 403 on every route and nothing is written or
started; a "*" token acts everywhere; each write is logged with the token's fingerprint,
never the token."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog
from temporalio.testing import WorkflowEnvironment

from settings import Settings
from starter.api import create_app, fingerprint, token_scopes
from tests.api_env import ApiEnv, api_env, bearer, snapshot

ORG_A = "tok-a-" + uuid.uuid4().hex[:6]
ORG_B = "tok-b-" + uuid.uuid4().hex[:6]
T_A = "scoped-a-" + uuid.uuid4().hex  # may act for ORG_A only
T_STAR = "star-" + uuid.uuid4().hex  # may act for every org
T_AB = "scoped-ab-" + uuid.uuid4().hex  # ORG_A and ORG_B


@pytest.fixture(scope="module")
async def env(temporal_env: WorkflowEnvironment, tmp_path_factory: Any) -> AsyncIterator[ApiEnv]:
    tokens = {T_A: [ORG_A], T_STAR: "*", T_AB: [ORG_A, ORG_B]}
    async with api_env(temporal_env, tmp_path_factory.mktemp("tokens"), tokens) as e:
        yield e


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """structlog rendering JSON lines into a buffer, as the API process does on stderr."""
    previous = structlog.get_config()
    out = io.StringIO()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    try:
        yield out
    finally:
        structlog.configure(**previous)


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


async def _wait_status(env: ApiEnv, org: str, cid: str, wanted: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await env.http.get(f"/v1/orgs/{org}/connections/{cid}", headers=bearer(T_STAR))
        body = r.json()
        if r.status_code == 200 and body["status"] in wanted:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{org}/{cid} not in {wanted}: {body}")


def _forbidden(r: Any) -> None:
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "FORBIDDEN" and "PRIVNET_API_TOKENS" in err["message"], err


async def test_a_scoped_token_is_403_on_every_route_of_another_org(
    env: ApiEnv, json_logs: io.StringIO
) -> None:
    service = env.seed.customer_services["allowed"]
    before = await snapshot(env)
    h = bearer(T_A)
    base = f"/v1/orgs/{ORG_B}/connections"
    _forbidden(await env.http.post(base, json={"endpoint_service_name": service}, headers=h))
    _forbidden(await env.http.post(base, content=b"{not json", headers=h))  # 403 before 400
    _forbidden(
        await env.http.post(f"{base}:check", json={"endpoint_service_name": service}, headers=h)
    )
    _forbidden(await env.http.get(base, headers=h))
    _forbidden(await env.http.get(f"{base}/db", headers=h))
    _forbidden(await env.http.delete(f"{base}/db", headers=h))
    _forbidden(await env.http.get(f"/v1/setup?org={ORG_B}", headers=h))

    # A valid request of the same token for its own org starts one short workflow: the
    # listing below sees this task queue's workflows, and nothing else was started.
    r = await env.http.post(
        f"/v1/orgs/{ORG_A}/connections:check", json={"endpoint_service_name": service}, headers=h
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    after = await snapshot(env)
    while after["workflows"] == before["workflows"] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        after = await snapshot(env)
    started = sorted(set(after["workflows"]) - set(before["workflows"]))
    assert len(started) == 1 and started[0].startswith(f"privnet-check:{ORG_A}:"), started
    for key in ("rows", "endpoints", "kube"):
        assert after[key] == before[key], key

    refusals = [x for x in _lines(json_logs) if x.get("code") == "FORBIDDEN"]
    assert {x["action"] for x in refusals} == {"create", "check", "list", "get", "delete", "setup"}
    assert all(x["org_id"] == ORG_B and x["token"] == fingerprint(T_A) for x in refusals)
    assert T_A not in json_logs.getvalue()


async def test_star_token_acts_everywhere_and_writes_are_logged_by_fingerprint(
    env: ApiEnv, json_logs: io.StringIO
) -> None:
    service = env.seed.customer_services["allowed"]
    base = f"/v1/orgs/{ORG_B}/connections"
    r = await env.http.post(
        base,
        json={"endpoint_service_name": service, "connection_id": "db"},
        headers=bearer(T_STAR),
    )
    assert r.status_code == 202, r.text
    await _wait_status(env, ORG_B, "db", {"Active"})

    # The scoped token can neither read nor delete it; the two-org token can read it.
    _forbidden(await env.http.get(f"{base}/db", headers=bearer(T_A)))
    _forbidden(await env.http.delete(f"{base}/db", headers=bearer(T_A)))
    assert (await env.http.get(f"{base}/db", headers=bearer(T_AB))).status_code == 200
    assert (await env.http.get(f"{base}/db", headers=bearer(T_STAR))).json()["status"] == "Active"

    r = await env.http.delete(f"{base}/db", headers=bearer(T_STAR))
    assert r.status_code == 202, r.text
    await _wait_status(env, ORG_B, "db", {"Deleted"})

    text = json_logs.getvalue()
    writes = [x for x in _lines(json_logs) if x.get("event") == "api write"]
    create = [x for x in writes if x["action"] == "create"]
    delete = [x for x in writes if x["action"] == "delete"]
    assert len(create) == 1 and len(delete) == 1, writes
    for line in (create[0], delete[0]):
        assert line["org_id"] == ORG_B and line["connection_id"] == "db"
        assert line["token"] == fingerprint(T_STAR) and len(line["token"]) == 12
    assert create[0]["service"] == service
    for token in (T_STAR, T_A, T_AB):
        assert token not in text


def test_token_scopes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVNET_API_TOKENS", json.dumps({"t1": ["acme"], "t2": "*"}))
    assert token_scopes(Settings()) == {"t1": frozenset({"acme"}), "t2": None}  # type: ignore[call-arg]
    monkeypatch.setenv("PRIVNET_API_TOKENS", json.dumps(["t1", "t2"]))
    assert token_scopes(Settings()) == {"t1": None, "t2": None}  # type: ignore[call-arg]


def test_a_scope_naming_an_invalid_org_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="invalid org") as refused:
        create_app(Settings(api_tokens={"secret-token": ["Not An Org"]}))  # type: ignore[call-arg]
    assert "secret-token" not in str(refused.value)
    assert fingerprint("secret-token") in str(refused.value)
