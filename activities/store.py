"""Connection records and their timeline (SQLAlchemy 2 Core).

Four tables:

- ``connections``: one row per (org_id, connection_id), the latest applied status write.
- ``connection_events``: the timeline, one row per (org_id, connection_id, seq).
- ``org_limits``: per-org overrides of the connection limit (``privnet limits set``), kept
  here so a guard workflow started afresh (terminate, reset) never lifts a limit.
- ``org_slots``: the org guard's holders (connection → workflow), written by the guard
  before it answers, so a guard started afresh rebuilds exactly the slots it granted.

Every status write (:class:`~workflows.contracts.StatusRecord`) carries a ``seq`` that grows
with each write of a workflow run. :meth:`Store.record` applies a write in one transaction:

1. ``INSERT ... ON CONFLICT (org_id, connection_id, seq) DO NOTHING`` into the timeline, so a
   retried write never duplicates an event (an out-of-order older write still lands in the
   timeline at its own seq: the timeline is ordered by seq, not by arrival);
2. ``INSERT ... ON CONFLICT (org_id, connection_id) DO UPDATE SET ... WHERE connections.seq <
   excluded.seq`` into ``connections``: the sequence guard. It is one atomic statement on
   both SQLite and PostgreSQL, so it also covers the insert race (two first writes at once)
   and concurrent writers: an older write never overwrites a newer one. ``created_at`` is
   only set by the insert branch and never changed afterwards.

Dialects: SQLite (default, ``sqlite:///privnet.db``; WAL, busy timeout, ``BEGIN IMMEDIATE``
for writes so concurrent processes queue instead of failing) and PostgreSQL in production
(``postgresql+psycopg://...``; a schema can be chosen with
``?options=-csearch_path%3Dmyschema``).

Timestamps are stored in UTC and always returned timezone-aware (UTC) on both dialects.
Naive datetimes are rejected (``ValueError``): workflow time is always aware.
"""

from __future__ import annotations

import builtins
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DataError
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator
from temporalio import activity
from temporalio.exceptions import ApplicationError

from workflows.contracts import (
    ACT_LOAD_ORG_SLOTS,
    ACT_RECORD_STATUS,
    ACT_SAVE_ORG_SLOTS,
    PROVISIONING_STEP,
    TERMINAL_STATUSES,
    ConnectionView,
    InvalidInput,
    OrgSlots,
    Reason,
    StatusRecord,
    TimelineEntry,
    validate_connection_id,
    validate_org_id,
)

if TYPE_CHECKING:
    from settings import Settings

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Arbitrary constant: serialises concurrent create_schema() calls on PostgreSQL.
_SCHEMA_LOCK_KEY = 0x70726976  # "priv"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every dialect.

    PostgreSQL stores ``timestamptz``; SQLite has no timezone support, so the value is
    converted to UTC and stored naive (fixed-width ISO text, so it sorts correctly).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# SQLite only makes INTEGER PRIMARY KEY an autoincrementing rowid alias.
_ID = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

connections = Table(
    "connections",
    metadata,
    Column("org_id", String(63), primary_key=True),
    Column("connection_id", String(64), primary_key=True),
    Column("status", String(32), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("message", Text, nullable=False, default=""),
    Column("endpoint_service_name", String(255), nullable=False),
    Column("region", String(32), nullable=False),
    Column("service_region", String(32), nullable=False),
    Column("display_name", Text, nullable=True),
    Column("workflow_id", String(255), nullable=False),
    Column("vpc_endpoint_id", String(64), nullable=True),
    Column("ips", JSON, nullable=False),
    Column("dns_names", JSON, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_connections_created_at", "created_at"),
    Index("ix_connections_org_created_at", "org_id", "created_at"),
    Index("ix_connections_status", "status"),
)

connection_events = Table(
    "connection_events",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("org_id", String(63), nullable=False),
    Column("connection_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("status", String(32), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    UniqueConstraint("org_id", "connection_id", "seq", name="uq_connection_events_seq"),
)

org_limits = Table(
    "org_limits",
    metadata,
    Column("org_id", String(63), primary_key=True),
    Column("connection_limit", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

org_slots = Table(
    "org_slots",
    metadata,
    Column("org_id", String(63), primary_key=True),
    Column("connection_id", String(64), primary_key=True),
    Column("workflow_id", String(255), nullable=False),
    Column("granted_at", UTCDateTime, nullable=False),
)


def goes_back(before: str, status: str) -> bool:
    """Whether writing ``status`` after ``before`` would move provisioning backwards: a
    workflow task discarded after its local activities wrote several statuses (a worker
    killed mid-task) runs them again under new seqs (each floored by the history the
    discarded task grew), so the earlier ones arrive after the later ones."""
    step = _STEP.get(status)
    return step is not None and _STEP.get(before, _AFTER_PROVISIONING) > step


_STEP = {s.value: n for s, n in PROVISIONING_STEP.items()}  # stored statuses are strings
_AFTER_PROVISIONING = max(_STEP.values()) + 1  # Active and every status after it


_ROW_FIELDS = (
    "status",
    "reason",
    "message",
    "endpoint_service_name",
    "region",
    "service_region",
    "display_name",
    "workflow_id",
    "vpc_endpoint_id",
    "ips",
    "dns_names",
    "seq",
)


class Store:
    """Connection records and timelines on SQLite or PostgreSQL. Thread-safe."""

    def __init__(self, database_url: str, **engine_kwargs: Any) -> None:
        url = make_url(database_url)
        self.dialect = url.get_backend_name()
        # In-memory SQLite is one shared connection: serialise its users.
        self._serial: AbstractContextManager[Any] = nullcontext()
        if self.dialect == "sqlite":
            if _sqlite_in_memory(database_url):
                self._serial = threading.RLock()
            self._insert: Any = sqlite_dialect.insert
            self.engine = _sqlite_engine(database_url, engine_kwargs)
            self._read_options: dict[str, Any] = {}
        elif self.dialect == "postgresql":
            self._insert = pg_dialect.insert
            engine_kwargs.setdefault("pool_pre_ping", True)
            self.engine = create_engine(database_url, **engine_kwargs)
            # get(): row and timeline from one snapshot.
            self._read_options = {"isolation_level": "REPEATABLE READ"}
        else:
            raise ValueError(
                f"unsupported database {url.drivername!r}: use sqlite:///path.db or "
                "postgresql+psycopg://user@host/db"
            )
        self._write_engine = self.engine.execution_options(privnet_write=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(settings.database_url)

    def dispose(self) -> None:
        self.engine.dispose()

    @functools.cached_property
    def _record_statements(self) -> tuple[Any, Any, Any]:
        """``record``'s three statements, built once: building them per write (the upsert's
        ``excluded`` alias above all) was most of a status write's CPU in the worker. The
        values come as parameters; SQLAlchemy compiles each shape once."""
        e = connection_events.c
        previous = (
            select(e.status, e.detail)
            .where(
                e.org_id == bindparam("org_id"),
                e.connection_id == bindparam("connection_id"),
                e.seq < bindparam("before_seq"),
            )
            .order_by(e.seq.desc())
            .limit(1)
        )
        ins_event = self._insert(connection_events).on_conflict_do_nothing(
            index_elements=["org_id", "connection_id", "seq"]
        )
        ins_row = self._insert(connections)
        excluded = ins_row.excluded
        upsert = ins_row.on_conflict_do_update(
            index_elements=["org_id", "connection_id"],
            set_={**{f: excluded[f] for f in _ROW_FIELDS}, "updated_at": excluded.updated_at},
            where=connections.c.seq < excluded.seq,
        ).returning(connections.c.seq)
        return previous, ins_event, upsert

    # ------------------------------------------------------------------ schema

    def create_schema(self) -> None:
        """Create the tables and indexes if absent. Idempotent, safe from several
        processes at once (advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite)."""
        with self._serial, self._write_engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            metadata.create_all(conn, checkfirst=True)

    # ------------------------------------------------------------------ writes

    def record(self, rec: StatusRecord) -> bool:
        """Apply one status write; True if the connection row was inserted or updated
        (False: a write with this or a newer seq was already applied, or the write would
        move provisioning back, see ``goes_back``)."""
        if rec.at.tzinfo is None or rec.at.utcoffset() is None:
            raise ValueError(f"StatusRecord.at must be timezone-aware, got {rec.at!r}")
        values: dict[str, Any] = {f: getattr(rec, f) for f in _ROW_FIELDS}
        values["status"] = str(rec.status)
        values["ips"] = builtins.list(rec.ips)
        values["dns_names"] = builtins.list(rec.dns_names)
        key = {"org_id": rec.org_id, "connection_id": rec.connection_id}
        previous, ins_event, upsert = self._record_statements
        with self._serial, self._write_engine.begin() as conn:
            # A write repeated under a new seq (its first workflow task was discarded after
            # the write, and the retry numbers it after the history it has grown) is one
            # timeline entry, not two.
            prev = conn.execute(previous, {**key, "before_seq": rec.seq}).first()
            if prev is not None and goes_back(prev.status, values["status"]):
                return False  # a re-run of an earlier step: the timeline never goes back
            if prev is None or (prev.status, prev.detail) != (str(rec.status), rec.detail):
                conn.execute(ins_event, {**key, "seq": rec.seq, "at": rec.at,
                                         "status": str(rec.status), "detail": rec.detail})
            applied = conn.execute(
                upsert, {**key, "created_at": rec.at, "updated_at": rec.at, **values}
            ).first() is not None
        return applied

    def set_org_limit(self, org_id: str, limit: int) -> None:
        """Store an org's limit override (idempotent upsert)."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        now = datetime.now(UTC)
        ins = self._insert(org_limits).values(org_id=org_id, connection_limit=limit, updated_at=now)
        upsert = ins.on_conflict_do_update(
            index_elements=["org_id"],
            set_={"connection_limit": ins.excluded.connection_limit, "updated_at": now},
        )
        with self._serial, self._write_engine.begin() as conn:
            conn.execute(upsert)

    def save_org_slots(self, org_id: str, holders: dict[str, str]) -> None:
        """Make the org's stored holders exactly ``holders`` (connection → workflow id), in
        one transaction; rows of holders kept keep their ``granted_at``."""
        t = org_slots.c
        now = datetime.now(UTC)
        with self._serial, self._write_engine.begin() as conn:
            stored = {
                r.connection_id: r.workflow_id
                for r in conn.execute(
                    select(t.connection_id, t.workflow_id).where(t.org_id == org_id)
                )
            }
            gone = [c for c, w in stored.items() if holders.get(c) != w]
            if gone:
                conn.execute(
                    org_slots.delete().where(t.org_id == org_id, t.connection_id.in_(gone))
                )
            new = [
                {"org_id": org_id, "connection_id": c, "workflow_id": w, "granted_at": now}
                for c, w in holders.items()
                if stored.get(c) != w
            ]
            if new:
                conn.execute(org_slots.insert(), new)

    # ------------------------------------------------------------------ reads

    def org_slots(self, org_id: str) -> dict[str, str]:
        """The org guard's stored holders: connection id → workflow id."""
        t = org_slots.c
        with self._read() as conn:
            rows = conn.execute(
                select(t.connection_id, t.workflow_id)
                .where(t.org_id == org_id)
                .order_by(t.granted_at, t.connection_id)
            )
            return {r.connection_id: r.workflow_id for r in rows}

    def org_limit(self, org_id: str) -> int | None:
        """The org's stored limit override, None when it has none."""
        with self._read() as conn:
            value = conn.execute(
                select(org_limits.c.connection_limit).where(org_limits.c.org_id == org_id)
            ).scalar()
        return None if value is None else int(value)

    def live_connections(self, org_id: str) -> builtins.list[ConnectionView]:
        """The org's connections not in a terminal status: the holders of its slots."""
        terminal = [str(s) for s in TERMINAL_STATUSES]
        c = connections.c
        q = (
            select(connections)
            .where(c.org_id == org_id, c.status.not_in(terminal))
            .order_by(c.created_at, c.connection_id)
        )
        with self._read() as conn:
            return [_view(r._mapping) for r in conn.execute(q)]

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._serial, self.engine.connect() as conn:
            if self._read_options:
                conn = conn.execution_options(**self._read_options)
            with conn.begin():
                yield conn

    def get(
        self, org_id: str, connection_id: str, with_timeline: bool = True
    ) -> ConnectionView | None:
        c = connections.c
        with self._read() as conn:
            row = conn.execute(
                select(connections).where(c.org_id == org_id, c.connection_id == connection_id)
            ).first()
            if row is None:
                return None
            view = _view(row._mapping)
            if with_timeline:
                e = connection_events.c
                events = conn.execute(
                    select(e.at, e.status, e.detail)
                    .where(e.org_id == org_id, e.connection_id == connection_id)
                    .order_by(e.seq)
                ).all()
                view.timeline = [
                    TimelineEntry(at=ev.at, status=ev.status, detail=ev.detail) for ev in events
                ]
        return view

    def list(
        self,
        org_id: str | None = None,
        statuses: builtins.list[str] | None = None,
        *,
        updated_before: datetime | None = None,
    ) -> builtins.list[ConnectionView]:
        """Connections (without timeline) ordered by created_at; optionally one org's,
        only those in ``statuses``, only those not updated since ``updated_before``
        (what ``privnet stuck`` needs)."""
        c = connections.c
        q = select(connections).order_by(c.created_at, c.org_id, c.connection_id)
        if org_id is not None:
            q = q.where(c.org_id == org_id)
        if statuses is not None:
            q = q.where(c.status.in_([str(s) for s in statuses]))
        if updated_before is not None:
            q = q.where(c.updated_at < updated_before)
        with self._read() as conn:
            return [_view(r._mapping) for r in conn.execute(q)]

    def count_by_status(self, org_id: str | None = None) -> dict[str, int]:
        c = connections.c
        q = select(c.status, func.count()).group_by(c.status).order_by(c.status)
        if org_id is not None:
            q = q.where(c.org_id == org_id)
        with self._read() as conn:
            return {status: int(n) for status, n in conn.execute(q)}


def _view(m: Any) -> ConnectionView:
    return ConnectionView(
        org_id=m["org_id"],
        connection_id=m["connection_id"],
        status=m["status"],
        reason=m["reason"],
        message=m["message"],
        endpoint_service_name=m["endpoint_service_name"],
        region=m["region"],
        service_region=m["service_region"],
        display_name=m["display_name"],
        vpc_endpoint_id=m["vpc_endpoint_id"],
        ips=m["ips"] or [],
        dns_names=m["dns_names"] or [],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        workflow_id=m["workflow_id"],
    )


def _enable_wal(cur: Any) -> None:
    """Switch the database to WAL (persistent: only the first connection ever does it).
    The switch needs an exclusive lock and SQLite does not apply the busy handler to it,
    so when several processes open a new database at once, retry it ourselves."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_in_memory(database_url: str) -> bool:
    database = make_url(database_url).database
    return database in (None, "", ":memory:") or "mode=memory" in database_url


def _sqlite_engine(database_url: str, engine_kwargs: dict[str, Any]) -> Engine:
    url = make_url(database_url)
    memory = _sqlite_in_memory(database_url)
    connect_args = engine_kwargs.pop("connect_args", {})
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    if memory:
        # One shared connection, or every pool checkout would see an empty database.
        connect_args.setdefault("check_same_thread", False)
        engine_kwargs.setdefault("poolclass", StaticPool)
    else:
        Path(url.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(database_url, connect_args=connect_args, **engine_kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so we can emit BEGIN ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            if not memory:
                _enable_wal(cur)
                cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that has to upgrade
        # its lock can fail with SQLITE_BUSY without waiting for the busy timeout.
        if conn.get_execution_options().get("privnet_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


def record_checked(store: Store, rec: StatusRecord) -> bool:
    """``store.record`` for an activity: invalid data is a non-retryable error; database
    errors (connection refused, lock timeouts, failover) propagate, so Temporal retries."""
    try:
        validate_org_id(rec.org_id)
        validate_connection_id(rec.connection_id)
        if rec.seq < 0:
            raise InvalidInput("INVALID_SEQ", f"seq must be >= 0, got {rec.seq}")
        return store.record(rec)
    except (InvalidInput, ValueError, DataError) as e:
        raise ApplicationError(
            f"invalid status record for {rec.org_id}/{rec.connection_id} seq {rec.seq}: {e}",
            type=Reason.INVALID_INPUT.value,
            non_retryable=True,
        ) from e


class StoreActivities:
    """The store's activity. Sync: the worker runs it in its thread-pool executor.

    Database errors (connection refused, lock timeouts, failover) propagate and are
    retried by Temporal; only invalid data is non-retryable.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    @activity.defn(name=ACT_RECORD_STATUS)
    def record_status(self, rec: StatusRecord) -> None:
        applied = record_checked(self.store, rec)
        activity.logger.debug(
            "recorded %s/%s seq=%d status=%s applied=%s",
            rec.org_id,
            rec.connection_id,
            rec.seq,
            rec.status,
            applied,
        )


class OrgSlotActivities:
    """The org guard's durable state: its holders and the org's limit override. Local
    activities of the guard workflow (a fast write before each answer)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @activity.defn(name=ACT_LOAD_ORG_SLOTS)
    def load_org_slots(self, org_id: str) -> OrgSlots:
        return OrgSlots(
            org_id=org_id,
            limit=self.store.org_limit(org_id),
            holders=self.store.org_slots(org_id),
        )

    @activity.defn(name=ACT_SAVE_ORG_SLOTS)
    def save_org_slots(self, slots: OrgSlots) -> None:
        self.store.save_org_slots(slots.org_id, slots.holders)
