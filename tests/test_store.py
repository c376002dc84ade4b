"""The connection store on SQLite (tmp file) and PostgreSQL (``PRIVNET_TEST_POSTGRES_URL``).

PostgreSQL tests run in a fresh schema per test session (dropped at the end), so earlier or
concurrent runs against the same database do not matter. If the server is unreachable they
FAIL when ``CI`` is set and skip (with the reason) otherwise.
"""

from __future__ import annotations

import os
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from multiprocessing import get_context

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.store import Store, StoreActivities, goes_back
from settings import Settings
from workflows.contracts import (
    ACT_RECORD_STATUS,
    ConnectionStatus,
    Reason,
    StatusRecord,
)

pytestmark = pytest.mark.timeout(120)

POSTGRES_URL = os.environ.get(
    "PRIVNET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SERVICE = "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0"
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
# A plausible workflow order; seq i gets FLOW[i - 1], then the statuses after provisioning
# in turn (AFTER: provisioning never comes back, the store refuses it).
FLOW = [
    ConnectionStatus.PENDING,
    ConnectionStatus.CHECKING_PRINCIPAL,
    ConnectionStatus.CREATING_ENDPOINT,
    ConnectionStatus.WAITING_FOR_ACCEPTANCE,
    ConnectionStatus.WAITING_FOR_IP,
    ConnectionStatus.APPLYING_POLICY,
    ConnectionStatus.ACTIVE,
]
AFTER = [
    ConnectionStatus.DEGRADED,
    ConnectionStatus.ACTIVE,
    ConnectionStatus.DELETING,
    ConnectionStatus.CLEANUP_BLOCKED,
    ConnectionStatus.DELETED,
]


def flow(seq: int) -> ConnectionStatus:
    return FLOW[seq - 1] if seq <= len(FLOW) else AFTER[(seq - 1 - len(FLOW)) % len(AFTER)]


def write(
    seq: int,
    *,
    org: str = "acme",
    conn: str = "db1",
    at: datetime | None = None,
    status: ConnectionStatus | None = None,
    **kw: object,
) -> StatusRecord:
    """The status write number ``seq`` of a connection: every field depends on seq, so the
    final row tells exactly which write won."""
    fields: dict[str, object] = dict(
        org_id=org,
        connection_id=conn,
        seq=seq,
        at=at or T0 + timedelta(seconds=seq),
        status=status or flow(seq),
        reason=None if seq % 3 else f"R{seq}",
        message=f"message {seq}",
        detail=f"detail {seq}",
        endpoint_service_name=SERVICE,
        region="us-east-1",
        service_region="us-east-1",
        display_name=f"name {seq}",
        workflow_id=f"privnet-conn:{org}:{conn}",
        vpc_endpoint_id=f"vpce-{seq:017x}" if seq > 2 else None,
        ips=[f"10.0.{seq % 256}.{i}" for i in range(seq % 3)],
        dns_names=[f"vpce-{seq}.example.com"] if seq > 4 else [],
    )
    fields.update(kw)
    return StatusRecord.model_validate(fields)


def invalid(**kw: object) -> StatusRecord:
    """A write carrying data the activity must refuse (bypasses model validation)."""
    return write(1).model_copy(update=kw)


def assert_row_is(store: Store, rec: StatusRecord, created_at: datetime) -> None:
    view = store.get(rec.org_id, rec.connection_id, with_timeline=False)
    assert view is not None
    assert view.model_dump(exclude={"timeline"}) == {
        "org_id": rec.org_id,
        "connection_id": rec.connection_id,
        "status": rec.status.value,
        "reason": rec.reason,
        "message": rec.message,
        "endpoint_service_name": rec.endpoint_service_name,
        "region": rec.region,
        "service_region": rec.service_region,
        "display_name": rec.display_name,
        "vpc_endpoint_id": rec.vpc_endpoint_id,
        "ips": rec.ips,
        "dns_names": rec.dns_names,
        "created_at": created_at,
        "updated_at": rec.at,
        "workflow_id": rec.workflow_id,
    }
    assert view.timeline is None


def timeline_seqs(store: Store, org: str, conn: str) -> list[int]:
    """The timeline as seqs (each test write has detail 'detail <seq>')."""
    view = store.get(org, conn)
    assert view is not None and view.timeline is not None
    return [int(e.detail.split()[-1]) for e in view.timeline]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: object) -> Callable[[], str]:
    """A factory of URLs to empty databases of the parametrized dialect."""
    counter = iter(range(1_000_000))

    def make() -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path}/sub{next(counter)}/privnet.db"
        factory: Callable[[str], str] = request.getfixturevalue("pg_schema_url")
        return factory("t")

    return make


@pytest.fixture
def db_url(fresh_url: Callable[[], str]) -> str:
    return fresh_url()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.create_schema()
    try:
        yield s
    finally:
        s.dispose()


# --------------------------------------------------------------------------- sequence guard


@hyp_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_sequence_guard_under_out_of_order_and_retried_writes(
    store: Store, data: st.DataObject
) -> None:
    """Whatever order writes (and retries of them) arrive in, the row ends as the max-seq
    write, the timeline holds every seq exactly once in seq order, created_at is the time
    of the first write that arrived, and record() reports True exactly for writes newer
    than everything before them."""
    n = data.draw(st.integers(1, 12), label="n")
    order = data.draw(st.permutations(list(range(1, n + 1))), label="order")
    retries = data.draw(st.lists(st.sampled_from(order), max_size=6), label="retries")
    arrivals = list(order)
    for seq in retries:  # a retry arrives after its original, anywhere later
        first = arrivals.index(seq)
        arrivals.insert(data.draw(st.integers(first + 1, len(arrivals)), label="at"), seq)
    conn = f"c{uuid.uuid4().hex[:12]}"

    seen = 0
    for seq in arrivals:
        applied = store.record(write(seq, conn=conn))
        assert applied == (seq > seen), (arrivals, seq)
        seen = max(seen, seq)

    assert_row_is(store, write(n, conn=conn), created_at=write(arrivals[0]).at)
    assert timeline_seqs(store, "acme", conn) == list(range(1, n + 1))
    view = store.get("acme", conn)
    assert view is not None and view.timeline is not None
    assert [e.status for e in view.timeline] == [write(s).status.value for s in range(1, n + 1)]
    assert [e.at for e in view.timeline] == [write(s).at for s in range(1, n + 1)]


def test_retried_write_is_idempotent(store: Store) -> None:
    assert store.record(write(1)) is True
    assert store.record(write(1)) is False
    assert store.record(write(2)) is True
    for _ in range(3):
        assert store.record(write(2)) is False
        assert store.record(write(1)) is False
    assert timeline_seqs(store, "acme", "db1") == [1, 2]
    assert_row_is(store, write(2), created_at=write(1).at)


def test_same_seq_with_other_content_does_not_overwrite(store: Store) -> None:
    """A (buggy or replayed) write reusing a seq changes neither the row nor the event."""
    store.record(write(5))
    assert store.record(write(5, status=ConnectionStatus.FAILED, message="other")) is False
    assert_row_is(store, write(5), created_at=write(5).at)
    view = store.get("acme", "db1")
    assert view is not None and view.timeline is not None
    assert [(e.status, e.detail) for e in view.timeline] == [(write(5).status, "detail 5")]


def test_a_write_repeated_under_a_higher_seq_is_one_timeline_entry(store: Store) -> None:
    """A workflow task discarded after its status write is retried under a higher seq (its
    history grew): the row takes the new seq, the timeline keeps one entry; a different
    status under the next seq is a new entry."""
    store.record(write(1))
    active = write(2, status=ConnectionStatus.ACTIVE, detail="reachable")
    store.record(active)
    assert store.record(active.model_copy(update={"seq": 31})) is True
    assert store.record(write(32, status=ConnectionStatus.DELETED, detail="deleted")) is True
    view = store.get("acme", "db1")
    assert view is not None and view.timeline is not None and view.status == "Deleted"
    assert [e.status for e in view.timeline] == [write(1).status.value, "Active", "Deleted"]


def test_a_discarded_task_run_again_never_moves_the_timeline_back(store: Store) -> None:
    """A workflow task whose local activities wrote WaitingForIp, ApplyingPolicy and Active
    is discarded (its worker killed before completing it) and run again: the retry writes
    the three again under higher seqs. The earlier two are refused, the row stays Active
    and the timeline does not go back; what follows provisioning still lands."""
    S = ConnectionStatus
    first = [
        write(1, status=S.PENDING, detail="requested"),
        write(9, status=S.WAITING_FOR_IP, detail="available"),
        write(10, status=S.APPLYING_POLICY, detail="allowing"),
        write(11, status=S.ACTIVE, detail="reachable"),
    ]
    assert [store.record(w) for w in first] == [True] * 4
    again = [w.model_copy(update={"seq": w.seq + 20}) for w in first[1:]]
    assert [store.record(w) for w in again] == [False, False, True]
    view = store.get("acme", "db1")
    assert view is not None and view.timeline is not None
    assert view.status == "Active"
    assert [e.status for e in view.timeline] == [
        "Pending", "WaitingForIp", "ApplyingPolicy", "Active"
    ]
    # Provisioning after Active, or after its end, is refused; the rest is not.
    assert store.record(write(40, status=S.DEGRADED, detail="aws unreachable")) is True
    assert store.record(write(41, status=S.CHECKING_PRINCIPAL, detail="late")) is False
    assert store.record(write(42, status=S.DELETED, detail="deleted")) is True
    assert store.record(write(43, status=S.PENDING, detail="late")) is False
    view = store.get("acme", "db1")
    assert view is not None and view.timeline is not None and view.status == "Deleted"
    assert [e.status for e in view.timeline][-2:] == ["Degraded", "Deleted"]


@pytest.mark.parametrize(
    ("before", "after", "back"),
    [
        ("Pending", "CheckingPrincipal", False),
        ("CreatingEndpoint", "CheckingPrincipal", True),
        ("WaitingForAcceptance", "WaitingForIp", False),
        ("WaitingForIp", "WaitingForAcceptance", False),  # one step: AWS may go either way
        ("ApplyingPolicy", "WaitingForIp", True),
        ("Active", "ApplyingPolicy", True),
        ("Active", "Degraded", False),
        ("Degraded", "Active", False),
        ("Failed", "Pending", True),
        ("Active", "Deleting", False),
    ],
)
def test_goes_back(before: str, after: str, back: bool) -> None:
    assert goes_back(before, after) is back


def _hammer(url: str, writes: list[StatusRecord], start: threading.Barrier | None) -> list[bool]:
    s = Store(url)
    try:
        if start is not None:
            start.wait()
        return [s.record(w) for w in writes]
    finally:
        s.dispose()


N_THREADS = 8
N_CONNS = 4
N_SEQ = 25


def _shuffled_writes(seed: int) -> list[StatusRecord]:
    ws = [write(s, conn=f"c{c}") for c in range(N_CONNS) for s in range(1, N_SEQ + 1)]
    random.Random(seed).shuffle(ws)
    return ws


def _assert_converged(store: Store, results: list[list[bool]]) -> None:
    for c in range(N_CONNS):
        assert_row_is(store, write(N_SEQ, conn=f"c{c}"), created_at=_created_at(store, f"c{c}"))
        assert timeline_seqs(store, "acme", f"c{c}") == list(range(1, N_SEQ + 1))
    # Every seq is applied at most once across all writers, the last one exactly once.
    flat = [
        (w.connection_id, w.seq)
        for seed, res in enumerate(results)
        for w, ok in zip(_shuffled_writes(seed), res, strict=True)
        if ok
    ]
    assert len(flat) == len(set(flat))
    assert sum(1 for _, s in flat if s == N_SEQ) == N_CONNS
    assert store.count_by_status() == {write(N_SEQ).status.value: N_CONNS}


def _created_at(store: Store, conn: str) -> datetime:
    view = store.get("acme", conn, with_timeline=False)
    assert view is not None and view.created_at is not None
    # Some write's time: whichever insert won the race.
    assert view.created_at in {write(s).at for s in range(1, N_SEQ + 1)}
    return view.created_at


def test_concurrent_writers_shared_engine(store: Store) -> None:
    """8 threads share one Store (one pool), each sends every write of 4 connections in
    its own shuffled order: each row ends at the max seq, no event is duplicated."""
    start = threading.Barrier(N_THREADS)

    def run(seed: int) -> list[bool]:
        start.wait()
        return [store.record(w) for w in _shuffled_writes(seed)]

    with ThreadPoolExecutor(N_THREADS) as pool:
        results = list(pool.map(run, range(N_THREADS)))
    _assert_converged(store, results)


def test_concurrent_writers_separate_engines(store: Store, db_url: str) -> None:
    """Same with one Store (engine, pool) per thread, like separate worker processes."""
    start = threading.Barrier(N_THREADS)
    with ThreadPoolExecutor(N_THREADS) as pool:
        futures = [
            pool.submit(_hammer, db_url, _shuffled_writes(seed), start) for seed in range(N_THREADS)
        ]
        results = [f.result() for f in futures]
    _assert_converged(store, results)


@pytest.mark.slow
def test_concurrent_writer_processes(store: Store, db_url: str) -> None:
    """Real processes (spawned) writing to the same database: WAL + busy timeout +
    BEGIN IMMEDIATE on SQLite, row locks on PostgreSQL; no 'database is locked'."""
    n_procs = 4
    with ProcessPoolExecutor(n_procs, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(_hammer, db_url, _shuffled_writes(seed), None) for seed in range(n_procs)
        ]
        results = [f.result(timeout=60) for f in futures]
    _assert_converged(store, results)


# --------------------------------------------------------------------------- reads


def test_get_missing_returns_none(store: Store) -> None:
    assert store.get("acme", "nope") is None
    assert store.list() == []
    assert store.count_by_status() == {}


def test_get_with_and_without_timeline(store: Store) -> None:
    for seq in (1, 2, 3):
        store.record(write(seq))
    full = store.get("acme", "db1")
    assert full is not None and full.timeline is not None
    assert [(e.at, e.status, e.detail) for e in full.timeline] == [
        (write(s).at, write(s).status.value, f"detail {s}") for s in (1, 2, 3)
    ]
    brief = store.get("acme", "db1", with_timeline=False)
    assert brief is not None and brief.timeline is None
    assert brief.model_dump(exclude={"timeline"}) == full.model_dump(exclude={"timeline"})


def test_created_at_stable_updated_at_follows_applied_write(store: Store) -> None:
    t1, t2, t3 = T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    store.record(write(1, at=t1))
    store.record(write(2, at=t2))
    view = store.get("acme", "db1")
    assert view is not None
    assert (view.created_at, view.updated_at) == (t1, t2)
    # A stale write with a later wall-clock time (a late retry) changes nothing.
    store.record(write(1, at=t3))
    view = store.get("acme", "db1")
    assert view is not None
    assert (view.created_at, view.updated_at) == (t1, t2)
    store.record(write(3, at=t3))
    view = store.get("acme", "db1")
    assert view is not None
    assert (view.created_at, view.updated_at, view.status) == (t1, t3, write(3).status)


def test_timestamps_are_utc_aware(store: Store) -> None:
    """A non-UTC offset is stored as the same instant and read back as UTC; naive
    datetimes are refused."""
    plus2 = timezone(timedelta(hours=2))
    at = datetime(2025, 6, 1, 14, 30, 15, 123456, tzinfo=plus2)
    store.record(write(1, at=at))
    view = store.get("acme", "db1")
    assert view is not None and view.timeline is not None
    for value in (view.created_at, view.updated_at, view.timeline[0].at):
        assert value == at
        assert value is not None and value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)
        assert value.hour == 12 and value.microsecond == 123456
    with pytest.raises(ValueError, match="timezone-aware"):
        store.record(write(2, at=datetime(2025, 6, 1, 12, 0)))
    assert timeline_seqs(store, "acme", "db1") == [1]


def test_list_order_and_filters(store: Store) -> None:
    # created_at order differs from insertion order and from ids.
    specs = [
        ("acme", "zeta", 3, ConnectionStatus.ACTIVE),
        ("acme", "alpha", 1, ConnectionStatus.FAILED),
        ("globex", "mid", 2, ConnectionStatus.ACTIVE),
        ("acme", "beta", 4, ConnectionStatus.WAITING_FOR_IP),
    ]
    for org, conn, minute, status in specs:
        store.record(write(1, org=org, conn=conn, at=T0 + timedelta(minutes=minute)))
        store.record(write(2, org=org, conn=conn, status=status, at=T0 + timedelta(hours=1)))

    def ids(views: list) -> list[tuple[str, str]]:
        return [(v.org_id, v.connection_id) for v in views]

    assert ids(store.list()) == [
        ("acme", "alpha"),
        ("globex", "mid"),
        ("acme", "zeta"),
        ("acme", "beta"),
    ]
    assert all(v.timeline is None for v in store.list())
    assert ids(store.list("acme")) == [("acme", "alpha"), ("acme", "zeta"), ("acme", "beta")]
    assert ids(store.list("nobody")) == []
    assert ids(store.list(statuses=["Active"])) == [("globex", "mid"), ("acme", "zeta")]
    assert ids(store.list("acme", statuses=[ConnectionStatus.ACTIVE, "WaitingForIp"])) == [
        ("acme", "zeta"),
        ("acme", "beta"),
    ]
    assert store.list(statuses=[]) == []
    store.record(write(3, org="acme", conn="beta", status=ConnectionStatus.APPLYING_POLICY,
                       at=T0 + timedelta(hours=2)))
    stuck = store.list(
        statuses=[s.value for s in ConnectionStatus if not s.terminal and s != "Active"],
        updated_before=T0 + timedelta(hours=1, minutes=30),
    )
    assert ids(stuck) == []
    assert ids(store.list(updated_before=T0 + timedelta(hours=1, minutes=30))) == [
        ("acme", "alpha"),
        ("globex", "mid"),
        ("acme", "zeta"),
    ]
    assert store.count_by_status() == {"Active": 2, "Failed": 1, "ApplyingPolicy": 1}
    assert store.count_by_status("globex") == {"Active": 1}


# --------------------------------------------------------------------------- schema


def test_create_schema_idempotent_and_concurrent(fresh_url: Callable[[], str]) -> None:
    url = fresh_url()
    stores = [Store(url) for _ in range(6)]
    try:
        start = threading.Barrier(len(stores))

        def create(s: Store) -> None:
            start.wait()
            s.create_schema()

        with ThreadPoolExecutor(len(stores)) as pool:
            list(pool.map(create, stores))
        stores[0].create_schema()
        assert stores[0].record(write(1)) is True
        stores[1].create_schema()  # existing data untouched
        assert timeline_seqs(stores[2], "acme", "db1") == [1]
    finally:
        for s in stores:
            s.dispose()


def test_sqlite_pragmas_and_settings(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/nested/dir/privnet.db"
    s = Store.from_settings(Settings.model_validate({"database_url": url}))
    try:
        s.create_schema()
        with s.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
        assert s.record(write(1))
    finally:
        s.dispose()


def test_sqlite_in_memory_shared_across_threads() -> None:
    s = Store("sqlite://")
    s.create_schema()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(s.record, [write(i) for i in range(1, 9)]))
    assert timeline_seqs(s, "acme", "db1") == list(range(1, 9))
    s.dispose()


def test_unsupported_database_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported database"):
        Store("mysql+pymysql://u@h/db")


# --------------------------------------------------------------------------- activity


def test_activity_records_status(store: Store) -> None:
    acts = StoreActivities(store)
    defn = activity._Definition.must_from_callable(acts.record_status)
    assert defn.name == ACT_RECORD_STATUS
    env = ActivityEnvironment()
    env.run(acts.record_status, write(2))
    env.run(acts.record_status, write(1))  # out of order: timeline only
    env.run(acts.record_status, write(2))  # retry: no-op
    assert_row_is(store, write(2), created_at=write(2).at)
    assert timeline_seqs(store, "acme", "db1") == [1, 2]


@pytest.mark.parametrize(
    "bad",
    [
        {"org_id": "Not A Label"},
        {"connection_id": "UPPER"},
        {"seq": -1},
        {"at": datetime(2025, 1, 1)},
    ],
)
def test_activity_invalid_data_is_non_retryable(store: Store, bad: dict[str, object]) -> None:
    with pytest.raises(ApplicationError) as err:
        ActivityEnvironment().run(StoreActivities(store).record_status, invalid(**bad))
    assert err.value.non_retryable
    assert err.value.type == Reason.INVALID_INPUT.value
    assert store.list() == []


@pytest.mark.postgres
def test_activity_value_too_long_for_postgres_is_non_retryable(
    pg_schema_url: Callable[[str], str],
) -> None:
    s = Store(pg_schema_url("long"))
    try:
        s.create_schema()
        with pytest.raises(ApplicationError) as err:
            ActivityEnvironment().run(
                StoreActivities(s).record_status, write(1, vpc_endpoint_id="vpce-" + "0" * 200)
            )
        assert err.value.non_retryable
    finally:
        s.dispose()


def test_activity_database_down_is_retryable() -> None:
    """Connection errors propagate as-is: Temporal retries them (not non-retryable)."""
    s = Store("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2")
    try:
        with pytest.raises(OperationalError):
            ActivityEnvironment().run(StoreActivities(s).record_status, write(1))
    finally:
        s.dispose()
