"""The soak's checker: invariants over the operation history and the ground truth.

``collect`` reads the truth from the sandboxes (sandbox AWS's inventory and its own record
of creations and deletions over time, the objects sandbox Kubernetes stored), the store's
tables and Temporal (describe, history, the status query): never from the code under
test's own view of what it did. ``check`` is a pure function of the history and that
truth, so its rules are unit-tested on made-up worlds (tests/test_soak_checker.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from soak.ops import Conn, Op
from workflows.contracts import ConnectionStatus, policy_name

S = ConnectionStatus
TAG_ORG = "privnet.dev/org-id"
TAG_CONN = "privnet.dev/connection-id"
LIVE = {S.ACTIVE.value, S.DEGRADED.value, S.WAITING_FOR_ACCEPTANCE.value, S.PENDING.value,
        S.CHECKING_PRINCIPAL.value, S.CREATING_ENDPOINT.value, S.WAITING_FOR_IP.value,
        S.APPLYING_POLICY.value, S.DELETING.value, S.CLEANUP_BLOCKED.value}
# A limit change reaches the guard by a signal: until then the old limit may still decide.
LIMIT_SLACK_SECONDS = 30.0


@dataclass
class ConnTruth:
    org: str
    cid: str
    store: dict[str, Any] | None = None  # the connections row
    events: list[dict[str, Any]] = field(default_factory=list)  # seq, at, status, detail
    wf_status: str | None = None  # RUNNING, COMPLETED, ... or None: no such workflow
    sa_status: str | None = None
    query_status: str | None = None
    pending_activities: int = 0
    open_timers: int = 0
    task_attempt: int = 0  # the pending workflow task's attempt (0: none pending)
    history_tail: list[str] = field(default_factory=list)


@dataclass
class GuardTruth:
    org: str
    wf_status: str | None
    pending_activities: int = 0
    open_timers: int = 0
    task_attempt: int = 0
    history_tail: list[str] = field(default_factory=list)


@dataclass
class Truth:
    conns: dict[tuple[str, str], ConnTruth]
    aws_history: list[dict[str, Any]]  # sandbox AWS: created / deleted ... with t
    inventory: list[dict[str, Any]]  # sandbox AWS: every endpoint now
    policies: list[dict[str, Any]]  # sandbox Kubernetes: every stored CNP
    guards: dict[str, GuardTruth]
    namespaces: list[str]
    org_label_key: str = TAG_ORG


@dataclass
class Violation:
    rule: str
    org: str
    cid: str | None
    message: str

    def __str__(self) -> str:
        who = f"{self.org}/{self.cid}" if self.cid else self.org
        return f"[{self.rule}] {who}: {self.message}"


# ---------------------------------------------------------------------- expectations


def _forward(kind: str, customer: str | None) -> set[str]:
    """What a create asks for, by the service it names (and the customer's answer)."""
    if kind == "not_allowed":
        return {S.FAILED.value}
    if kind == "acceptance_required":
        if customer == "accept":
            return {S.ACTIVE.value}
        if customer == "reject":
            return {S.FAILED.value, S.REJECTED.value}
        return {S.WAITING_FOR_ACCEPTANCE.value}
    return {S.ACTIVE.value}


def expected(conn: Conn, ops: list[Op]) -> tuple[set[str], list[Op]]:
    """The final statuses the connection's last operations allow, and the stop operations
    that decided it (their time matters: a stop sent after the connection had already
    ended changes nothing)."""
    customer: str | None = None
    maybe_customer: set[str] = set()
    stops: list[Op] = []
    for op in sorted(ops, key=lambda o: o.t0):
        if op.kind in ("accept", "reject") and op.outcome == "ok":
            customer = op.kind
            maybe_customer.add(op.kind)
        elif op.kind in ("delete", "cancel") and op.outcome in ("ok", "info"):
            stops.append(op)
    allowed = {s for c in {customer} | maybe_customer for s in _forward(conn.kind, c)}
    allowed.add(S.REJECTED.value)  # LIMIT_REACHED (its reason is checked apart)
    definite = [s for s in stops if s.outcome == "ok"]
    if definite:
        last = definite[-1]
        # Stops sent at overlapping times may land in either order: any of them may win.
        deciding = [s for s in definite if s.t1 >= last.t0]
        allowed = {_stop_status(s) for s in deciding}
        allowed |= {_stop_status(s) for s in stops if s.outcome == "info" and s.t1 >= last.t0}
        return allowed, deciding
    allowed |= {_stop_status(s) for s in stops}
    return allowed, []


def _stop_status(op: Op) -> str:
    return S.DELETED.value if op.kind == "delete" else S.CANCELLED.value


def _ended_before(truth: ConnTruth, status: str, when: datetime) -> bool:
    """The timeline recorded ``status`` (terminal) before ``when``."""
    return any(e["status"] == status and e["at"] <= when for e in truth.events)


# ---------------------------------------------------------------------- the rules


def check(ops: list[Op], conns: dict[tuple[str, str], Conn], truth: Truth,
          orgs: list[str], default_limit: int) -> list[Violation]:
    out: list[Violation] = []
    by_conn: dict[tuple[str, str], list[Op]] = defaultdict(list)
    for op in ops:
        if op.cid is not None:
            by_conn[(op.org, op.cid)].append(op)
    out += _final_statuses(ops, by_conn, conns, truth)
    out += _agreement(by_conn, truth)
    out += _endpoints_and_policies(truth, set(orgs))
    out += _limits(ops, truth, orgs, default_limit, by_conn)
    out += _timelines(truth)
    out += _stuck(truth)
    return out


def _final_statuses(ops: list[Op], by_conn: dict[tuple[str, str], list[Op]],
                    conns: dict[tuple[str, str], Conn], truth: Truth) -> list[Violation]:
    out: list[Violation] = []
    for key, conn_ops in by_conn.items():
        org, cid = key
        conn = conns.get(key)
        if conn is None:
            continue
        t = truth.conns.get(key)
        creates = [o for o in conn_ops if o.kind in ("create", "create_again")]
        sent = any(o.outcome == "ok" for o in creates)
        if t is None or t.store is None or t.wf_status is None:
            if sent:
                out.append(Violation("lost", org, cid, "created (the caller got an answer) "
                                     "but neither the store nor Temporal has it"))
            continue
        for o in conn_ops:
            if o.kind == "create_conflict" and o.outcome == "ok":
                out.append(Violation("conflict", org, cid, f"op {o.n}: a create of the same "
                                     f"id for another service was taken ({o.detail})"))
        for o in creates:
            if o.outcome == "fail":
                out.append(Violation("create-refused", org, cid,
                                     f"op {o.n}: {o.kind} refused: {o.detail}"))
        final = t.store["status"]
        allowed, deciding = expected(conn, conn_ops)
        if final not in allowed:
            # A stop that reached a connection already ended changes nothing.
            excused = bool(deciding) and S(final).terminal and all(
                _ended_before(t, final, s.wall0) for s in deciding)
            if not excused:
                out.append(Violation(
                    "final-status", org, cid,
                    f"ended {final} ({t.store.get('reason')}); its operations allow "
                    f"{sorted(allowed)} (last: "
                    f"{[f'{o.n}:{o.kind}:{o.outcome}' for o in conn_ops[-4:]]})"))
        if final == S.REJECTED.value and t.store.get("reason") != "LIMIT_REACHED" and not any(
                o.kind == "reject" for o in conn_ops):
            out.append(Violation("final-status", org, cid,
                                 f"Rejected for {t.store.get('reason')}, not the org limit"))
    return out


def _agreement(by_conn: dict[tuple[str, str], list[Op]], truth: Truth) -> list[Violation]:
    out: list[Violation] = []
    for (org, cid), t in truth.conns.items():
        if t.store is None or t.wf_status is None:
            if t.store is not None or t.wf_status is not None:
                out.append(Violation("agreement", org, cid, f"store row "
                                     f"{'present' if t.store else 'missing'}, workflow "
                                     f"{t.wf_status or 'missing'}"))
            continue
        seen = {"store": t.store["status"], "query": t.query_status,
                "search attribute": t.sa_status}
        if len(set(seen.values())) != 1:
            out.append(Violation("agreement", org, cid, f"statuses disagree: {seen}"))
        terminal = S(t.store["status"]).terminal
        if terminal != (t.wf_status != "RUNNING"):
            out.append(Violation("agreement", org, cid,
                                 f"store says {t.store['status']}, workflow {t.wf_status}"))
    return out


def _owner(labels_or_tags: dict[str, Any]) -> tuple[str | None, str | None]:
    return labels_or_tags.get(TAG_ORG), labels_or_tags.get(TAG_CONN)


def _endpoints_and_policies(truth: Truth, orgs: set[str]) -> list[Violation]:
    out: list[Violation] = []
    created: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in truth.aws_history:
        if e["event"] == "created" and e.get("org_id") in orgs:
            created[(e["org_id"], e["connection_id"])].append(e["vpc_endpoint_id"])
    for (org, cid), ids in created.items():
        if len(ids) > 1:
            out.append(Violation("duplicate-endpoint", org, cid,
                                 f"{len(ids)} endpoints created: {ids}"))
    live_eps: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in truth.inventory:
        owner = _owner(row["tags"])
        if owner[0] not in orgs or str(row["state"]).lower() == "deleted":
            continue
        live_eps[(str(owner[0]), str(owner[1]))].append(row)
    pols: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for p in truth.policies:
        owner = _owner(p["metadata"].get("labels") or {})
        if owner[0] in orgs:
            pols[(str(owner[0]), str(owner[1]))].append(p)

    def status(key: tuple[str, str]) -> str | None:
        t = truth.conns.get(key)
        return t.store["status"] if t is not None and t.store is not None else None

    for key, rows in live_eps.items():
        st = status(key)
        if st not in LIVE:
            out.append(Violation("leaked-endpoint", key[0], key[1], f"connection {st}: "
                                 f"{[(r['vpc_endpoint_id'], r['state']) for r in rows]} left"))
    for key, ps in pols.items():
        st = status(key)
        if st not in LIVE:
            out.append(Violation("leaked-policy", key[0], key[1], f"connection {st}: "
                                 f"{[p['metadata']['name'] for p in ps]} left"))
        for p in ps:
            if p["metadata"]["name"] != policy_name(*key):
                out.append(Violation("policy-name", key[0], key[1],
                                     f"policy {p['metadata']['name']} not under its own name"))
    for key, t in truth.conns.items():
        if t.store is None or t.store["status"] != S.ACTIVE.value:
            continue
        out += _active_policies(truth, key, t, live_eps.get(key, []), pols.get(key, []))
    return out


def _active_policies(truth: Truth, key: tuple[str, str], t: ConnTruth,
                     eps: list[dict[str, Any]], ps: list[dict[str, Any]]) -> list[Violation]:
    org, cid = key
    out: list[Violation] = []
    if len(eps) != 1:
        return [Violation("active", org, cid, f"Active with {len(eps)} live endpoints")]
    ep = eps[0]
    if t.store is not None and t.store.get("vpc_endpoint_id") != ep["vpc_endpoint_id"]:
        out.append(Violation("active", org, cid, f"store names {t.store.get('vpc_endpoint_id')},"
                             f" AWS holds {ep['vpc_endpoint_id']}"))
    want = sorted(f"{ip}/32" for ip in ep["ips"])
    namespaces = sorted(p["metadata"]["namespace"] for p in ps)
    if namespaces != sorted(truth.namespaces):
        out.append(Violation("active", org, cid,
                             f"policies in {namespaces}, want one in each of {truth.namespaces}"))
    for p in ps:
        spec = p.get("spec") or {}
        selector = (spec.get("endpointSelector") or {}).get("matchLabels") or {}
        if selector != {truth.org_label_key: org} or (spec.get("endpointSelector") or {}).get(
                "matchExpressions"):
            out.append(Violation("active", org, cid, f"{p['metadata']['namespace']}: selects "
                                 f"{spec.get('endpointSelector')}, not exactly org {org}"))
        cidrs = sorted(c for r in spec.get("egress", []) for c in r.get("toCIDR", []))
        others = [r for r in spec.get("egress", []) if set(r) - {"toCIDR", "toPorts"}]
        if cidrs != want or others:
            out.append(Violation("active", org, cid, f"{p['metadata']['namespace']}: allows "
                                 f"{cidrs} {others or ''}; the endpoint's IPs are {want}"))
    return out


def _limit_bound(ops: list[Op], org: str, default: int, since: float, until: float) -> int:
    """The highest limit that may have decided a grant in [since, until]: every value in
    effect then, each one lasting until the next was set plus the signal's slack."""
    sets = sorted((o for o in ops if o.kind == "limit_set" and o.org == org
                   and o.outcome in ("ok", "info")), key=lambda o: o.t0)
    in_effect = [(float("-inf"), default)] + [(o.t0, int(o.args["limit"])) for o in sets]
    bound = 0
    for i, (start, value) in enumerate(in_effect):
        end = in_effect[i + 1][0] + LIMIT_SLACK_SECONDS if i + 1 < len(in_effect) else float("inf")
        if start <= until and end >= since:
            bound = max(bound, value)
    return bound


def _limits(ops: list[Op], truth: Truth, orgs: list[str], default: int,
            by_conn: dict[tuple[str, str], list[Op]]) -> list[Violation]:
    """At no moment did an org hold more endpoints than its limit allowed (the sandbox's
    own record of creations and deletions)."""
    out: list[Violation] = []
    first_create: dict[tuple[str, str], float] = {}
    for key, conn_ops in by_conn.items():
        ts = [o.t0 for o in conn_ops if o.kind in ("create", "create_again", "create_conflict")]
        if ts:
            first_create[key] = min(ts)
    for org in orgs:
        live: dict[str, tuple[str, float]] = {}  # endpoint id -> (connection, its create t0)
        for e in sorted((e for e in truth.aws_history if e.get("org_id") == org),
                        key=lambda e: e["t"]):
            ep = e["vpc_endpoint_id"]
            if e["event"] == "created":
                key = (org, e["connection_id"])
                live[ep] = (e["connection_id"], first_create.get(key, e["t"]))
                # The last of the live ones was granted after its create was sent, with all
                # of them holding slots: the limit in effect from then on bounds them.
                since = max(t0 for _, t0 in live.values())
                bound = _limit_bound(ops, org, default, since, e["t"])
                if len(live) > bound:
                    out.append(Violation("limit", org, e["connection_id"], (
                        f"{len(live)} endpoints at once ({sorted(c for c, _ in live.values())})"
                        f", the limit allowed at most {bound}")))
            elif e["event"] == "deleted":
                live.pop(ep, None)
    return out


def _timelines(truth: Truth) -> list[Violation]:
    out: list[Violation] = []
    for (org, cid), t in truth.conns.items():
        seqs = [e["seq"] for e in t.events]
        if len(seqs) != len(set(seqs)) or seqs != sorted(seqs):
            out.append(Violation("timeline", org, cid, f"sequence numbers {seqs}"))
        ats = [e["at"] for e in sorted(t.events, key=lambda e: e["seq"])]
        if ats != sorted(ats):
            out.append(Violation("timeline", org, cid, "entries out of time order"))
        if t.store is not None and t.events and t.events[-1]["status"] != t.store["status"]:
            out.append(Violation("timeline", org, cid, f"last entry {t.events[-1]['status']}, "
                                 f"row says {t.store['status']}"))
    return out


def _waiting_on(t: ConnTruth | GuardTruth) -> str | None:
    """Why a running workflow is stuck, or None when something will wake it: a pending
    activity, a timer, or a workflow task (one failing over and over does not count)."""
    if t.task_attempt > 3:
        return f"its workflow task keeps failing (attempt {t.task_attempt})"
    if t.pending_activities or t.open_timers or t.task_attempt:
        return None
    return "no pending activity, timer or workflow task"


def _stuck(truth: Truth) -> list[Violation]:
    out: list[Violation] = []
    for (org, cid), t in truth.conns.items():
        why = _waiting_on(t) if t.wf_status == "RUNNING" else None
        if why:
            out.append(Violation("stuck", org, cid, f"running "
                                 f"({t.store and t.store['status']}): {why}"))
    for org, g in truth.guards.items():
        why = _waiting_on(g) if g.wf_status == "RUNNING" else None
        if why:
            out.append(Violation("stuck", org, None, f"org guard running: {why}"))
    return out
