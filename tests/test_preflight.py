"""The pre-flight check and the setup facts.

Activity level: each case against sandbox AWS over HTTP with cold caches, counting AWS
calls (at most 3). End to end: through the HTTP API, the CLI (a subprocess) and the client,
with the real worker; afterwards the store, sandbox AWS and sandbox Kubernetes are unchanged
and the only workflows started are the short check/setup ones (no org guard: no slot)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.aws import AwsActivities, CallCounter
from activities.preflight import PreflightActivities
from activities.store import Store
from sandbox.aws import SandboxAws, SandboxSeed
from settings import EndpointNetwork
from tests.api_env import ApiEnv, api_env, bearer, run_cli, snapshot
from tests.aws_fixtures import FAST, base_session
from workflows.contracts import (
    ConnectionStatus,
    PreflightInput,
    PreflightResult,
    StatusRecord,
)

REPO = Path(__file__).resolve().parent.parent
TOKEN = "pf-" + uuid.uuid4().hex


def _org() -> str:
    return "pf-" + uuid.uuid4().hex[:8]


def _check(result: PreflightResult, name: str) -> Any:
    found = [c for c in result.checks if c.name == name]
    assert len(found) == 1, result
    return found[0]


def _far_network(seed: SandboxSeed, region: str) -> EndpointNetwork:
    """Our endpoint network in ``region`` reduced to subnets in AZs the customer's NLB is
    not in (the customer uses the region's first two AZs)."""
    net = seed.endpoint_networks[region]
    customer = set(seed.customer_az_ids["other_region" if region == seed.other_region else "allowed"])
    far = [s for s in net.subnet_ids if net.az_ids[s] not in customer]
    assert far, net
    return EndpointNetwork(vpc_id=net.vpc_id, subnet_ids=far, security_group_ids=net.security_group_ids)


# ---------------------------------------------------------------------- activity level


@pytest.fixture(scope="module")
def sandbox() -> Iterator[tuple[SandboxAws, SandboxSeed]]:
    aws = SandboxAws()
    aws.start()
    try:
        yield aws, aws.seed_default("us-east-1", "us-west-2")
    finally:
        aws.stop()


class ApiCalls(CallCounter):
    """AWS calls of one check; the role's AssumeRole (a credential refresh, hourly and
    shared by every activity of the worker) is counted apart."""

    @property
    def total(self) -> int:
        return sum(n for op, n in self.snapshot().items() if op != "AssumeRole")


def _run(
    seed: SandboxSeed, store: Store, service_key: str, region: str, org: str, **overrides: Any
) -> tuple[PreflightResult, CallCounter]:
    settings = seed.settings(**overrides)
    calls = ApiCalls()
    aws = AwsActivities(settings, base_session(), client_config=FAST, counter=calls)
    acts = PreflightActivities(settings, store, aws)
    name = seed.customer_services[service_key]
    result = acts.preflight_check(
        PreflightInput(
            org_id=org,
            endpoint_service_name=name,
            region=region,
            service_region=name.split(".")[3],
            default_org_limit=2,
        )
    )
    return result, calls


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'pf.db'}")
    s.create_schema()
    return s


@pytest.mark.parametrize("principal_from_role", [False, True])
def test_allowed_service_passes_every_check(
    sandbox: tuple[SandboxAws, SandboxSeed], store: Store, principal_from_role: bool
) -> None:
    _, seed = sandbox
    over = {"aws_principal_arn": None} if principal_from_role else {}
    result, calls = _run(seed, store, "allowed", "us-east-1", _org(), **over)
    assert result.ok, result
    assert [c.name for c in result.checks] == [
        "region", "service_visible", "cross_region", "availability_zones", "acceptance", "slots",
    ]
    assert all(c.fix is None for c in result.checks)
    assert seed.principal_arn in _check(result, "service_visible").detail
    for az in seed.customer_az_ids["allowed"]:
        assert az in _check(result, "availability_zones").detail
    assert "automatically" in _check(result, "acceptance").detail
    assert "0 of 2" in _check(result, "slots").detail
    assert calls.total <= 3, calls.snapshot()


def test_not_allowed_names_the_principal_to_allow(
    sandbox: tuple[SandboxAws, SandboxSeed], store: Store
) -> None:
    _, seed = sandbox
    result, calls = _run(seed, store, "not_allowed", "us-east-1", _org())
    assert not result.ok
    c = _check(result, "service_visible")
    assert not c.ok and seed.principal_arn in c.fix and "Allow principals" in c.fix
    assert calls.total <= 3, calls.snapshot()


def test_wrong_azs_names_our_az_ids(sandbox: tuple[SandboxAws, SandboxSeed], store: Store) -> None:
    _, seed = sandbox
    far = _far_network(seed, "us-east-1")
    networks = {**seed.settings().endpoint_networks, "us-east-1": far}
    result, calls = _run(seed, store, "allowed", "us-east-1", _org(), endpoint_networks=networks)
    assert not result.ok
    c = _check(result, "availability_zones")
    net = seed.endpoint_networks["us-east-1"]
    ours = sorted({net.az_ids[s] for s in far.subnet_ids})
    assert not c.ok and c.fix is not None
    for az in ours:
        assert az in c.fix
    for az in seed.customer_az_ids["allowed"]:
        assert az not in c.fix and az in c.detail
    assert calls.total <= 3, calls.snapshot()


def test_cross_region_supported_and_not(
    sandbox: tuple[SandboxAws, SandboxSeed], store: Store
) -> None:
    _, seed = sandbox
    # other_region: a us-west-2 service that supports us-east-1.
    result, calls = _run(seed, store, "other_region", "us-east-1", _org())
    assert result.ok, result
    assert "cross-region" in _check(result, "cross_region").detail
    assert calls.total <= 3
    # allowed: a us-east-1 service that supports only us-east-1, asked from us-west-2.
    result, calls = _run(seed, store, "allowed", "us-west-2", _org())
    c = _check(result, "cross_region")
    assert not result.ok and not c.ok
    assert "add us-west-2 to the supported Regions" in c.fix
    assert "or create the connection in region us-east-1" in c.fix
    assert _check(result, "service_visible").ok
    assert calls.total <= 3, calls.snapshot()


def test_cross_region_not_allowed_stays_within_3_calls(
    sandbox: tuple[SandboxAws, SandboxSeed], store: Store
) -> None:
    _, seed = sandbox
    result, calls = _run(seed, store, "not_allowed", "us-west-2", _org(), aws_principal_arn=None)
    assert not _check(result, "service_visible").ok
    assert seed.principal_arn in _check(result, "service_visible").fix
    assert calls.total <= 3, calls.snapshot()


def test_acceptance_required_is_reported(
    sandbox: tuple[SandboxAws, SandboxSeed], store: Store
) -> None:
    _, seed = sandbox
    result, _ = _run(seed, store, "acceptance_required", "us-east-1", _org())
    assert result.ok
    c = _check(result, "acceptance")
    assert c.ok and "requires acceptance" in c.detail and "Accept" in c.detail


def test_limit_used_up_names_the_fix(
    sandbox: tuple[SandboxAws, SandboxSeed], store: Store
) -> None:
    _, seed = sandbox
    org = _org()
    store.set_org_limit(org, 1)
    now = datetime.now(UTC)
    store.record(
        StatusRecord(
            org_id=org, connection_id="live", seq=1, at=now, status=ConnectionStatus.ACTIVE,
            endpoint_service_name=seed.customer_services["allowed"], region="us-east-1",
            service_region="us-east-1", workflow_id=f"privnet-conn:{org}:live",
        )
    )
    store.record(
        StatusRecord(
            org_id=org, connection_id="gone", seq=5, at=now, status=ConnectionStatus.DELETED,
            endpoint_service_name=seed.customer_services["allowed"], region="us-east-1",
            service_region="us-east-1", workflow_id=f"privnet-conn:{org}:gone",
        )
    )
    result, _ = _run(seed, store, "allowed", "us-east-1", org)
    c = _check(result, "slots")
    assert not result.ok and not c.ok
    assert "1 of 1" in c.detail
    assert f"delete one of org {org}'s connections" in c.fix
    assert f"privnet limits set --org {org} 2" in c.fix


def test_region_not_offered(sandbox: tuple[SandboxAws, SandboxSeed], store: Store) -> None:
    _, seed = sandbox
    result, _ = _run(seed, store, "allowed", "eu-west-1", _org())
    c = _check(result, "region")
    assert not c.ok and "us-east-1, us-west-2" in c.fix


# ---------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
async def env(temporal_env: WorkflowEnvironment, tmp_path_factory: Any) -> AsyncIterator[ApiEnv]:
    tmp = tmp_path_factory.mktemp("pf-e2e")
    def configure(seed: SandboxSeed) -> dict[str, Any]:
        # us-west-2: only subnets in AZs the customer's NLB is not in (wrong-AZ case).
        networks = seed.settings().endpoint_networks
        return {"endpoint_networks": {**networks, "us-west-2": _far_network(seed, "us-west-2")}}

    async with api_env(temporal_env, tmp, [TOKEN], configure=configure) as e:
        yield e


@pytest.mark.timeout(240)
async def test_check_through_api_cli_and_client_changes_nothing(env: ApiEnv) -> None:
    seed = env.seed
    org = _org()
    before = await snapshot(env)
    env.kube.reset_counters()

    async def http(service: str, region: str | None = None) -> PreflightResult:
        body: dict[str, Any] = {"endpoint_service_name": service}
        if region:
            body["region"] = region
        r = await env.http.post(
            f"/v1/orgs/{org}/connections:check", json=body, headers=bearer(TOKEN)
        )
        assert r.status_code == 200, r.text
        return PreflightResult.model_validate(r.json())

    ok = await http(seed.customer_services["allowed"])
    assert ok.ok and set(ok.model_dump()) == {"ok", "checks"}
    assert all(set(c) == {"name", "ok", "detail", "fix"} for c in ok.model_dump()["checks"])

    denied = await http(seed.customer_services["not_allowed"])
    assert seed.principal_arn in _check(denied, "service_visible").fix

    wrong_az = await http(seed.customer_services["other_region"], "us-west-2")
    assert not _check(wrong_az, "availability_zones").ok

    cross = await http(seed.customer_services["allowed"], "us-west-2")
    assert not _check(cross, "cross_region").ok

    # The client and the CLI give the same answers.
    via_client = await env.client.check(org, seed.customer_services["not_allowed"])
    assert [c.model_dump() for c in via_client.checks] == [
        c.model_dump() for c in denied.checks
    ]
    code, out, err = await run_cli(
        env, "check", "--org", org, "--service-name", seed.customer_services["allowed"], "--json"
    )
    assert code == 0, err
    assert json.loads(out) == ok.model_dump(mode="json")
    code, out, err = await run_cli(
        env, "check", "--org", org, "--service-name", seed.customer_services["not_allowed"]
    )
    assert code == 1 and "service_visible" in err
    assert f"fix: allow the principal {seed.principal_arn}" in out

    # The limit used up (a stored override of 0): the slots check fails with its fix.
    env.store.set_org_limit(org, 0)
    full = await http(seed.customer_services["allowed"])
    assert not _check(full, "slots").ok and "privnet limits set" in _check(full, "slots").fix

    after = await snapshot(env)
    deadline = asyncio.get_running_loop().time() + 30
    while after["workflows"] == before["workflows"]:  # visibility may lag a moment
        assert asyncio.get_running_loop().time() < deadline, "no check workflow visible"
        await asyncio.sleep(0.2)
        after = await snapshot(env)
    for key in ("rows", "endpoints", "kube"):
        assert after[key] == before[key], key
    assert env.kube.write_count == 0
    new = set(after["workflows"]) - set(before["workflows"])
    assert new and all(w.startswith(f"privnet-check:{org}:") for w in new), new


@pytest.mark.timeout(180)
async def test_setup_facts_through_api_cli_and_client(env: ApiEnv) -> None:
    seed = env.seed
    org = _org()
    r = await env.http.get("/v1/setup", headers=bearer(TOKEN))
    assert r.status_code == 200, r.text
    facts = r.json()
    assert facts["principal_arn"] == seed.principal_arn
    assert facts["regions_offered"] == ["us-east-1", "us-west-2"]
    assert facts["cross_region_available"] is True
    east = seed.endpoint_networks["us-east-1"]
    by_region = {x["region"]: x for x in facts["regions"]}
    assert by_region["us-east-1"]["az_ids"] == sorted(set(east.az_ids.values()))
    assert facts["org"] is None
    assert any(seed.principal_arn in step for step in facts["steps"])

    r = await env.http.get(f"/v1/setup?region=us-west-2&org={org}", headers=bearer(TOKEN))
    assert r.status_code == 200, r.text
    one = r.json()
    assert [x["region"] for x in one["regions"]] == ["us-west-2"]
    assert one["org"] == {"org_id": org, "limit": 2, "usage": 0, "remaining": 2}

    env.store.set_org_limit(org, 5)
    via_client = await env.client.setup(org_id=org)
    assert via_client.org is not None and via_client.org.limit == 5
    assert via_client.principal_arn == seed.principal_arn

    code, out, err = await run_cli(env, "setup", "--json", "--org", org)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["org"]["limit"] == 5 and doc["principal_arn"] == seed.principal_arn
    code, out, err = await run_cli(env, "setup", "--region", "us-east-1")
    assert code == 0, err
    assert seed.principal_arn in out and "us-east-1" in out
