"""The HTTP API against real parts: the session Temporal dev server, a worker from
``worker.build_worker`` with the real activities, sandbox AWS and sandbox Kubernetes over
HTTP, and a SQLite store. Nothing is faked."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from sandbox.aws import SandboxAws, SandboxSeed
from sandbox.kube import SandboxKube
from settings import Settings
from starter.api import create_app
from starter.client import ConnectionsClient
from tests.wfutil import SANDBOX_PENDING, SANDBOX_POLL_SETTINGS
from workflows.contracts import SERVICE_NAME_FORMAT, policy_name

TOKEN = "test-token-" + uuid.uuid4().hex


@dataclass
class ApiEnv:
    http: httpx.AsyncClient
    client: ConnectionsClient
    seed: SandboxSeed
    aws: SandboxAws
    kube: SandboxKube
    settings: Settings


def _org() -> str:
    return "api-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
async def api(temporal_env: WorkflowEnvironment, tmp_path_factory: Any) -> AsyncIterator[ApiEnv]:
    from activities.store import Store
    from worker import build_worker

    aws = SandboxAws()
    aws.start()
    aws.set_delays(pending=SANDBOX_PENDING, deleting=0.2, deleted_visible=0.2)
    seed = aws.seed_default("us-east-1", "us-west-2")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    kube = SandboxKube()
    kube_url = kube.start()
    tmp: Path = tmp_path_factory.mktemp("api")
    settings = seed.settings(
        temporal_address=temporal_env.client.service_client.config.target_host,
        task_queue="api-" + uuid.uuid4().hex[:8],
        database_url=f"sqlite:///{tmp / 'api.db'}",
        aws_principal_arn=seed.principal_arn,
        kube_url=kube_url,
        task_namespaces=["tasks"],
        api_tokens=[TOKEN],
        **SANDBOX_POLL_SETTINGS,
    )
    store = Store(settings.database_url)
    store.create_schema()
    cc = ConnectionsClient(temporal_env.client, store, settings)

    async def factory(_: Settings) -> ConnectionsClient:
        return cc

    app = create_app(settings, factory)
    worker = build_worker(temporal_env.client, settings)
    async with worker:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://privnet",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as http:
            yield ApiEnv(http, cc, seed, aws, kube, settings)
    kube.stop()
    aws.stop()


async def _wait_status(
    http: httpx.AsyncClient, org: str, cid: str, wanted: set[str], max_wait: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + max_wait
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await http.get(f"/v1/orgs/{org}/connections/{cid}")
        if r.status_code == 200:
            body = r.json()
            if body["status"] in wanted:
                return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{org}/{cid} not in {wanted} after {max_wait}s: {body}")


def _assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return dict(body["error"])


async def test_missing_or_wrong_token_is_401(api: ApiEnv) -> None:
    org = _org()
    anon = httpx.AsyncClient(transport=api.http._transport, base_url="http://privnet")
    async with anon:
        _assert_error(await anon.get(f"/v1/orgs/{org}/connections"), 401, "UNAUTHORIZED")
        r = await anon.get(f"/v1/orgs/{org}/connections", headers={"Authorization": "Bearer nope"})
        _assert_error(r, 401, "UNAUTHORIZED")
        r = await anon.post(
            f"/v1/orgs/{org}/connections",
            json={"endpoint_service_name": api.seed.customer_services["allowed"]},
            headers={"Authorization": f"Basic {TOKEN}"},
        )
        _assert_error(r, 401, "UNAUTHORIZED")
        # The docs are public.
        assert (await anon.get("/openapi.json")).status_code == 200


async def test_bad_service_name_is_422_naming_the_format(api: ApiEnv) -> None:
    r = await api.http.post(
        f"/v1/orgs/{_org()}/connections", json={"endpoint_service_name": "vpce-svc-123"}
    )
    err = _assert_error(r, 422, "INVALID_SERVICE_NAME")
    assert SERVICE_NAME_FORMAT in err["message"]
    assert "com.amazonaws.vpce.<region>.vpce-svc-<hex id>" in err["message"]


async def test_malformed_bodies_and_ids_are_422(api: ApiEnv) -> None:
    _assert_error(await api.http.post(f"/v1/orgs/{_org()}/connections", json={}), 422)
    r = await api.http.post(
        "/v1/orgs/Not_A_Label!/connections",
        json={"endpoint_service_name": api.seed.customer_services["allowed"]},
    )
    _assert_error(r, 422, "INVALID_ORG_ID")
    r = await api.http.post(
        f"/v1/orgs/{_org()}/connections",
        json={"endpoint_service_name": api.seed.customer_services["allowed"], "ports": [0]},
    )
    _assert_error(r, 422, "INVALID_PORT")


async def test_unknown_connection_is_404(api: ApiEnv) -> None:
    org = _org()
    _assert_error(await api.http.get(f"/v1/orgs/{org}/connections/c-nothere"), 404, "NOT_FOUND")
    _assert_error(await api.http.delete(f"/v1/orgs/{org}/connections/c-nothere"), 404, "NOT_FOUND")
    r = await api.http.get(f"/v1/orgs/{org}/connections")
    assert r.status_code == 200 and r.json() == []


async def test_create_active_delete_deleted(api: ApiEnv) -> None:
    org = _org()
    service = api.seed.customer_services["allowed"]
    r = await api.http.post(
        f"/v1/orgs/{org}/connections",
        json={"endpoint_service_name": service, "connection_id": "orders-db", "ports": [5432]},
    )
    assert r.status_code == 202, r.text
    created = r.json()
    for key in (
        "org_id",
        "connection_id",
        "status",
        "reason",
        "message",
        "endpoint_service_name",
        "region",
        "service_region",
        "vpc_endpoint_id",
        "ips",
        "dns_names",
        "created_at",
        "updated_at",
    ):
        assert key in created, key
    assert created["connection_id"] == "orders-db"
    assert created["status"] not in ("Failed", "Rejected"), created

    # Idempotent: the same id returns the same connection.
    again = await api.http.post(
        f"/v1/orgs/{org}/connections",
        json={"endpoint_service_name": service, "connection_id": "orders-db"},
    )
    assert again.status_code == 202 and again.json()["connection_id"] == "orders-db"

    active = await _wait_status(api.http, org, "orders-db", {"Active", "Failed"})
    assert active["status"] == "Active", active
    assert active["vpc_endpoint_id"].startswith("vpce-")
    assert active["ips"] and active["dns_names"]
    timeline = [t["status"] for t in active["timeline"]]
    assert timeline[0] == "Pending" and timeline[-1] == "Active", timeline
    assert {"CheckingPrincipal", "CreatingEndpoint", "WaitingForIp", "ApplyingPolicy"} <= set(
        timeline
    )
    policy = api.kube.get_object("ciliumnetworkpolicies", "tasks", policy_name(org, "orders-db"))
    assert policy is not None
    assert policy["spec"]["endpointSelector"]["matchLabels"] == {"privnet.dev/org-id": org}

    listed = (await api.http.get(f"/v1/orgs/{org}/connections")).json()
    assert [c["connection_id"] for c in listed] == ["orders-db"]

    r = await api.http.delete(f"/v1/orgs/{org}/connections/orders-db")
    assert r.status_code == 202, r.text
    assert r.json()["status"] in ("Active", "Deleting", "Deleted")
    done = await _wait_status(api.http, org, "orders-db", {"Deleted", "Failed"})
    assert done["status"] == "Deleted", done
    assert api.kube.get_object("ciliumnetworkpolicies", "tasks", policy_name(org, "orders-db")) is None
    # Deleting again is accepted and changes nothing.
    r = await api.http.delete(f"/v1/orgs/{org}/connections/orders-db")
    assert r.status_code == 202 and r.json()["status"] == "Deleted"


async def test_principal_not_allowed_fails_with_the_fix(api: ApiEnv) -> None:
    org = _org()
    r = await api.http.post(
        f"/v1/orgs/{org}/connections",
        json={"endpoint_service_name": api.seed.customer_services["not_allowed"]},
    )
    assert r.status_code == 202, r.text
    cid = r.json()["connection_id"]
    failed = await _wait_status(api.http, org, cid, {"Failed", "Active"})
    assert failed["status"] == "Failed"
    assert failed["reason"] == "PRINCIPAL_NOT_ALLOWED"
    assert api.seed.principal_arn in failed["message"]


async def test_limit_rejection_is_409(api: ApiEnv) -> None:
    org = _org()
    usage = await api.client.set_limit(org, 1)
    assert usage.limit == 1
    service = api.seed.customer_services["allowed"]
    first = await api.http.post(
        f"/v1/orgs/{org}/connections", json={"endpoint_service_name": service}
    )
    assert first.status_code == 202, first.text
    first_id = first.json()["connection_id"]
    second = await api.http.post(
        f"/v1/orgs/{org}/connections", json={"endpoint_service_name": service}
    )
    err = _assert_error(second, 409, "LIMIT_REACHED")
    assert "limit" in err["message"]
    assert (await api.client.get_limit(org)).usage == 1

    await _wait_status(api.http, org, first_id, {"Active"})
    assert (await api.http.delete(f"/v1/orgs/{org}/connections/{first_id}")).status_code == 202
    await _wait_status(api.http, org, first_id, {"Deleted"})


async def test_watch_reports_every_transition_in_order(api: ApiEnv) -> None:
    """create --wait prints each status as it happens: none may be skipped, even when
    several happen between two polls (they are replayed from the store's timeline)."""
    org = _org()
    view = await api.client.create(org, api.seed.customer_services["allowed"])
    seen = [v.status async for v in api.client.watch(org, view.connection_id, until=["Active"])]
    assert seen == [
        "Pending",
        "CheckingPrincipal",
        "CreatingEndpoint",
        "WaitingForIp",
        "ApplyingPolicy",
        "Active",
    ]
    await api.client.delete(org, view.connection_id)
    seen = [v.status async for v in api.client.watch(org, view.connection_id, replay=False)]
    assert seen in (["Active", "Deleting", "Deleted"], ["Deleting", "Deleted"])


async def test_reusing_a_connection_id_for_another_service_is_409(api: ApiEnv) -> None:
    org = _org()
    first = api.seed.customer_services["allowed"]
    other = api.seed.customer_services["acceptance_required"]
    r = await api.http.post(
        f"/v1/orgs/{org}/connections", json={"endpoint_service_name": first, "connection_id": "db"}
    )
    assert r.status_code == 202, r.text
    r = await api.http.post(
        f"/v1/orgs/{org}/connections", json={"endpoint_service_name": other, "connection_id": "db"}
    )
    err = _assert_error(r, 409, "CONNECTION_EXISTS")
    assert "choose another connection id" in err["message"]
    await api.client.delete(org, "db")


async def test_reusing_an_id_for_another_service_is_refused_even_before_a_worker_answers(
    api: ApiEnv,
) -> None:
    """Found by the soak: with no worker answering the status query (killed, or not yet
    polling) and no store row yet, a create naming another service under an existing id was
    answered as if taken, though Temporal had kept the first workflow and its service."""
    from starter.client import Conflict, ConnectionsClient

    org = _org()
    idle = ConnectionsClient(api.client.temporal, api.client.store,
                             api.settings.model_copy(update={"task_queue": "no-worker-" + org}))
    first = api.seed.customer_services["allowed"]
    other = api.seed.customer_services["acceptance_required"]
    view = await idle.create(org, first, connection_id="db", wait_admission=timedelta(0))
    assert view.status == "Pending"
    with pytest.raises(Conflict) as err:
        await idle.create(org, other, connection_id="db", wait_admission=timedelta(0))
    assert err.value.code == "CONNECTION_EXISTS"
    await api.client.temporal.get_workflow_handle(view.workflow_id).terminate("test over")
