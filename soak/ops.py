"""Random operations through the public surfaces, recorded as a history (Jepsen's shape).

Each operation is drawn from the seeded RNG and sent through what a real caller uses: the
Python client (``ConnectionsClient``) or the HTTP API for connections and limits, the
customer's side of sandbox AWS for accepting/rejecting and for AWS moving IPs, and the
Kubernetes client over HTTP for someone deleting a policy by hand. Every call is recorded
with when it started and ended (monotonic, the sandbox clock's base; and wall time, the
timeline's) and its outcome: ``ok``, ``fail`` (a definite answer: nothing happened) or
``info`` (unknown: it may or may not have happened), which is what the checker needs.

A transient error (the dev server restarting, a 5xx) is retried a few times, as a real
caller would; a call that still has no answer is ``info``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from workflows.contracts import ConnectionStatus, policy_name

# Service kinds of the stack's customer account (sandbox/aws/seed.py).
KINDS = ("allowed", "not_allowed", "acceptance_required", "other_region")
ID_NAMES = ("db", "cache", "kafka", "api")  # the same ids in every org, on purpose
TRANSIENT_HTTP = {429, 500, 502, 503, 504}
DEFINITE = {"InvalidInput", "NotFound", "Conflict"}  # ConnectionsClient's refusals
WEIGHTS = {
    "create": 30, "create_again": 5, "create_conflict": 3, "delete": 14, "cancel": 5,
    "retry": 5, "limit_set": 5, "accept": 8, "reject": 3, "delete_policy": 5,
    "replace_ips": 5,
}


@dataclass
class Op:
    n: int
    kind: str
    org: str
    cid: str | None
    surface: str
    t0: float  # time.monotonic() (the sandbox clock's base)
    wall0: datetime
    t1: float = 0.0
    wall1: datetime | None = None
    outcome: str = "info"  # ok | fail | info
    detail: str = ""
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["wall0"] = self.wall0.isoformat()
        d["wall1"] = self.wall1.isoformat() if self.wall1 else None
        return d


@dataclass
class Conn:
    org: str
    cid: str
    kind: str
    service: str
    rejected: bool = False  # its create was answered Rejected (the org limit)


class Driver:
    """Draws and runs operations; ``ops`` is the history the checker reads."""

    def __init__(self, *, rng: random.Random, client: Any, api_url: str, api_token: str,
                 aws: Any, kube_url: str, services: dict[str, str], orgs: list[str],
                 namespaces: list[str], default_limit: int) -> None:
        self.rng = rng
        self.client = client
        self.http = httpx.AsyncClient(base_url=api_url, timeout=30,
                                      headers={"Authorization": f"Bearer {api_token}"})
        self.aws = aws
        self.kube_url = kube_url
        self.services = services
        self.orgs = orgs
        self.namespaces = namespaces
        self.default_limit = default_limit
        self.ops: list[Op] = []
        self.conns: dict[tuple[str, str], Conn] = {}
        self._next_id: Counter[str] = Counter()

    async def close(self) -> None:
        await self.http.aclose()

    # ------------------------------------------------------------------ the loop

    async def run(self, until: float, concurrency: int = 4) -> None:
        async def loop() -> None:
            while time.monotonic() < until:
                await self.step()
                await asyncio.sleep(self.rng.uniform(0.05, 0.4))

        await asyncio.gather(*(loop() for _ in range(concurrency)))

    async def step(self) -> None:
        kinds, weights = zip(*WEIGHTS.items(), strict=True)
        kind = self.rng.choices(kinds, weights)[0]
        await getattr(self, f"op_{kind}")()

    def _start(self, kind: str, org: str, cid: str | None, surface: str, **args: Any) -> Op:
        op = Op(n=len(self.ops), kind=kind, org=org, cid=cid, surface=surface,
                t0=time.monotonic(), wall0=datetime.now(UTC), args=args)
        self.ops.append(op)
        return op

    @staticmethod
    def _end(op: Op, outcome: str, detail: str = "") -> None:
        op.t1, op.wall1 = time.monotonic(), datetime.now(UTC)
        op.outcome, op.detail = outcome, detail[:300]

    def _pick(self, kinds: tuple[str, ...] | None = None) -> Conn | None:
        """A known connection; mostly one not rejected by the limit (those are most of
        them and their workflow has ended), sometimes any."""
        pool = [c for c in self.conns.values() if kinds is None or c.kind in kinds]
        live = [c for c in pool if not c.rejected]
        if live and self.rng.random() < 0.9:
            pool = live
        return self.rng.choice(pool) if pool else None

    async def _retrying(self, op: Op, call: Any) -> Any:
        """Run ``call`` (returns (outcome, detail, value)); retry transient errors."""
        last = ""
        for attempt in range(6):
            try:
                outcome, detail, value = await call()
                if outcome != "retry":
                    self._end(op, outcome, detail)
                    return value
                last = detail
            except (httpx.TransportError, OSError) as err:
                last = f"{type(err).__name__}: {err}"
            except Exception as err:  # the client's own errors
                if type(err).__name__ in DEFINITE:  # an answer: nothing was done
                    code = getattr(err, "code", "") or type(err).__name__
                    self._end(op, "fail", f"{code}: {err}")
                    return None
                last = f"{type(err).__name__}: {err}"
            await asyncio.sleep(0.5 * (attempt + 1))
        self._end(op, "info", f"no answer: {last}")
        return None

    # ------------------------------------------------------------------ connections

    def _new_conn(self, org: str) -> Conn:
        kind = self.rng.choices(KINDS, (50, 15, 20, 15))[0]
        name = self.rng.choice(ID_NAMES)
        self._next_id[f"{org}/{name}"] += 1
        cid = f"{name}-{self._next_id[f'{org}/{name}']}"
        return Conn(org=org, cid=cid, kind=kind, service=self.services[kind])

    async def _create(self, conn: Conn, kind: str, service: str | None = None) -> None:
        service = service or conn.service
        surface = self.rng.choice(("client", "http"))
        op = self._start(kind, conn.org, conn.cid, surface, service=service, svc_kind=conn.kind)

        async def by_client() -> tuple[str, str, Any]:
            view = await self.client.create(conn.org, service, connection_id=conn.cid,
                                            wait_admission=_seconds(1))
            return "ok", f"{view.status} {view.reason or ''}".strip(), view

        async def by_http() -> tuple[str, str, Any]:
            r = await self.http.post(f"/v1/orgs/{conn.org}/connections", json={
                "endpoint_service_name": service, "connection_id": conn.cid})
            if r.status_code in TRANSIENT_HTTP:
                return "retry", f"HTTP {r.status_code} {r.text[:200]}", None
            if r.status_code == 202:
                return "ok", str(r.json().get("status")), r.json()
            code = (r.json().get("error") or {}).get("code", "")
            if r.status_code == 409 and code == "LIMIT_REACHED":
                return "ok", "Rejected LIMIT_REACHED", None  # the create happened, rejected
            return "fail", f"HTTP {r.status_code} {code}", None

        await self._retrying(op, by_client if surface == "client" else by_http)
        if kind == "create" and op.outcome == "ok" and op.detail.startswith("Rejected"):
            conn.rejected = True

    async def op_create(self) -> None:
        conn = self._new_conn(self.rng.choice(self.orgs))
        await self._create(conn, "create")
        # Known to the other operations only once its create was sent (a concurrent
        # "same id, other service" would otherwise be the first create).
        self.conns[(conn.org, conn.cid)] = conn

    async def op_create_again(self) -> None:
        conn = self._pick()
        if conn is not None:
            await self._create(conn, "create_again")

    async def op_create_conflict(self) -> None:
        """The same id for another service: refused with CONNECTION_EXISTS, nothing changed."""
        conn = self._pick()
        if conn is None:
            return
        other = next(s for k, s in self.services.items() if k != conn.kind and s != conn.service)
        await self._create(conn, "create_conflict", other)

    async def _stop(self, kind: str) -> None:
        conn = self._pick()
        if conn is None:
            return
        surface = "http" if kind == "delete" and self.rng.random() < 0.5 else "client"
        op = self._start(kind, conn.org, conn.cid, surface)

        async def by_client() -> tuple[str, str, Any]:
            fn = getattr(self.client, kind)
            view = await fn(conn.org, conn.cid)
            return "ok", str(view.status), view

        async def by_http() -> tuple[str, str, Any]:
            r = await self.http.delete(f"/v1/orgs/{conn.org}/connections/{conn.cid}")
            if r.status_code in TRANSIENT_HTTP:
                return "retry", f"HTTP {r.status_code} {r.text[:200]}", None
            if r.status_code in (200, 202):
                return "ok", str(r.json().get("status")), None
            code = (r.json().get("error") or {}).get("code", "")
            return "fail", f"HTTP {r.status_code} {code}", None

        await self._retrying(op, by_http if surface == "http" else by_client)

    async def op_delete(self) -> None:
        await self._stop("delete")

    async def op_cancel(self) -> None:
        await self._stop("cancel")

    async def op_retry(self) -> None:
        await self._stop("retry")

    async def op_limit_set(self) -> None:
        org = self.rng.choice(self.orgs)
        limit = self.rng.choice((1, 2, 3, 4))
        op = self._start("limit_set", org, None, "client", limit=limit)

        async def call() -> tuple[str, str, Any]:
            usage = await self.client.set_limit(org, limit)
            return "ok", f"limit {usage.limit} usage {usage.usage}", None

        await self._retrying(op, call)

    # ------------------------------------------------------------------ the world

    def _endpoint(self, conn: Conn, states: tuple[str, ...]) -> str | None:
        for row in self.aws.inventory():
            tags = row["tags"]
            if (tags.get("privnet.dev/org-id"), tags.get("privnet.dev/connection-id")) == (
                    conn.org, conn.cid) and str(row["state"]) in states:
                return str(row["vpc_endpoint_id"])
        return None

    async def _customer(self, kind: str, accept: bool) -> None:
        conn = self._pick(("acceptance_required",))
        if conn is None:
            return
        ep = await asyncio.to_thread(self._endpoint, conn, (
            ("pendingAcceptance",) if accept else ("pendingAcceptance", "available", "pending")))
        if ep is None:
            return
        op = self._start(kind, conn.org, conn.cid, "aws", endpoint=ep)
        fn = self.aws.accept_endpoint if accept else self.aws.reject_endpoint
        try:
            res = await asyncio.to_thread(fn, ep)
        except Exception as err:
            self._end(op, "fail", f"{type(err).__name__}: {err}")
            return
        bad = res.get("unsuccessful") or []
        self._end(op, "fail" if bad else "ok", str(bad or res.get("state")))
        if accept and not bad and self.rng.random() < 0.5:
            await self._stop_conn(conn, "retry")  # the dashboard: "I accepted, look now"

    async def _stop_conn(self, conn: Conn, kind: str) -> None:
        op = self._start(kind, conn.org, conn.cid, "client")

        async def call() -> tuple[str, str, Any]:
            view = await getattr(self.client, kind)(conn.org, conn.cid)
            return "ok", str(view.status), None

        await self._retrying(op, call)

    async def op_accept(self) -> None:
        await self._customer("accept", True)

    async def op_reject(self) -> None:
        await self._customer("reject", False)

    async def op_replace_ips(self) -> None:
        conn = self._pick(("allowed", "other_region", "acceptance_required"))
        if conn is None:
            return
        ep = await asyncio.to_thread(self._endpoint, conn, ("available",))
        if ep is None:
            return
        op = self._start("replace_ips", conn.org, conn.cid, "aws", endpoint=ep)
        try:
            ips = await asyncio.to_thread(self.aws.replace_ips, ep)
            self._end(op, "ok", ",".join(ips))
        except Exception as err:
            self._end(op, "fail", f"{type(err).__name__}: {err}")

    async def op_delete_policy(self) -> None:
        """Someone deletes a connection's policy by hand (kubectl delete cnp ...)."""
        conn = self._pick()
        if conn is None:
            return
        ns = self.rng.choice(self.namespaces)
        name = policy_name(conn.org, conn.cid)
        op = self._start("delete_policy", conn.org, conn.cid, "kube", namespace=ns, name=name)

        def call() -> tuple[str, str]:
            from kubernetes import client
            from kubernetes.client.rest import ApiException

            api = client.ApiClient(client.Configuration(host=self.kube_url))
            try:
                client.CustomObjectsApi(api).delete_namespaced_custom_object(
                    "cilium.io", "v2", ns, "ciliumnetworkpolicies", name)
                return "ok", "deleted"
            except ApiException as err:
                return ("fail", "not there") if err.status == 404 else ("info", str(err.status))
            finally:
                api.close()

        try:
            outcome, detail = await asyncio.to_thread(call)
        except Exception as err:
            outcome, detail = "info", f"{type(err).__name__}: {err}"
        self._end(op, outcome, detail)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = {}
        for op in self.ops:
            out.setdefault(op.kind, Counter())[op.outcome] += 1
        return {k: dict(v) for k, v in sorted(out.items())}


def _seconds(s: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=s)


STABLE = {ConnectionStatus.ACTIVE.value, ConnectionStatus.WAITING_FOR_ACCEPTANCE.value} | {
    s.value for s in ConnectionStatus if s.terminal}
