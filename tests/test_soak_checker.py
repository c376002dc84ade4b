"""The soak's checker on made-up worlds: a healthy world passes, and each kind of defect the
soak exists to find (lost, leaked, duplicated, over the limit, wrong policy, disagreeing
views, broken timeline, stuck workflow) is reported under its rule."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from soak.checker import ConnTruth, GuardTruth, Truth, check, expected
from soak.ops import Conn, Op
from workflows.contracts import policy_name

ORG, OTHER = "acme", "globex"
NS = ["tasks", "batch"]
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def op(n: int, kind: str, org: str, cid: str | None, t: float, outcome: str = "ok",
       **args: Any) -> Op:
    return Op(n=n, kind=kind, org=org, cid=cid, surface="client", t0=t, wall0=at(t),
              t1=t + 0.5, wall1=at(t + 0.5), outcome=outcome, args=args)


def policy(org: str, cid: str, ns: str, ips: list[str], selector_org: str | None = None) -> dict:
    return {
        "metadata": {"name": policy_name(org, cid), "namespace": ns,
                     "labels": {"privnet.dev/org-id": org, "privnet.dev/connection-id": cid}},
        "spec": {"endpointSelector": {"matchLabels": {"privnet.dev/org-id": selector_org or org}},
                 "egress": [{"toCIDR": [f"{ip}/32" for ip in ips]}]},
    }


def conn_truth(org: str, cid: str, statuses: list[str], ep: str | None = None,
               running: bool | None = None) -> ConnTruth:
    final = statuses[-1]
    terminal = final in ("Deleted", "Cancelled", "Failed", "Rejected")
    is_running = (not terminal) if running is None else running
    return ConnTruth(
        org=org, cid=cid,
        store={"status": final, "reason": "LIMIT_REACHED" if final == "Rejected" else None,
               "vpc_endpoint_id": ep},
        events=[{"seq": i + 1, "at": at(i), "status": s, "detail": ""}
                for i, s in enumerate(statuses)],
        wf_status="RUNNING" if is_running else "COMPLETED",
        sa_status=final, query_status=final, open_timers=1 if is_running else 0)


def created(org: str, cid: str, ep: str, t: float) -> dict:
    return {"event": "created", "vpc_endpoint_id": ep, "org_id": org, "connection_id": cid,
            "t": t}


def deleted(org: str, cid: str, ep: str, t: float) -> dict:
    return {"event": "deleted", "vpc_endpoint_id": ep, "org_id": org, "connection_id": cid,
            "t": t}


def endpoint(org: str, cid: str, ep: str, ips: list[str], state: str = "available") -> dict:
    return {"vpc_endpoint_id": ep, "state": state, "ips": ips,
            "tags": {"privnet.dev/org-id": org, "privnet.dev/connection-id": cid}}


@pytest.fixture
def world() -> dict[str, Any]:
    """acme/db Active; globex/db (the same id) deleted; acme/cache rejected by the limit."""
    conns = {
        (ORG, "db"): Conn(ORG, "db", "allowed", "svc-a"),
        (OTHER, "db"): Conn(OTHER, "db", "allowed", "svc-a"),
        (ORG, "cache"): Conn(ORG, "cache", "allowed", "svc-a"),
    }
    ops = [
        op(0, "create", ORG, "db", 1),
        op(1, "create", OTHER, "db", 2),
        op(2, "create", ORG, "cache", 3),
        op(3, "delete", OTHER, "db", 20),
    ]
    ips = ["10.0.0.5", "10.0.1.5"]
    truth = Truth(
        conns={
            (ORG, "db"): conn_truth(ORG, "db", ["Pending", "Active"], "vpce-1"),
            (OTHER, "db"): conn_truth(OTHER, "db", ["Pending", "Active", "Deleting", "Deleted"],
                                      "vpce-2"),
            (ORG, "cache"): conn_truth(ORG, "cache", ["Pending", "Rejected"]),
        },
        aws_history=[created(ORG, "db", "vpce-1", 5), created(OTHER, "db", "vpce-2", 6),
                     deleted(OTHER, "db", "vpce-2", 25)],
        inventory=[endpoint(ORG, "db", "vpce-1", ips),
                   endpoint(OTHER, "db", "vpce-2", ["10.0.0.9"], state="deleted")],
        policies=[policy(ORG, "db", ns, ips) for ns in NS],
        guards={ORG: GuardTruth(ORG, "RUNNING", open_timers=1),
                OTHER: GuardTruth(OTHER, "RUNNING", open_timers=1)},
        namespaces=NS,
    )
    return {"ops": ops, "conns": conns, "truth": truth}


def rules(w: dict[str, Any]) -> list[str]:
    return sorted({v.rule for v in check(w["ops"], w["conns"], w["truth"], [ORG, OTHER], 2)})


def test_a_healthy_world_has_no_violation(world: dict[str, Any]) -> None:
    assert check(world["ops"], world["conns"], world["truth"], [ORG, OTHER], 2) == []


def test_a_created_connection_nobody_has_is_lost(world: dict[str, Any]) -> None:
    world["conns"][(ORG, "kafka")] = Conn(ORG, "kafka", "allowed", "svc-a")
    world["ops"].append(op(9, "create", ORG, "kafka", 30))
    assert rules(world) == ["lost"]


def test_a_delete_that_did_not_win_is_reported_unless_the_connection_had_already_ended(
        world: dict[str, Any]) -> None:
    world["ops"].append(op(9, "delete", ORG, "db", 30))
    assert "final-status" in rules(world)  # still Active after a delete was taken

    w = copy.deepcopy(world)
    w["ops"][-1] = op(9, "delete", ORG, "cache", 30)  # Rejected at t=1 s, long before
    assert rules(w) == []


def test_the_last_of_two_stops_wins(world: dict[str, Any]) -> None:
    conn = world["conns"][(OTHER, "db")]
    ops = [op(0, "create", OTHER, "db", 1), op(1, "cancel", OTHER, "db", 10),
           op(2, "delete", OTHER, "db", 20)]
    assert expected(conn, ops)[0] == {"Deleted"}
    overlapping = [*ops[:2], op(2, "delete", OTHER, "db", 10.2)]
    assert expected(conn, overlapping)[0] == {"Deleted", "Cancelled"}


def test_disagreeing_views_are_reported(world: dict[str, Any]) -> None:
    world["truth"].conns[(ORG, "db")].sa_status = "Degraded"
    assert rules(world) == ["agreement"]


def test_a_second_endpoint_for_one_connection_is_a_duplicate(world: dict[str, Any]) -> None:
    world["truth"].aws_history.append(created(ORG, "db", "vpce-9", 7))
    world["truth"].aws_history.append(deleted(ORG, "db", "vpce-9", 8))
    assert rules(world) == ["duplicate-endpoint"]


def test_an_endpoint_or_policy_of_an_ended_connection_is_a_leak(world: dict[str, Any]) -> None:
    w = copy.deepcopy(world)
    w["truth"].inventory[1]["state"] = "available"
    assert rules(w) == ["leaked-endpoint"]
    world["truth"].policies.append(policy(OTHER, "db", "tasks", ["10.0.0.9"]))
    assert rules(world) == ["leaked-policy"]


def test_an_active_connection_whose_policy_misses_moved_ips_or_selects_another_org(
        world: dict[str, Any]) -> None:
    w = copy.deepcopy(world)
    w["truth"].inventory[0]["ips"] = ["10.0.0.7", "10.0.1.5"]  # AWS moved an IP
    assert rules(w) == ["active"]
    w = copy.deepcopy(world)
    w["truth"].policies[0] = policy(ORG, "db", "tasks", ["10.0.0.5", "10.0.1.5"], OTHER)
    assert rules(w) == ["active"]
    w = copy.deepcopy(world)
    del w["truth"].policies[1]  # deleted by hand and never repaired
    assert rules(w) == ["active"]


def test_more_endpoints_at_once_than_the_limit_allowed(world: dict[str, Any]) -> None:
    for i, cid in enumerate(("kafka", "api")):
        world["conns"][(ORG, cid)] = Conn(ORG, cid, "allowed", "svc-a")
        world["ops"].append(op(10 + i, "create", ORG, cid, 40 + i))
        world["truth"].conns[(ORG, cid)] = conn_truth(ORG, cid, ["Pending", "Active"],
                                                      f"vpce-{cid}")
        world["truth"].aws_history.append(created(ORG, cid, f"vpce-{cid}", 45 + i))
        world["truth"].inventory.append(endpoint(ORG, cid, f"vpce-{cid}", [f"10.0.2.{i}"]))
        world["truth"].policies += [policy(ORG, cid, ns, [f"10.0.2.{i}"]) for ns in NS]
    assert rules(world) == ["limit"]  # 3 at once under the default of 2
    world["ops"].append(op(20, "limit_set", ORG, None, 35, limit=3))
    assert rules(world) == []  # raised to 3 before the third create


def test_a_lowered_limit_does_not_excuse_a_grant_made_after_it(world: dict[str, Any]) -> None:
    world["ops"].append(op(20, "limit_set", ORG, None, 0.5, limit=1))
    world["ops"].append(op(21, "limit_set", ORG, None, 2, limit=1))
    world["conns"][(ORG, "kafka")] = Conn(ORG, "kafka", "allowed", "svc-a")
    world["ops"].append(op(10, "create", ORG, "kafka", 100))
    world["truth"].conns[(ORG, "kafka")] = conn_truth(ORG, "kafka", ["Pending", "Active"],
                                                      "vpce-k")
    world["truth"].aws_history.append(created(ORG, "kafka", "vpce-k", 101))
    world["truth"].inventory.append(endpoint(ORG, "kafka", "vpce-k", ["10.0.3.1"]))
    world["truth"].policies += [policy(ORG, "kafka", ns, ["10.0.3.1"]) for ns in NS]
    # db was granted under the default 2 (created at 5 s, before the slack ran out), but
    # kafka's create at 100 s met a limit of 1 with db still holding its slot.
    assert rules(world) == ["limit"]


def test_a_broken_timeline_is_reported(world: dict[str, Any]) -> None:
    events = world["truth"].conns[(ORG, "db")].events
    events.append({**events[-1], "seq": events[-1]["seq"]})
    assert rules(world) == ["timeline"]


def test_a_workflow_waiting_on_nothing_is_stuck(world: dict[str, Any]) -> None:
    world["truth"].conns[(ORG, "db")].open_timers = 0
    world["truth"].guards[ORG].open_timers = 0
    stuck = [v for v in check(world["ops"], world["conns"], world["truth"], [ORG, OTHER], 2)
             if v.rule == "stuck"]
    assert [(v.org, v.cid) for v in stuck] == [(ORG, "db"), (ORG, None)]


def test_a_workflow_task_in_flight_is_progress_but_one_failing_again_and_again_is_stuck(
        world: dict[str, Any]) -> None:
    t = world["truth"].conns[(ORG, "db")]
    t.open_timers, t.task_attempt = 0, 1  # caught between a timer and its activity
    assert rules(world) == []
    t.task_attempt = 7  # e.g. a non-determinism error on every attempt
    assert rules(world) == ["stuck"]
