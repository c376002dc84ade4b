"""Reading the ground truth for the checker: sandbox AWS, sandbox Kubernetes, the store's
tables and Temporal's own records (describe, history, query). Nothing here asks privnet's
code what it did."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.store import Store, connection_events, connections
from soak.checker import ConnTruth, GuardTruth, Truth
from workflows.contracts import (
    QUERY_STATUS,
    SA_STATUS,
    ConnectionState,
    connection_workflow_id,
    org_guard_workflow_id,
)


def store_rows(store: Store, orgs: list[str]) -> tuple[dict[tuple[str, str], dict[str, Any]],
                                                      dict[tuple[str, str], list[dict[str, Any]]]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    events: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with store.engine.connect() as db:
        for r in db.execute(select(connections).where(connections.c.org_id.in_(orgs))):
            rows[(r.org_id, r.connection_id)] = dict(r._mapping)
        e = connection_events.c
        q = select(e.org_id, e.connection_id, e.seq, e.at, e.status, e.detail).where(
            e.org_id.in_(orgs)).order_by(e.org_id, e.connection_id, e.id)
        for r in db.execute(q):
            events.setdefault((r.org_id, r.connection_id), []).append(
                {"seq": r.seq, "at": r.at, "status": r.status, "detail": r.detail})
    return rows, events


ACTIVITY_CLOSED = {f"activity_task_{n}_event_attributes"
                   for n in ("completed", "failed", "timed_out", "canceled")}
TASK_CLOSED = {f"workflow_task_{n}_event_attributes" for n in ("completed", "failed", "timed_out")}


def _describe_event(ev: Any) -> str:
    name = EventType.Name(ev.event_type).removeprefix("EVENT_TYPE_")
    attrs = ""
    if ev.HasField("activity_task_scheduled_event_attributes"):
        attrs = ev.activity_task_scheduled_event_attributes.activity_type.name
    elif ev.HasField("workflow_execution_signaled_event_attributes"):
        attrs = ev.workflow_execution_signaled_event_attributes.signal_name
    elif ev.HasField("marker_recorded_event_attributes"):
        attrs = ev.marker_recorded_event_attributes.marker_name
    elif ev.HasField("activity_task_failed_event_attributes"):
        attrs = ev.activity_task_failed_event_attributes.failure.message[:120]
    elif ev.HasField("timer_started_event_attributes"):
        attrs = str(ev.timer_started_event_attributes.start_to_fire_timeout.seconds) + "s"
    return f"{ev.event_id} {name} {attrs}".strip()


async def _workflow(client: Client, wid: str) -> dict[str, Any] | None:
    handle = client.get_workflow_handle(wid)
    try:
        desc = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    # What the workflow waits on, from one read of its history (describe and a later
    # history read race: a timer may fire in between).
    timers: set[int] = set()
    activities: set[int] = set()
    task_open = False
    tail: list[str] = []
    async for ev in handle.fetch_history_events():
        kind = ev.WhichOneof("attributes") or ""
        attrs: Any = getattr(ev, kind) if kind else None
        if kind == "timer_started_event_attributes":
            timers.add(ev.event_id)
        elif kind in ("timer_fired_event_attributes", "timer_canceled_event_attributes"):
            timers.discard(attrs.started_event_id)
        elif kind == "activity_task_scheduled_event_attributes":
            activities.add(ev.event_id)
        elif kind in ACTIVITY_CLOSED:
            activities.discard(attrs.scheduled_event_id)
        elif kind == "workflow_task_scheduled_event_attributes":
            task_open = True
        elif kind in TASK_CLOSED:
            task_open = False
        tail = [*tail[-14:], _describe_event(ev)]
    status = desc.status.name if desc.status is not None else None
    return {
        "status": status,
        "sa": desc.typed_search_attributes.get(SA_STATUS),
        "pending": max(len(activities), len(desc.raw_description.pending_activities)),
        "task_attempt": max(
            desc.raw_description.pending_workflow_task.attempt
            if desc.raw_description.HasField("pending_workflow_task") else 0,
            1 if task_open else 0),
        "timers": len(timers),
        "tail": tail,
        "handle": handle,
    }


async def _query(handle: Any) -> str | None:
    for _ in range(3):
        try:
            state: ConnectionState = await handle.query(
                QUERY_STATUS, result_type=ConnectionState, rpc_timeout=_td(20))
            return state.status.value
        except Exception:  # noqa: BLE001 - reported as a disagreement if it never answers
            await asyncio.sleep(1)
    return None


def _td(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


async def conn_truth(client: Client, store: Store, keys: set[tuple[str, str]],
                     orgs: list[str]) -> dict[tuple[str, str], ConnTruth]:
    rows, events = await asyncio.to_thread(store_rows, store, orgs)
    keys = keys | set(rows)
    sem = asyncio.Semaphore(16)

    async def one(key: tuple[str, str]) -> ConnTruth:
        async with sem:
            t = ConnTruth(org=key[0], cid=key[1], store=rows.get(key),
                          events=events.get(key, []))
            wf = await _workflow(client, connection_workflow_id(*key))
            if wf is not None:
                t.wf_status, t.sa_status = wf["status"], wf["sa"]
                t.pending_activities, t.open_timers = wf["pending"], wf["timers"]
                t.task_attempt = wf["task_attempt"]
                t.history_tail = wf["tail"]
                t.query_status = await _query(wf["handle"])
            return t

    done = await asyncio.gather(*(one(k) for k in sorted(keys)))
    return {(t.org, t.cid): t for t in done}


async def guard_truth(client: Client, orgs: list[str]) -> dict[str, GuardTruth]:
    out: dict[str, GuardTruth] = {}
    for org in orgs:
        wf = await _workflow(client, org_guard_workflow_id(org))
        out[org] = GuardTruth(org=org, wf_status=wf["status"] if wf else None,
                              pending_activities=wf["pending"] if wf else 0,
                              open_timers=wf["timers"] if wf else 0,
                              task_attempt=wf["task_attempt"] if wf else 0,
                              history_tail=wf["tail"] if wf else [])
    return out


async def collect(client: Client, store: Store, aws: Any, kube: Any, namespaces: list[str],
                  keys: set[tuple[str, str]], orgs: list[str]) -> Truth:
    conns = await conn_truth(client, store, keys, orgs)
    return Truth(
        conns=conns,
        aws_history=await asyncio.to_thread(aws.history),
        inventory=await asyncio.to_thread(aws.inventory),
        policies=await asyncio.to_thread(kube.policies),
        guards=await guard_truth(client, orgs),
        namespaces=namespaces,
    )
