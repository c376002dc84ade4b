"""The sweeper against real parts: the session Temporal dev server, a worker with the real
activities, sandbox AWS and sandbox Kubernetes over HTTP. What is deleted and what stays is
read from the sandboxes. ``decide`` (ownership and grace) is also tested as a pure function.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from kubernetes import client as k8s
from temporalio.client import ScheduleActionStartWorkflow, ScheduleIntervalSpec
from temporalio.testing import WorkflowEnvironment

from activities.policy import render_connection_policy
from activities.sweeper import Observed, Owner, decide
from tests.api_env import ApiEnv, api_env, run_cli
from workflows.contracts import SWEEP_SCHEDULE_ID, SWEEP_WORKFLOW

pytestmark = pytest.mark.timeout(240)
CNP = "ciliumnetworkpolicies"
GONE = {"deleting", "deleted"}
ALIVE = {"pending", "available"}


@pytest.fixture(scope="module")
async def env(temporal_env: WorkflowEnvironment, tmp_path_factory: Any) -> AsyncIterator[ApiEnv]:
    async with api_env(temporal_env, tmp_path_factory.mktemp("sweep"), []) as e:
        yield e


def _org() -> str:
    return "sw-" + uuid.uuid4().hex[:8]


def _ec2(env: ApiEnv) -> Any:
    return env.aws.client("ec2", env.seed.region, env.seed.endpoints_account_id)


def endpoint_state(env: ApiEnv, endpoint_id: str) -> str:
    """The endpoint's state in sandbox AWS ("gone" once it no longer shows)."""
    try:
        eps = _ec2(env).describe_vpc_endpoints(VpcEndpointIds=[endpoint_id])["VpcEndpoints"]
    except ClientError as err:
        if "NotFound" in err.response["Error"]["Code"]:
            return "gone"
        raise
    return str(eps[0]["State"]).lower() if eps else "gone"


def make_endpoint(env: ApiEnv, tags: dict[str, str]) -> str:
    """An endpoint made by hand in privnet's endpoint VPC (as a crash or an operator would)."""
    net = env.seed.endpoint_networks[env.seed.region]
    azs = env.seed.customer_az_ids["allowed"]
    subnet = next(s for s in net.subnet_ids if net.az_ids[s] in azs)
    ep = _ec2(env).create_vpc_endpoint(
        VpcEndpointType="Interface",
        VpcId=net.vpc_id,
        ServiceName=env.seed.customer_services["allowed"],
        SubnetIds=[subnet],
        TagSpecifications=[
            {
                "ResourceType": "vpc-endpoint",
                "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
            }
        ],
    )["VpcEndpoint"]
    return str(ep["VpcEndpointId"])


def privnet_tags(org: str, cid: str) -> dict[str, str]:
    return {
        "privnet.dev/org-id": org,
        "privnet.dev/connection-id": cid,
        "privnet.dev/managed-by": "privnet",
    }


def make_policy(env: ApiEnv, name: str, labels: dict[str, str]) -> dict[str, Any]:
    body = render_connection_policy("someone", "x", ["10.10.0.9"], namespace="tasks")
    body["metadata"]["name"] = name
    body["metadata"]["labels"] = labels
    api = k8s.CustomObjectsApi(k8s.ApiClient(k8s.Configuration(host=env.kube.url)))
    created: dict[str, Any] = api.create_namespaced_custom_object(
        "cilium.io", "v2", "tasks", CNP, body
    )
    return created


def policies_of(env: ApiEnv, org: str, cid: str) -> list[dict[str, Any]]:
    return [
        p
        for p in env.kube.policies("tasks")
        if (p["metadata"].get("labels") or {}).get("privnet.dev/org-id") == org
        and (p["metadata"].get("labels") or {}).get("privnet.dev/connection-id") == cid
    ]


async def active(env: ApiEnv, org: str, cid: str, service: str = "allowed") -> Any:
    await env.client.create(org, env.seed.customer_services[service], connection_id=cid)
    view = await env.client.wait_for(org, cid, {"Active"}, max_wait=timedelta(seconds=60))
    assert view.status == "Active", view
    return await env.client.get(org, cid)


async def test_terminated_connection_orphans_go_and_nothing_else_does(env: ApiEnv) -> None:
    org = _org()
    keep = await active(env, org, "keep")
    gone = await active(env, org, "gone")
    assert keep.vpc_endpoint_id and gone.vpc_endpoint_id
    (gone_policy,) = policies_of(env, org, "gone")
    # An operator terminates the workflow: no compensation, its objects stay behind.
    await env.client.temporal.get_workflow_handle(gone.workflow_id).terminate("test")
    # Objects without privnet's tags/labels, which the sweeper must never touch.
    untagged = make_endpoint(env, {"Name": "hand-made", "privnet.dev/connection-id": "gone"})
    unlabelled = make_policy(env, "hand-made", {"team": "db"})
    half = make_policy(env, "half-labelled", {"privnet.dev/org-id": org})

    # Dry run (CLI and client print the same list): the orphans are reported, none deleted.
    dry = await env.client.sweep(dry_run=True, grace=timedelta(0))
    mine = {o.id: o for o in dry.orphans if o.org_id == org}
    gone_policy_id = f"tasks/{gone_policy['metadata']['name']}"
    assert set(mine) == {gone.vpc_endpoint_id, gone_policy_id}, dry
    assert all(o.due and "terminated" in o.why for o in mine.values()), mine
    code, out, err = await run_cli(env, "sweep", "--dry-run", "--grace", "0s", "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert {o["id"] for o in printed["orphans"]} == {o.id for o in dry.orphans}
    assert printed["deleted"] == [] and dry.deleted == []
    code, out, err = await run_cli(env, "sweep", "--dry-run", "--grace", "0s")
    assert code == 0, err
    assert gone.vpc_endpoint_id in out and "dry run: nothing deleted" in out
    assert endpoint_state(env, gone.vpc_endpoint_id) == "available"

    env.kube.reset_counters()
    report = await env.client.sweep(grace=timedelta(0))
    assert set(report.deleted) == {gone.vpc_endpoint_id, gone_policy_id}, report
    # The truth, from the sandboxes: the orphans are going/gone ...
    assert endpoint_state(env, gone.vpc_endpoint_id) in GONE | {"gone"}
    assert policies_of(env, org, "gone") == []
    # ... and nothing else was touched.
    assert endpoint_state(env, keep.vpc_endpoint_id) == "available"
    assert len(policies_of(env, org, "keep")) == 1
    assert endpoint_state(env, untagged) in ALIVE
    for obj in (unlabelled, half):
        assert env.kube.get_object(CNP, "tasks", obj["metadata"]["name"]) is not None
    assert (await env.client.get(org, "keep")).status == "Active"
    # The policy was deleted with uid and resourceVersion preconditions.
    deletes = [r for r in env.kube.requests if r.method == "DELETE"]
    assert len(deletes) == 1, deletes
    pre = (deletes[0].body or {}).get("preconditions") or {}
    assert pre == {
        "uid": gone_policy["metadata"]["uid"],
        "resourceVersion": gone_policy["metadata"]["resourceVersion"],
    }, deletes[0].body

    await env.client.delete(org, "keep")
    await env.client.wait_for(org, "keep", {"Deleted"})


async def test_grace_period_then_orphan_endpoints_and_policies_go(env: ApiEnv) -> None:
    org = _org()
    # A crash outside any workflow: privnet-tagged objects of a connection that never was.
    ghost_ep = make_endpoint(env, privnet_tags(org, "ghost"))
    ghost_policy = make_policy(
        env,
        "privnet-ghost",
        {
            "privnet.dev/org-id": org,
            "privnet.dev/connection-id": "ghost",
            "app.kubernetes.io/managed-by": "privnet",
        },
    )
    ghost_policy_id = f"tasks/{ghost_policy['metadata']['name']}"

    within = await env.client.sweep(grace=timedelta(hours=1))
    mine = {o.id: o for o in within.orphans if o.org_id == org}
    assert set(mine) == {ghost_ep, ghost_policy_id}
    assert not any(o.due for o in mine.values())
    assert all("no connection" in o.why for o in mine.values())
    assert not set(within.deleted) & set(mine)
    assert endpoint_state(env, ghost_ep) in ALIVE
    assert env.kube.get_object(CNP, "tasks", "privnet-ghost") is not None

    after = await env.client.sweep(grace=timedelta(0))
    assert {ghost_ep, ghost_policy_id} <= set(after.deleted)
    assert endpoint_state(env, ghost_ep) in GONE | {"gone"}
    assert env.kube.get_object(CNP, "tasks", "privnet-ghost") is None


async def test_a_connection_in_flight_is_never_swept_but_a_copy_is(env: ApiEnv) -> None:
    org = _org()
    service = env.seed.customer_services["acceptance_required"]
    await env.client.create(org, service, connection_id="slow")
    waiting = await env.client.wait_for(
        org, "slow", {"WaitingForAcceptance"}, max_wait=timedelta(seconds=60)
    )
    assert waiting.status == "WaitingForAcceptance", waiting
    ep = (await env.client.current(org, "slow")).vpc_endpoint_id
    assert ep is not None
    copy = make_endpoint(env, privnet_tags(org, "slow"))  # a hand-made copy of its tags

    report = await env.client.sweep(grace=timedelta(0))
    ids = {o.id for o in report.orphans}
    assert ep not in ids, report
    assert copy in set(report.deleted)
    (orphan,) = [o for o in report.orphans if o.id == copy]
    assert f"owns {ep}" in orphan.why
    assert endpoint_state(env, ep) == "pendingacceptance"
    assert (await env.client.current(org, "slow")).status == "WaitingForAcceptance"

    await env.client.delete(org, "slow")
    done = await env.client.wait_for(org, "slow", {"Deleted"}, max_wait=timedelta(seconds=60))
    assert done.status == "Deleted"


async def test_bootstrap_creates_the_hourly_schedule_idempotently(env: ApiEnv) -> None:
    temporal = env.client.temporal
    try:
        code, out, err = await run_cli(env, "bootstrap", "--json")
        assert code == 0, err
        assert json.loads(out)["sweep_schedule_created"] is True
        code, out, err = await run_cli(env, "bootstrap", "--json")
        assert code == 0, err
        assert json.loads(out)["sweep_schedule_created"] is False
        desc = await temporal.get_schedule_handle(SWEEP_SCHEDULE_ID).describe()
        action = desc.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.workflow == SWEEP_WORKFLOW
        assert action.task_queue == env.settings.task_queue
        assert desc.schedule.spec.intervals == [
            ScheduleIntervalSpec(every=timedelta(hours=1))
        ]
    finally:
        await temporal.get_schedule_handle(SWEEP_SCHEDULE_ID).delete()


# ---------------------------------------------------------------------- decide (pure)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _obs(kind: str = "endpoint", created: datetime | None = None) -> Observed:
    return Observed(kind=kind, id="vpce-1" if kind == "endpoint" else "tasks/p", org_id="o",
                    connection_id="c", created_at=created or NOW - 3 * HOUR)


def test_decide_owned_by_a_running_connection() -> None:
    assert decide(_obs(), Owner(live=True, endpoint_id="vpce-1"), NOW, HOUR) is None
    # Still creating: the connection does not know its endpoint id yet.
    assert decide(_obs(), Owner(live=True, endpoint_id=None), NOW, timedelta(0)) is None
    assert decide(_obs("policy"), Owner(live=True, endpoint_id="vpce-9"), NOW, HOUR) is None


def test_decide_a_copy_counts_from_its_creation() -> None:
    young = decide(_obs(created=NOW - timedelta(minutes=5)),
                   Owner(live=True, endpoint_id="vpce-2"), NOW, HOUR)
    assert young is not None and not young.due and "copy" in young.why
    old = decide(_obs(created=NOW - 2 * HOUR), Owner(live=True, endpoint_id="vpce-2"), NOW, HOUR)
    assert old is not None and old.due


@pytest.mark.parametrize(
    ("ended_ago", "created_ago", "due"),
    [
        (timedelta(minutes=30), 3 * HOUR, False),  # ended 30 min ago: within the grace
        (timedelta(minutes=61), 3 * HOUR, True),
        (2 * HOUR, timedelta(minutes=10), False),  # created after its owner ended
        (None, timedelta(minutes=59), False),  # no owner ever: counts from creation
        (None, timedelta(minutes=60), True),
    ],
)
def test_decide_grace_since_last_owned(
    ended_ago: timedelta | None, created_ago: timedelta, due: bool
) -> None:
    owner = Owner(live=False, ended_at=None if ended_ago is None else NOW - ended_ago, why="w")
    orphan = decide(_obs(created=NOW - created_ago), owner, NOW, HOUR)
    assert orphan is not None and orphan.due is due
    assert orphan.last_owned_at == max(
        t for t in (owner.ended_at, NOW - created_ago) if t is not None
    )
