"""Fake activities registered under the real names, for workflow tests.

State lives in a SQLite file (``FakeWorld``) so a worker process can be SIGKILLed and
another one pick up where it died: side effects are counted across processes. Each
side-effecting fake is idempotent the way the real adapter is (find by connection id
first), so "exactly once" is a property the workflow + retries must preserve.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.guard import GuardActivities
from settings import Settings
from workflows.contracts import (
    ACT_ACQUIRE_SLOT,
    ACT_APPLY_POLICIES,
    ACT_CHECK_PRINCIPAL,
    ACT_CREATE_ENDPOINT,
    ACT_DELETE_ENDPOINT,
    ACT_DELETE_POLICIES,
    ACT_GET_ENDPOINT_ADDRESSES,
    ACT_RECORD_STATUS,
    ACT_RELEASE_SLOT,
    ACT_REQUEST_SLOT,
    ACT_WAIT_ENDPOINT_DELETED,
    ACT_WAIT_FOR_STATE_CHANGE,
    ENDPOINT_NOT_DELETED_YET,
    ENDPOINT_NOT_FOUND,
    STATE_UNCHANGED,
    ApplyPoliciesInput,
    ApplyPoliciesResult,
    CheckPrincipalInput,
    CreateEndpointInput,
    DeleteEndpointInput,
    DeleteEndpointResult,
    DeletePoliciesInput,
    EndpointAddresses,
    EndpointAddressesInput,
    EndpointRef,
    EndpointState,
    ServiceInfo,
    SlotDecision,
    SlotRelease,
    SlotRequest,
    StatusRecord,
    WaitStateInput,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (n INTEGER PRIMARY KEY AUTOINCREMENT, conn TEXT, name TEXT);
CREATE TABLE IF NOT EXISTS effects (n INTEGER PRIMARY KEY AUTOINCREMENT, conn TEXT, kind TEXT);
CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS statuses (conn TEXT, seq INTEGER, status TEXT, body TEXT,
    PRIMARY KEY (conn, seq));
"""


class FakeWorld:
    """Shared state of the fake AWS / Kubernetes / store, in a SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            db = self._db()
            try:
                return db.execute(sql, args).fetchall()
            finally:
                db.close()

    # key/value state
    def get(self, key: str, default: Any = None) -> Any:
        rows = self._exec("SELECT v FROM kv WHERE k = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set(self, key: str, value: Any) -> None:
        self._exec("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, json.dumps(value)))

    def delete(self, key: str) -> None:
        self._exec("DELETE FROM kv WHERE k = ?", (key,))

    # logs
    def call(self, conn: str, name: str) -> None:
        self._exec("INSERT INTO calls (conn, name) VALUES (?, ?)", (conn, name))

    def effect(self, conn: str, kind: str) -> None:
        self._exec("INSERT INTO effects (conn, kind) VALUES (?, ?)", (conn, kind))

    def calls(self, conn: str) -> list[str]:
        return [
            r[0] for r in self._exec("SELECT name FROM calls WHERE conn = ? ORDER BY n", (conn,))
        ]

    def effects(self, conn: str) -> list[str]:
        return [
            r[0] for r in self._exec("SELECT kind FROM effects WHERE conn = ? ORDER BY n", (conn,))
        ]

    def statuses(self, conn: str) -> list[StatusRecord]:
        rows = self._exec("SELECT body FROM statuses WHERE conn = ? ORDER BY seq", (conn,))
        return [StatusRecord.model_validate_json(r[0]) for r in rows]

    # test controls
    def fail(self, conn: str, activity_name: str, error_type: str) -> None:
        self.set(f"fail:{conn}:{activity_name}", error_type)

    def pause(self, conn: str, activity_name: str) -> None:
        self.set(f"pause:{conn}:{activity_name}", True)

    def unpause(self, conn: str, activity_name: str) -> None:
        self.delete(f"pause:{conn}:{activity_name}")

    def reached(self, conn: str, activity_name: str) -> bool:
        return bool(self.get(f"reached:{conn}:{activity_name}"))

    def set_endpoint_state(self, conn: str, state: str) -> None:
        ep = self.get(f"endpoint:{conn}")
        assert ep is not None, f"no endpoint for {conn}"
        ep["state"] = state
        self.set(f"endpoint:{conn}", ep)


class FakeActivities:
    """AWS, Kubernetes and store fakes. Options per connection id through ``world``:
    ``initial_state:{conn}`` (endpoint state after create, default available),
    ``fail:{conn}:{activity}`` (non-retryable ApplicationError of that type),
    ``throttle:{conn}:{activity}`` (that many attempts fail retryably, as AWS throttling),
    ``pause:{conn}:{activity}`` (block after the side effect until unpaused or killed)."""

    def __init__(self, world: FakeWorld, namespaces: tuple[str, ...] = ("tasks",)) -> None:
        self.world = world
        self.namespaces = list(namespaces)

    def _enter(self, conn: str, name: str) -> None:
        self.world.call(conn, name)
        err = self.world.get(f"fail:{conn}:{name}")
        if err:
            raise ApplicationError(f"injected {err} in {name}", type=err, non_retryable=True)
        throttled = self.world.get(f"throttle:{conn}:{name}", 0)
        if throttled:  # the next N attempts are throttled (retryable)
            self.world.set(f"throttle:{conn}:{name}", throttled - 1)
            raise ApplicationError(f"injected throttling in {name}", type="AWS_THROTTLED")
        if self.world.get(f"pause_before:{conn}:{name}"):  # before the side effect
            self.world.set(f"reached_before:{conn}:{name}", True)
            while self.world.get(f"pause_before:{conn}:{name}"):
                time.sleep(0.05)

    def _checkpoint(self, conn: str, name: str) -> None:
        """After the side effect: a crash here must not duplicate it on retry."""
        if self.world.get(f"pause:{conn}:{name}"):
            self.world.set(f"reached:{conn}:{name}", True)
            while self.world.get(f"pause:{conn}:{name}"):
                time.sleep(0.05)

    def _write_passing(self, rec: StatusRecord | None) -> None:
        """Release 4: the step writes the status it passes through before it acts."""
        if rec is not None:
            self._insert_status(rec)

    def _insert_status(self, rec: StatusRecord) -> None:
        self.world._exec(
            "INSERT OR IGNORE INTO statuses (conn, seq, status, body) VALUES (?, ?, ?, ?)",
            (rec.connection_id, rec.seq, rec.status.value, rec.model_dump_json()),
        )

    @activity.defn(name=ACT_CHECK_PRINCIPAL)
    def check_principal(self, inp: CheckPrincipalInput) -> ServiceInfo:
        self._write_passing(inp.status)
        self._enter(inp.connection_id, ACT_CHECK_PRINCIPAL)
        self.world.effect(inp.connection_id, "principal.check")
        self._checkpoint(inp.connection_id, ACT_CHECK_PRINCIPAL)
        return ServiceInfo(
            service_name=inp.service_name,
            az_ids=["use1-az1", "use1-az2"],
            usable_az_ids=["use1-az1", "use1-az2"],
            acceptance_required=self.world.get(f"initial_state:{inp.connection_id}")
            == "pendingAcceptance",
            supported_regions=[inp.service_region],
        )

    @activity.defn(name=ACT_CREATE_ENDPOINT)
    def create_endpoint(self, inp: CreateEndpointInput) -> EndpointRef:
        self._write_passing(inp.status)
        conn = inp.connection_id
        self._enter(conn, ACT_CREATE_ENDPOINT)
        ep = self.world.get(f"endpoint:{conn}")
        created = False
        if ep is None or ep["state"] in ("deleted", "deleting"):
            n = len(self.world.effects(conn)) + 1
            ep = {
                "id": f"vpce-{abs(hash((conn, n))) % 16**12:012x}",
                "state": self.world.get(f"initial_state:{conn}", "available"),
                "ips": self.world.get(f"ips:{conn}", ["10.1.0.10", "10.1.1.10"]),
            }
            self.world.set(f"endpoint:{conn}", ep)
            self.world.effect(conn, "endpoint.create")
            created = True
        self._checkpoint(conn, ACT_CREATE_ENDPOINT)
        return EndpointRef(vpc_endpoint_id=ep["id"], state=ep["state"], created=created)

    def _endpoint_by_id(self, endpoint_id: str) -> tuple[str, dict[str, Any]] | None:
        for conn_key in self.world._exec("SELECT k FROM kv WHERE k LIKE 'endpoint:%'"):
            ep = self.world.get(conn_key[0])
            if ep and ep["id"] == endpoint_id:
                return conn_key[0].split(":", 1)[1], ep
        return None

    @activity.defn(name=ACT_WAIT_FOR_STATE_CHANGE)
    def wait_for_state_change(self, inp: WaitStateInput) -> EndpointState:
        found = self._endpoint_by_id(inp.vpc_endpoint_id)
        if found is None:
            raise ApplicationError("endpoint gone", type=ENDPOINT_NOT_FOUND, non_retryable=True)
        conn, ep = found
        self._enter(conn, ACT_WAIT_FOR_STATE_CHANGE)
        if inp.last_state is not None and ep["state"].lower() == inp.last_state.lower():
            raise ApplicationError(
                f"still {ep['state']}",
                type=STATE_UNCHANGED,
                category=ApplicationErrorCategory.BENIGN,
            )
        return EndpointState(
            vpc_endpoint_id=ep["id"], state=ep["state"], attempt=activity.info().attempt
        )

    @activity.defn(name=ACT_GET_ENDPOINT_ADDRESSES)
    def get_endpoint_addresses(self, inp: EndpointAddressesInput) -> EndpointAddresses:
        found = self._endpoint_by_id(inp.vpc_endpoint_id)
        if found is None:
            raise ApplicationError("endpoint gone", type=ENDPOINT_NOT_FOUND, non_retryable=True)
        conn, ep = found
        self._enter(conn, ACT_GET_ENDPOINT_ADDRESSES)
        self.world.effect(conn, "endpoint.read_ips")
        self._checkpoint(conn, ACT_GET_ENDPOINT_ADDRESSES)
        return EndpointAddresses(
            vpc_endpoint_id=ep["id"],
            state=ep["state"],
            ips=ep["ips"],
            dns_names=[f"{ep['id']}.vpce.amazonaws.com"],
        )

    @activity.defn(name=ACT_DELETE_ENDPOINT)
    def delete_endpoint(self, inp: DeleteEndpointInput) -> DeleteEndpointResult:
        conn = inp.connection_id
        self._enter(conn, ACT_DELETE_ENDPOINT)
        ep = self.world.get(f"endpoint:{conn}")
        if ep is None or ep["state"] == "deleted":
            return DeleteEndpointResult(vpc_endpoint_ids=[])
        if ep["state"] != "deleting":
            ep["state"] = "deleting"
            self.world.set(f"endpoint:{conn}", ep)
            self.world.effect(conn, "endpoint.delete")
        return DeleteEndpointResult(vpc_endpoint_ids=[ep["id"]])

    @activity.defn(name=ACT_WAIT_ENDPOINT_DELETED)
    def wait_endpoint_deleted(self, inp: DeleteEndpointInput) -> None:
        conn = inp.connection_id
        self._enter(conn, ACT_WAIT_ENDPOINT_DELETED)
        ep = self.world.get(f"endpoint:{conn}")
        if ep is not None and ep["state"] == "deleting":
            if activity.info().attempt < 2:  # AWS takes a moment: exercise the poll
                raise ApplicationError(
                    "still deleting",
                    type=ENDPOINT_NOT_DELETED_YET,
                    category=ApplicationErrorCategory.BENIGN,
                )
            ep["state"] = "deleted"
            self.world.set(f"endpoint:{conn}", ep)

    @activity.defn(name=ACT_APPLY_POLICIES)
    def apply_policies(self, inp: ApplyPoliciesInput) -> ApplyPoliciesResult:
        self._write_passing(inp.status)
        conn = inp.connection_id
        self._enter(conn, ACT_APPLY_POLICIES)
        changed = []
        for ns in self.namespaces:
            key = f"policy:{ns}:{conn}"
            want = {"org": inp.org_id, "ips": sorted(inp.ips), "ports": inp.ports}
            if self.world.get(key) != want:
                self.world.set(key, want)
                self.world.effect(conn, f"policy.apply:{ns}")
                changed.append(ns)
        self._checkpoint(conn, ACT_APPLY_POLICIES)
        return ApplyPoliciesResult(namespaces=self.namespaces, changed=changed)

    @activity.defn(name=ACT_DELETE_POLICIES)
    def delete_policies(self, inp: DeletePoliciesInput) -> None:
        conn = inp.connection_id
        self._enter(conn, ACT_DELETE_POLICIES)
        for ns in self.namespaces:
            key = f"policy:{ns}:{conn}"
            if self.world.get(key) is not None:
                self.world.delete(key)
                self.world.effect(conn, f"policy.delete:{ns}")

    @activity.defn(name=ACT_RECORD_STATUS)
    def record_status(self, rec: StatusRecord) -> None:
        conn = rec.connection_id
        if rec.status.value == "Active":
            self._enter(conn, ACT_RECORD_STATUS)
        else:
            self.world.call(conn, ACT_RECORD_STATUS)
        self._insert_status(rec)
        if rec.status.value == "Active":
            self.world.effect(conn, "status.active")
        self._checkpoint(conn, ACT_RECORD_STATUS)


class CountingGuardActivities(GuardActivities):
    """The real guard adapter, with each call logged in the world."""

    def __init__(self, world: FakeWorld, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.world = world

    @activity.defn(name=ACT_REQUEST_SLOT)
    async def request_slot(self, req: SlotRequest) -> None:
        self.world.call(req.connection_id, ACT_REQUEST_SLOT)
        await super().request_slot(req)

    @activity.defn(name=ACT_ACQUIRE_SLOT)
    async def acquire_slot(self, req: SlotRequest) -> SlotDecision:
        self.world.call(req.connection_id, ACT_ACQUIRE_SLOT)
        return await super().acquire_slot(req)

    @activity.defn(name=ACT_RELEASE_SLOT)
    async def release_slot(self, req: SlotRelease) -> None:
        self.world.call(req.connection_id, ACT_RELEASE_SLOT)
        self.world.effect(req.connection_id, "slot.release")
        await super().release_slot(req)


class FakeEnv:
    """A test's view of a worker running the fakes: client, world and task queue."""

    def __init__(self, client: Client, world: FakeWorld, task_queue: str) -> None:
        self.client = client
        self.world = world
        self.task_queue = task_queue


E = TypeVar("E", bound=FakeEnv)


def fake_activities(
    world: FakeWorld,
    client: Client,
    task_queue: str,
    *,
    namespaces: Sequence[str] = ("tasks",),
    leak_check_seconds: float = 300,
) -> list[object]:
    from activities.store import OrgSlotActivities, Store

    store = Store(f"sqlite:///{Path(world.path).with_suffix('.store.db')}")
    store.create_schema()
    return [
        FakeActivities(world, namespaces=tuple(namespaces)),
        CountingGuardActivities(world, client, task_queue, leak_check_seconds),
        OrgSlotActivities(store),
    ]


@asynccontextmanager
async def fake_worker(
    client: Client,
    world_path: Path,
    env_type: type[E],
    *,
    namespaces: Sequence[str] = ("tasks",),
    leak_check_seconds: float = 300,
    extra_workflows: Sequence[type] = (),
) -> AsyncIterator[E]:
    """The real workflows and guard adapter with the fakes, on a fresh task queue."""
    from tests.wfutil import uid
    from worker import build_worker

    world = FakeWorld(world_path)
    tq = uid("tq")
    worker = build_worker(
        client,
        Settings(),
        task_queue=tq,
        extra_workflows=extra_workflows,
        activities=fake_activities(
            world, client, tq, namespaces=namespaces, leak_check_seconds=leak_check_seconds
        ),
    )
    async with worker:
        yield env_type(client, world, tq)
