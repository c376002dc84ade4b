"""The sweeper: find privnet's endpoints and policies that no live connection owns, and
delete them once they have been unowned for a grace period.

What is looked at, and nothing else:

* VPC endpoints in privnet's endpoint VPC of every configured region
  (``PRIVNET_ENDPOINT_NETWORKS``) carrying all three tags ``privnet.dev/managed-by=privnet``, ``privnet.dev/org-id`` and
  ``privnet.dev/connection-id`` (not ``deleting``/``deleted``);
* CiliumNetworkPolicies in every task namespace carrying the labels
  ``app.kubernetes.io/managed-by=privnet``, ``privnet.dev/org-id`` and
  ``privnet.dev/connection-id``. Policies are identified by these labels, never by name.

Who owns an object: the connection its tags/labels name, when that connection's workflow
(``privnet-conn:{org}:{id}``) is running. An endpoint is a copy, not owned, when the running
connection already knows another endpoint id. Everything else is an orphan: a terminated
workflow (no compensation), a crash outside any workflow, a hand-made copy.

When it was last owned: the latest of the workflow's close time, the store row's last
update and the object's creation time (an object created after its owner ended was never
owned). It is deleted only when that is at least ``grace`` ago, so a connection being
created is never swept: its workflow is running, and objects are younger than the grace.

Deletes re-check everything first (tags/labels still privnet's and the same owner, owner
still not live, grace passed). Policies are deleted with uid and resourceVersion
preconditions, so an object replaced in between is never removed. Any doubt (Temporal or
AWS unreachable) raises, and the activity is retried: nothing is deleted on a guess.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter, Gauge
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.aws import (
    ENDPOINT_NOT_FOUND_CODES,
    TAG_CONNECTION_ID,
    TAG_MANAGED_BY,
    TAG_ORG_ID,
    AwsActivities,
    ErrorContext,
    classify_exception,
)
from activities.policy import (
    GROUP,
    LABEL_CONNECTION_ID,
    LABEL_MANAGED_BY,
    LABEL_ORG_ID,
    PLURAL_NAMESPACED,
    VERSION,
)
from settings import Settings
from workflows.contracts import (
    ACT_SWEEP_DELETE,
    ACT_SWEEP_FIND,
    MANAGED_BY,
    QUERY_STATUS,
    RETRYABLE_TRANSIENT,
    ConnectionState,
    Orphan,
    SweepDeleteInput,
    SweepDeleteResult,
    SweepInput,
    SweepReport,
    connection_workflow_id,
)

ORPHANS = Gauge(
    "privnet_orphans", "Objects no live connection owns, at the last sweep", ["kind", "due"]
)
ORPHANS_DELETED = Counter(
    "privnet_orphans_deleted_total", "Orphaned objects deleted by the sweeper", ["kind"]
)
POLICY_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_ORG_ID},{LABEL_CONNECTION_ID}"
GONE_STATES = frozenset({"deleting", "deleted"})
REQUEST_TIMEOUT = (5.0, 30.0)


@dataclass(frozen=True)
class Owner:
    """What is known about the connection an object's tags/labels name."""

    live: bool
    endpoint_id: str | None = None  # the endpoint the live connection knows (None: not yet)
    ended_at: datetime | None = None  # workflow close time / last row update
    why: str = ""


@dataclass(frozen=True)
class Observed:
    kind: str  # "endpoint" | "policy"
    id: str
    org_id: str
    connection_id: str
    created_at: datetime | None
    region: str | None = None
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None
    resource_version: str | None = None


def decide(obj: Observed, owner: Owner, now: datetime, grace: timedelta) -> Orphan | None:
    """Pure: None when ``owner`` owns ``obj``, else the orphan with its due flag."""
    if owner.live:
        copy = obj.kind == "endpoint" and owner.endpoint_id not in (None, obj.id)
        if not copy:
            return None
        why = (
            f"a copy: connection {obj.org_id}/{obj.connection_id} owns {owner.endpoint_id}, "
            f"not {obj.id}"
        )
        ended: datetime | None = None
    else:
        why = owner.why
        ended = owner.ended_at
    candidates = [t for t in (ended, obj.created_at) if t is not None]
    last_owned = max(candidates) if candidates else now
    return Orphan(
        kind="endpoint" if obj.kind == "endpoint" else "policy",
        id=obj.id,
        region=obj.region,
        namespace=obj.namespace,
        name=obj.name,
        uid=obj.uid,
        resource_version=obj.resource_version,
        org_id=obj.org_id,
        connection_id=obj.connection_id,
        why=why,
        created_at=obj.created_at,
        last_owned_at=last_owned,
        due=now - last_owned >= grace,
    )


def _tags(ep: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in ep.get("Tags") or [] if "Key" in t}


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def endpoint_observed(region: str, ep: dict[str, Any]) -> Observed | None:
    """The endpoint as the sweeper sees it; None when it is not fully privnet-tagged or
    already going away."""
    tags = _tags(ep)
    if tags.get(TAG_MANAGED_BY) != MANAGED_BY:
        return None
    org, cid = tags.get(TAG_ORG_ID), tags.get(TAG_CONNECTION_ID)
    if not org or not cid or str(ep.get("State", "")).lower() in GONE_STATES:
        return None
    return Observed(
        kind="endpoint",
        id=ep["VpcEndpointId"],
        org_id=org,
        connection_id=cid,
        created_at=_parse_time(ep.get("CreationTimestamp")),
        region=region,
    )


def policy_observed(obj: dict[str, Any]) -> Observed | None:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    org, cid = labels.get(LABEL_ORG_ID), labels.get(LABEL_CONNECTION_ID)
    if labels.get(LABEL_MANAGED_BY) != MANAGED_BY or not org or not cid:
        return None
    ns, name = meta.get("namespace"), meta.get("name")
    return Observed(
        kind="policy",
        id=f"{ns}/{name}",
        org_id=org,
        connection_id=cid,
        created_at=_parse_time(meta.get("creationTimestamp")),
        namespace=ns,
        name=name,
        uid=meta.get("uid"),
        resource_version=meta.get("resourceVersion"),
    )


class SweeperActivities:
    """Find and delete orphans. Async activities; blocking calls run in threads."""

    def __init__(
        self,
        settings: Settings,
        store: Any,
        temporal: Client,
        aws: AwsActivities | None = None,
        custom: k8s.CustomObjectsApi | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.temporal = temporal
        self.aws = aws or AwsActivities(settings)
        if custom is None:
            from activities.kubernetes import KubernetesActivities

            custom = KubernetesActivities.from_settings(settings).custom
        self.custom = custom

    # ------------------------------------------------------------------ reading

    def _list_endpoints(self, region: str) -> list[dict[str, Any]]:
        vpc_ids = [n.vpc_id for n in self.settings.networks_for(region)]
        ec2 = self.aws.client("ec2", region)
        found: list[dict[str, Any]] = []
        try:
            pages = ec2.get_paginator("describe_vpc_endpoints").paginate(
                Filters=[
                    {"Name": f"tag:{TAG_MANAGED_BY}", "Values": [MANAGED_BY]},
                    {"Name": "vpc-id", "Values": vpc_ids},
                ]
            )
            for page in pages:
                found.extend(page.get("VpcEndpoints") or [])
        except (ClientError, BotoCoreError) as exc:
            ctx = ErrorContext(region=region)
            raise classify_exception(exc, "DescribeVpcEndpoints", ctx) from exc
        return found

    def _list_policies(self, namespace: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"label_selector": POLICY_SELECTOR, "limit": 500}
            if token:
                kwargs["_continue"] = token
            page = self._kube(
                partial(
                    self.custom.list_namespaced_custom_object,
                    GROUP, VERSION, namespace, PLURAL_NAMESPACED,
                    _request_timeout=REQUEST_TIMEOUT, **kwargs,
                )
            )
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    def _kube(self, fn: Any) -> Any:
        try:
            return fn()
        except ApiException:
            raise
        except Exception as exc:  # noqa: BLE001 - urllib3/OSError: unreachable, retry
            raise ApplicationError(
                f"cannot reach the Kubernetes API server: {exc}; will retry",
                type=RETRYABLE_TRANSIENT,
            ) from exc

    async def owner(self, org_id: str, connection_id: str) -> Owner:
        """Whether the connection is live, and since when it is not. Raises when unsure."""
        wid = connection_workflow_id(org_id, connection_id)
        row = await asyncio.to_thread(self.store.get, org_id, connection_id, False)
        handle = self.temporal.get_workflow_handle(wid)
        try:
            desc = await handle.describe()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            desc = None
        if desc is not None and desc.status == WorkflowExecutionStatus.RUNNING:
            endpoint = row.vpc_endpoint_id if row is not None else None
            try:
                state = await handle.query(
                    QUERY_STATUS, result_type=ConnectionState, rpc_timeout=timedelta(seconds=10)
                )
                endpoint = state.vpc_endpoint_id or endpoint
            except Exception:  # noqa: BLE001 - the row's endpoint id is enough
                pass
            return Owner(live=True, endpoint_id=endpoint)
        times = [desc.close_time if desc else None, row.updated_at if row else None]
        ended = max((t for t in times if t is not None), default=None)
        if desc is not None:
            status = desc.status.name.lower() if desc.status else "closed"
            why = f"workflow {wid} is {status}"
            if row is not None:
                why += f" (last status {row.status})"
        elif row is not None:
            why = f"connection {org_id}/{connection_id} has no workflow (last status {row.status})"
        else:
            why = f"no connection {org_id}/{connection_id} exists"
        return Owner(live=False, ended_at=ended, why=why)

    async def _observed(self) -> tuple[list[Observed], int, int]:
        objects: list[Observed] = []
        endpoints = policies = 0
        for region in sorted(self.settings.endpoint_networks):
            for ep in await asyncio.to_thread(self._list_endpoints, region):
                obs = endpoint_observed(region, ep)
                if obs is not None:
                    endpoints += 1
                    objects.append(obs)
            activity.heartbeat(f"endpoints of {region}")
        for ns in self.settings.task_namespaces:
            try:
                items = await asyncio.to_thread(self._list_policies, ns)
            except ApiException as exc:
                raise _kube_error(exc, f"listing policies in namespace {ns}") from exc
            for obj in items:
                obs = policy_observed(obj)
                if obs is not None:
                    policies += 1
                    objects.append(obs)
            activity.heartbeat(f"policies of {ns}")
        return objects, endpoints, policies

    # ------------------------------------------------------------------ activities

    @activity.defn(name=ACT_SWEEP_FIND)
    async def find_orphans(self, inp: SweepInput) -> SweepReport:
        objects, n_endpoints, n_policies = await self._observed()
        owners: dict[tuple[str, str], Owner] = {}
        orphans: list[Orphan] = []
        for obj in objects:
            key = (obj.org_id, obj.connection_id)
            if key not in owners:
                owners[key] = await self.owner(*key)
            # The clock is read after the owner: a connection ending meanwhile is not due.
            orphan = decide(obj, owners[key], datetime.now(UTC), inp.grace)
            if orphan is not None:
                orphans.append(orphan)
        for kind in ("endpoint", "policy"):
            for due in (True, False):
                n = sum(1 for o in orphans if o.kind == kind and o.due == due)
                ORPHANS.labels(kind=kind, due=str(due).lower()).set(n)
        return SweepReport(
            checked_at=datetime.now(UTC),
            dry_run=inp.dry_run,
            grace_seconds=inp.grace.total_seconds(),
            endpoints_seen=n_endpoints,
            policies_seen=n_policies,
            orphans=sorted(orphans, key=lambda o: (o.kind, o.id)),
        )

    @activity.defn(name=ACT_SWEEP_DELETE)
    async def delete_orphan(self, inp: SweepDeleteInput) -> SweepDeleteResult:
        o = inp.orphan
        if o.kind == "endpoint":
            return await self._delete_endpoint(o, inp.grace)
        return await self._delete_policy(o, inp.grace)

    async def _still_orphan(self, obs: Observed, grace: timedelta) -> str | None:
        """None when the object may go; else why it stays."""
        owner = await self.owner(obs.org_id, obs.connection_id)
        again = decide(obs, owner, datetime.now(UTC), grace)
        if again is None:
            return f"{obs.id} is owned by a live connection again"
        if not again.due:
            return f"{obs.id} has been unowned for less than the grace period"
        return None

    async def _delete_endpoint(self, o: Orphan, grace: timedelta) -> SweepDeleteResult:
        region = o.region or self.settings.aws_region
        ec2 = self.aws.client("ec2", region)
        ctx = ErrorContext(region=region, endpoint_id=o.id)
        try:
            eps = await asyncio.to_thread(
                lambda: ec2.describe_vpc_endpoints(VpcEndpointIds=[o.id])["VpcEndpoints"]
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ENDPOINT_NOT_FOUND_CODES:
                return SweepDeleteResult(deleted=False, detail=f"{o.id} is already gone")
            raise classify_exception(exc, "DescribeVpcEndpoints", ctx) from exc
        except BotoCoreError as exc:
            raise classify_exception(exc, "DescribeVpcEndpoints", ctx) from exc
        obs = endpoint_observed(region, eps[0]) if eps else None
        if obs is None:
            return SweepDeleteResult(deleted=False, detail=f"{o.id} is gone or not privnet's")
        if (obs.org_id, obs.connection_id) != (o.org_id, o.connection_id):
            return SweepDeleteResult(deleted=False, detail=f"{o.id} was re-tagged: kept")
        why = await self._still_orphan(obs, grace)
        if why is not None:
            return SweepDeleteResult(deleted=False, detail=why)
        try:
            resp = await asyncio.to_thread(lambda: ec2.delete_vpc_endpoints(VpcEndpointIds=[o.id]))
        except (ClientError, BotoCoreError) as exc:
            raise classify_exception(exc, "DeleteVpcEndpoints", ctx) from exc
        for item in resp.get("Unsuccessful") or []:
            code = str(item.get("Error", {}).get("Code", ""))
            if code in ENDPOINT_NOT_FOUND_CODES:
                return SweepDeleteResult(deleted=False, detail=f"{o.id} is already gone")
            raise ApplicationError(
                f"DeleteVpcEndpoints {o.id}: {code}: {item.get('Error', {}).get('Message')}",
                type=RETRYABLE_TRANSIENT,
            )
        ORPHANS_DELETED.labels(kind="endpoint").inc()
        activity.logger.info("swept endpoint %s (%s)", o.id, o.why)
        return SweepDeleteResult(deleted=True, detail=f"deleted {o.id}: {o.why}")

    async def _delete_policy(self, o: Orphan, grace: timedelta) -> SweepDeleteResult:
        ns, name = o.namespace or "", o.name or ""
        try:
            current = await asyncio.to_thread(
                self._kube,
                lambda: self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL_NAMESPACED, name, _request_timeout=REQUEST_TIMEOUT
                ),
            )
        except ApiException as exc:
            if exc.status == 404:
                return SweepDeleteResult(deleted=False, detail=f"{o.id} is already gone")
            raise _kube_error(exc, f"reading policy {o.id}") from exc
        obs = policy_observed(current)
        if obs is None or obs.uid != o.uid:
            return SweepDeleteResult(deleted=False, detail=f"{o.id} was replaced: kept")
        if (obs.org_id, obs.connection_id) != (o.org_id, o.connection_id):
            return SweepDeleteResult(deleted=False, detail=f"{o.id} was relabelled: kept")
        why = await self._still_orphan(obs, grace)
        if why is not None:
            return SweepDeleteResult(deleted=False, detail=why)
        options = k8s.V1DeleteOptions(
            preconditions=k8s.V1Preconditions(uid=obs.uid, resource_version=obs.resource_version)
        )
        try:
            await asyncio.to_thread(
                self._kube,
                lambda: self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL_NAMESPACED, name, body=options,
                    _request_timeout=REQUEST_TIMEOUT,
                ),
            )
        except ApiException as exc:
            if exc.status == 404:
                return SweepDeleteResult(deleted=False, detail=f"{o.id} is already gone")
            if exc.status == 409:
                return SweepDeleteResult(
                    deleted=False, detail=f"{o.id} changed since it was read: kept"
                )
            raise _kube_error(exc, f"deleting policy {o.id}") from exc
        ORPHANS_DELETED.labels(kind="policy").inc()
        activity.logger.info("swept policy %s (%s)", o.id, o.why)
        return SweepDeleteResult(deleted=True, detail=f"deleted {o.id}: {o.why}")


def _kube_error(exc: ApiException, what: str) -> ApplicationError:
    status = exc.status or 0
    if status == 403:
        return ApplicationError(
            f"the Kubernetes API refused {what} (403): grant privnet's worker list/get/delete "
            "on ciliumnetworkpolicies.cilium.io in every task namespace (deploy/rbac.yaml)",
            type="KUBERNETES_FORBIDDEN",
            non_retryable=True,
        )
    return ApplicationError(
        f"Kubernetes API error {status} while {what}; will retry", type=RETRYABLE_TRANSIENT
    )
