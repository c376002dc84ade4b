"""Contracts shared by every side: workflow inputs, statuses, reason codes, signals,
activity names and their payloads, and the connection view.

Deterministic and dependency-free (pydantic + stdlib only): workflows import this module
inside the Temporal sandbox, activities and starters import it directly.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator
from temporalio.common import SearchAttributeKey

# --------------------------------------------------------------------------- identifiers

ORG_ID_RE = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$")
CONNECTION_ID_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
SERVICE_NAME_RE = re.compile(
    r"^com\.amazonaws\.vpce\.([a-z]{2}(?:-[a-z]+)+-\d)\.(vpce-svc-[0-9a-f]{8,17})$"
)
REGION_RE = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d$")

SERVICE_NAME_FORMAT = "com.amazonaws.vpce.<region>.vpce-svc-<hex id>"

TASK_QUEUE = "privnet"
DEFAULT_ORG_LABEL_KEY = "privnet.dev/org-id"
MANAGED_BY = "privnet"


def connection_workflow_id(org_id: str, connection_id: str) -> str:
    return f"privnet-conn:{org_id}:{connection_id}"


def org_guard_workflow_id(org_id: str) -> str:
    return f"privnet-org:{org_id}"


def policy_name(org_id: str, connection_id: str) -> str:
    """The name of a connection's CiliumNetworkPolicy: a DNS-1123 label (≤ 63 chars) that
    is distinct for every distinct (org, connection), because connection ids are unique
    only within an org.

    * ``privnet-<org>--<connection>`` when the org id has no ``_``, ``.`` or ``--`` and the
      name fits: the first ``--`` after ``privnet-`` separates the two, so the pair can be
      read back (injective without a hash);
    * otherwise ``privnet-<org'>-<connection'>-<hash>``: ``org'``/``connection'`` are the ids
      with ``_``/``.`` as ``-``, runs of ``-`` collapsed, cut to 16/12 characters (for
      reading only); ``hash`` is 20 hex digits (80 bits) of SHA-256 over the full
      ``org/connection`` (``/`` is in neither id). These names never contain ``--``, so they
      cannot equal a name of the first form.

    The ids themselves stay in the labels ``privnet.dev/org-id`` and
    ``privnet.dev/connection-id``, which decide ownership.
    """
    readable = f"privnet-{org_id}--{connection_id}"
    if len(readable) <= 63 and "--" not in org_id and not _NON_LABEL.search(org_id):
        return readable
    digest = hashlib.sha256(f"{org_id}/{connection_id}".encode()).hexdigest()[:20]
    org_part = _squash(org_id)[:16].strip("-")
    connection_part = _squash(connection_id)[:12].strip("-")
    return f"privnet-{org_part}-{connection_part}-{digest}"


_NON_LABEL = re.compile(r"[_.]")


def _squash(text: str) -> str:
    return re.sub(r"-+", "-", _NON_LABEL.sub("-", text))


class InvalidInput(ValueError):
    """A request a user can fix; ``code`` is stable, ``message`` names the fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def validate_org_id(org_id: str) -> str:
    if not isinstance(org_id, str) or not ORG_ID_RE.fullmatch(org_id):
        raise InvalidInput(
            "INVALID_ORG_ID",
            f"org id {org_id!r} is not a valid Kubernetes label value: use 1-63 lowercase "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        )
    return org_id


def validate_connection_id(connection_id: str) -> str:
    if not isinstance(connection_id, str) or not CONNECTION_ID_RE.fullmatch(connection_id):
        raise InvalidInput(
            "INVALID_CONNECTION_ID",
            f"connection id {connection_id!r} is invalid: use 1-40 lowercase letters, digits "
            "or '-', starting and ending with a letter or digit",
        )
    return connection_id


def parse_service_region(service_name: str) -> str:
    """Region of an endpoint service, parsed from its name."""
    m = SERVICE_NAME_RE.fullmatch(service_name or "")
    if not m:
        raise InvalidInput(
            "INVALID_SERVICE_NAME",
            f"endpoint service name {service_name!r} is not of the form {SERVICE_NAME_FORMAT} "
            "(copy it from the customer's VPC console: Endpoint services → Service name)",
        )
    return m.group(1)


def validate_region(region: str) -> str:
    if not isinstance(region, str) or not REGION_RE.fullmatch(region):
        raise InvalidInput(
            "INVALID_REGION", f"region {region!r} is not an AWS region name such as us-east-1"
        )
    return region


# Custom search attributes (Keyword) so operators can filter in the UI / visibility API.
SA_ORG_ID = SearchAttributeKey.for_keyword("PrivnetOrgId")
SA_STATUS = SearchAttributeKey.for_keyword("PrivnetStatus")
SA_REGION = SearchAttributeKey.for_keyword("PrivnetRegion")
SA_ENDPOINT_ID = SearchAttributeKey.for_keyword("PrivnetEndpointId")
SEARCH_ATTRIBUTES = [SA_ORG_ID, SA_STATUS, SA_REGION, SA_ENDPOINT_ID]


# --------------------------------------------------------------------------- statuses


class ConnectionStatus(StrEnum):
    PENDING = "Pending"
    CHECKING_PRINCIPAL = "CheckingPrincipal"
    CREATING_ENDPOINT = "CreatingEndpoint"
    WAITING_FOR_ACCEPTANCE = "WaitingForAcceptance"
    WAITING_FOR_IP = "WaitingForIp"
    APPLYING_POLICY = "ApplyingPolicy"
    ACTIVE = "Active"
    # Active, but the drift check cannot currently see AWS or Kubernetes: nothing is torn
    # down; it returns to Active by itself.
    DEGRADED = "Degraded"
    DELETING = "Deleting"
    # Compensation keeps retrying an error only an operator can fix (IAM action, RBAC verb).
    CLEANUP_BLOCKED = "CleanupBlocked"
    DELETED = "Deleted"
    FAILED = "Failed"
    REJECTED = "Rejected"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        ConnectionStatus.DELETED,
        ConnectionStatus.FAILED,
        ConnectionStatus.REJECTED,
        ConnectionStatus.CANCELLED,
    }
)
# Statuses before (or at) the org guard's decision: ``create`` waits until past them.
ADMISSION_STATUSES = frozenset({ConnectionStatus.PENDING})
# One activity call between two resting statuses: the store, the query, the timeline and the
# UI's current details show them; the PrivnetStatus search attribute (each change a
# visibility write, which the bench measured as a large share of the dev server's cost per
# connection) holds the status a connection rests in. A step stuck retrying keeps the status it came from there
# (still outside Active and the terminal ones, so a filter for stuck provisioning finds it).
PASSING_STATUSES = frozenset(
    {
        ConnectionStatus.CHECKING_PRINCIPAL,
        ConnectionStatus.CREATING_ENDPOINT,
        ConnectionStatus.APPLYING_POLICY,
    }
)
# Provisioning's statuses by step, in the order a connection passes them (acceptance and the
# wait for IPs are one step: AWS may go either way between them). Provisioning only moves
# forward: the store refuses one of them after a later status (``activities.store.goes_back``).
PROVISIONING_STEP = {
    ConnectionStatus.PENDING: 0,
    ConnectionStatus.CHECKING_PRINCIPAL: 1,
    ConnectionStatus.CREATING_ENDPOINT: 2,
    ConnectionStatus.WAITING_FOR_ACCEPTANCE: 3,
    ConnectionStatus.WAITING_FOR_IP: 3,
    ConnectionStatus.APPLYING_POLICY: 4,
}
PROVISIONING_STATUSES = frozenset(PROVISIONING_STEP)


class Reason(StrEnum):
    """Stable reason codes. Also used as ``ApplicationError.type`` by activities."""

    # user / customer side (non-retryable)
    INVALID_SERVICE_NAME = "INVALID_SERVICE_NAME"
    INVALID_INPUT = "INVALID_INPUT"
    PRINCIPAL_NOT_ALLOWED = "PRINCIPAL_NOT_ALLOWED"
    AZ_NOT_SUPPORTED = "AZ_NOT_SUPPORTED"
    REGION_NOT_SUPPORTED = "REGION_NOT_SUPPORTED"
    ENDPOINT_REJECTED = "ENDPOINT_REJECTED"
    ENDPOINT_FAILED = "ENDPOINT_FAILED"
    ENDPOINT_EXPIRED = "ENDPOINT_EXPIRED"
    ENDPOINT_DELETED = "ENDPOINT_DELETED"
    ACCEPTANCE_TIMEOUT = "ACCEPTANCE_TIMEOUT"
    LIMIT_REACHED = "LIMIT_REACHED"
    # an object with privnet's name but another owner (labels/tags): never changed
    NAME_CONFLICT = "NAME_CONFLICT"
    # an AWS quota in the endpoints account (e.g. interface endpoints per VPC)
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    # our side
    PRINCIPAL_CHECK_FAILED = "PRINCIPAL_CHECK_FAILED"
    CONFIGURATION_ERROR = "CONFIGURATION_ERROR"
    AWS_ACCESS_DENIED = "AWS_ACCESS_DENIED"
    ENDPOINT_CREATE_FAILED = "ENDPOINT_CREATE_FAILED"
    POLICY_INVALID = "POLICY_INVALID"
    POLICY_APPLY_FAILED = "POLICY_APPLY_FAILED"
    KUBERNETES_FORBIDDEN = "KUBERNETES_FORBIDDEN"
    ACTIVATION_FAILED = "ACTIVATION_FAILED"
    SLOT_TIMEOUT = "SLOT_TIMEOUT"
    INTERNAL_ERROR = "INTERNAL_ERROR"


# Retryable ApplicationError types (never stop a workflow on their own).
RETRYABLE_THROTTLED = "AWS_THROTTLED"
RETRYABLE_TRANSIENT = "TRANSIENT"
STATE_UNCHANGED = "STATE_UNCHANGED"  # benign: the poll loop's "not yet"
ENDPOINT_NOT_DELETED_YET = "ENDPOINT_NOT_DELETED_YET"
# Retryable (benign): InvalidVpcEndpointId.NotFound before ``not_found_retry_until`` (EC2's
# eventual consistency right after CreateVpcEndpoint), so the retry policy looks again.
ENDPOINT_NOT_VISIBLE_YET = "ENDPOINT_NOT_VISIBLE_YET"
# Non-retryable: InvalidVpcEndpointId.NotFound for an endpoint id. Not a verdict by itself:
# the workflow decides when NotFound is authoritative (seen over a grace period).
ENDPOINT_NOT_FOUND = "ENDPOINT_NOT_FOUND"
# A local activity attempt started after its schedule-to-close deadline (the worker's
# LocalActivityDeadline interceptor: the SDK retries past it, see worker.py).
LOCAL_ACTIVITY_DEADLINE = "LOCAL_ACTIVITY_DEADLINE"

# Every non-retryable type activities may raise; workflows pass it to retry policies.
NON_RETRYABLE_TYPES: list[str] = [r.value for r in Reason] + [ENDPOINT_NOT_FOUND]


# --------------------------------------------------------------------------- workflow I/O


class ConnectionOptions(BaseModel):
    """Timing knobs, filled from settings by the starter so workflow code stays pure."""

    acceptance_timeout: timedelta = timedelta(days=7)
    drift_check_interval: timedelta = timedelta(minutes=10)
    slot_decision_timeout: timedelta = timedelta(minutes=5)
    default_org_limit: int = 2
    # One attempt of a forward step (a dead worker's attempt is retried after this).
    step_timeout: timedelta = timedelta(seconds=60)
    # Upper bound of the poll loop backoff for endpoint state (activity retry interval).
    poll_max_interval: timedelta = timedelta(seconds=30)
    poll_initial_interval: timedelta = timedelta(seconds=1)
    # While the customer has not accepted yet, poll less often: a 7-day wait at the
    # 30 s cap would cost ~20,000 DescribeVpcEndpoints calls (`privnet retry` skips ahead).
    acceptance_poll_max_interval: timedelta = timedelta(minutes=5)
    # The poll schedule, shaped by how long AWS takes (an interface endpoint is available
    # 30-150 s after its create): after the create (whose answer is the first look), the
    # next look after ``pending_first_look``, then every ``pending_poll_interval`` (the
    # bound on the delay between AWS reporting available and the connection going Active,
    # with the poll's own time). The first wait is the earliest AWS makes one available
    # (30 s) plus one interval: a look at exactly 30 s finds only an endpoint AWS made
    # available within 30 s, the very start of that range, and costs every other
    # connection a call; one available by 30 s is still seen by 39.5 s. Before release 7
    # one more look came at once after the create. Against an AWS with no delay (the
    # benchmark's sandbox) ``pending_first_look`` 0 looks at once. A pendingAcceptance
    # endpoint is looked at after ``acceptance_first_look``, then ever less often up to
    # ``acceptance_poll_max_interval``.
    pending_first_look: timedelta = timedelta(seconds=39.5)
    pending_poll_interval: timedelta = timedelta(seconds=9.5)
    acceptance_first_look: timedelta = timedelta(seconds=30)
    # EC2 is eventually consistent: for this long after our CreateVpcEndpoint returned, a
    # NotFound for the new endpoint id is retried, not taken as "deleted".
    visibility_window: timedelta = timedelta(minutes=5)
    # One drift look (all its retries); when it cannot finish, the connection is Degraded.
    drift_check_timeout: timedelta = timedelta(minutes=2)
    # While Degraded (or confirming a NotFound), look again this often.
    degraded_check_interval: timedelta = timedelta(minutes=1)
    # NotFound ends an Active connection only when seen on consecutive looks this long.
    not_found_grace: timedelta = timedelta(minutes=10)
    # Continue as new after this many drift checks (besides the server's suggestion).
    drift_checks_per_run: int = Field(default=100, ge=1)
    # Compensation blocked on an error only an operator can fix backs off up to this.
    cleanup_max_backoff: timedelta = timedelta(minutes=10)
    # The guard answers in milliseconds; ask again this often until slot_decision_timeout.
    slot_request_interval: timedelta = timedelta(seconds=15)


class ResumeState(BaseModel):
    """Carried across continue-as-new of an Active connection (history stays bounded):
    everything the next run needs, including signals that arrived and are not handled yet."""

    seq: int
    vpc_endpoint_id: str
    ips: list[str]
    dns_names: list[str] = Field(default_factory=list)
    acceptance_required: bool = False
    status: ConnectionStatus = ConnectionStatus.ACTIVE  # Active or Degraded
    reason: str | None = None
    message: str = ""
    not_found_since: datetime | None = None
    stop: Literal["delete", "cancel"] | None = None
    retry_now: bool = False


# The connection workflow's command sequence a starter asks for (``ConnectionInput.release``).
# 3: every change that used to be decided by a ``workflow.patched`` marker is on, without the
# markers (each one is a history event and a TemporalChangeVersion search-attribute upsert,
# i.e. a visibility write, in every new workflow), and the search attribute holds only
# resting statuses. Inputs from before it carry 0 and keep deciding by markers.
# 4: a status a connection only passes through (PASSING_STATUSES) is written by the step's
# own activity before it acts (``status`` in its input), not by a local activity of its own:
# three fewer local activities, markers and activations per connection.
# 5: the principal check and the look right after the create are local activities: one
# AWS call each whose result the next command needs, run inside the workflow task (no task
# queue round trip, no workflow task of their own; one marker event each instead of three).
# The guard's answer, the create, the poll loop, the policy apply and compensation stay
# activities: they may wait long (a local activity holds the workflow task, and queries wait
# for it), and the UI shows them pending.
# 6: the first policy apply is a local activity too (a few Kubernetes calls; the Active
# write follows in the same workflow task). Several statuses are then written from one
# workflow task; if it is discarded (a worker killed mid-task), its run again writes them
# under new seqs, and the store refuses the earlier ones after the later (``goes_back``).
# 7: no look right after the create: its answer is a look, AWS takes at least 30 s, and
# that look found ``pending`` on every connection (one DescribeVpcEndpoints each). The first
# look comes after ``pending_first_look``, the poll loop one interval after it. A pending
# state seen any other way (an endpoint found after an ambiguous create, an acceptance) is
# still looked at once. And the policies' undo is registered with the endpoint's, before the
# create: a local apply in a lost workflow task leaves policies the history does not show
# (the soak found them left after a cancel).
CURRENT_RELEASE = 7


class ConnectionInput(BaseModel):
    org_id: str
    connection_id: str
    endpoint_service_name: str
    region: str
    display_name: str | None = None
    ports: list[int] = Field(default_factory=list)
    options: ConnectionOptions = Field(default_factory=ConnectionOptions)
    resume: ResumeState | None = None
    # Input, so replay sees the same value; continue-as-new copies it. Workers must be
    # upgraded before starters: an older worker runs a newer release the old way (markers
    # before release 3, a local activity per passing status before 4), which the newer
    # code would not expect on replay.
    release: int = 0

    @field_validator("org_id")
    @classmethod
    def _org(cls, v: str) -> str:
        return validate_org_id(v)

    @field_validator("connection_id")
    @classmethod
    def _conn(cls, v: str) -> str:
        return validate_connection_id(v)

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for p in v:
            if not 1 <= p <= 65535:
                raise InvalidInput("INVALID_PORT", f"port {p} is outside 1-65535")
        return sorted(set(v))

    @property
    def service_region(self) -> str:
        return parse_service_region(self.endpoint_service_name)

    @property
    def workflow_id(self) -> str:
        return connection_workflow_id(self.org_id, self.connection_id)


class ConnectionState(BaseModel):
    """What the ``status`` query returns: the workflow's view of the connection."""

    org_id: str
    connection_id: str
    status: ConnectionStatus
    reason: str | None = None
    message: str = ""
    endpoint_service_name: str
    region: str
    service_region: str
    vpc_endpoint_id: str | None = None
    ips: list[str] = Field(default_factory=list)
    dns_names: list[str] = Field(default_factory=list)
    aws_state: str | None = None
    step: str = ""
    seq: int = 0
    delete_requested: bool = False


class SlotDecision(BaseModel):
    connection_id: str
    granted: bool
    usage: int
    limit: int


# Signal and query names (string constants so starters and workflows agree).
SIGNAL_DELETE = "delete"
SIGNAL_CANCEL = "cancel"
SIGNAL_RETRY_NOW = "retry_now"
SIGNAL_SLOT_DECISION = "slot_decision"
QUERY_STATUS = "status"
# Answers once the connection has left admission (``ADMISSION_STATUSES``): ``create``'s one
# wait, sent with the start (update-with-start), instead of a status query every half second.
UPDATE_ADMITTED = "admitted"

SIGNAL_ACQUIRE = "acquire"
SIGNAL_RELEASE = "release"
SIGNAL_SET_LIMIT = "set_limit"
UPDATE_ACQUIRE_SLOT = "acquire_slot"
QUERY_USAGE = "usage"


class AcquireRequest(BaseModel):
    kind: Literal["acquire"] = "acquire"
    connection_id: str
    workflow_id: str
    # True: asked by the ``acquire_slot`` update, answered as its result (no signal back).
    by_update: bool = False


class ReleaseRequest(BaseModel):
    kind: Literal["release"] = "release"
    connection_id: str


class SetLimitRequest(BaseModel):
    kind: Literal["set_limit"] = "set_limit"
    limit: int = Field(ge=0)


GuardRequest = Annotated[
    AcquireRequest | ReleaseRequest | SetLimitRequest, Field(discriminator="kind")
]


class OrgGuardInput(BaseModel):
    org_id: str
    limit: int = 2
    holders: dict[str, str] = Field(default_factory=dict)  # connection_id -> workflow_id
    leak_check_interval: timedelta = timedelta(minutes=5)
    # Requests not yet decided when continuing as new, in arrival order.
    pending: list[GuardRequest] = Field(default_factory=list)
    # Continue as new when the server suggests it or the history reaches this length.
    max_history_events: int = 10_000
    # False: a fresh start (first use, after terminate or reset): rebuild holders and limit
    # from the store before answering anything. Continue-as-new carries True.
    restored: bool = False


class GuardUsage(BaseModel):
    org_id: str
    limit: int
    usage: int
    holders: dict[str, str]


# --------------------------------------------------------------------------- activities
# Names are the contract between workflows and activity classes (workflows never import
# activities). Every input/output is a pydantic model below.

ACT_REQUEST_SLOT = "request_slot"
ACT_ACQUIRE_SLOT = "acquire_slot"
ACT_RELEASE_SLOT = "release_slot"
ACT_CLOSED_WORKFLOWS = "closed_workflows"
ACT_CHECK_PRINCIPAL = "check_principal"
ACT_CREATE_ENDPOINT = "create_endpoint"
ACT_WAIT_FOR_STATE_CHANGE = "wait_for_state_change"
ACT_GET_ENDPOINT_ADDRESSES = "get_endpoint_addresses"
ACT_DELETE_ENDPOINT = "delete_endpoint"
ACT_WAIT_ENDPOINT_DELETED = "wait_endpoint_deleted"
ACT_APPLY_POLICIES = "apply_policies"
ACT_DELETE_POLICIES = "delete_policies"
ACT_RECORD_STATUS = "record_status"
ACT_LOAD_ORG_SLOTS = "load_org_slots"
ACT_SAVE_ORG_SLOTS = "save_org_slots"


class OrgSlots(BaseModel):
    """The org guard's durable state in the store: holders, and the limit override (None:
    the default)."""

    org_id: str
    limit: int | None = None
    holders: dict[str, str] = Field(default_factory=dict)  # connection_id -> workflow_id


class SlotRequest(BaseModel):
    org_id: str
    connection_id: str
    workflow_id: str
    default_limit: int = 2


class SlotRelease(BaseModel):
    org_id: str
    connection_id: str
    default_limit: int = 2


class ClosedWorkflowsInput(BaseModel):
    workflow_ids: list[str]


class ClosedWorkflowsResult(BaseModel):
    closed: list[str]


class StatusRecord(BaseModel):
    """One status write. ``seq`` grows with every write of one workflow run; the store
    ignores a write whose seq is not newer than the row's (retries, out-of-order)."""

    org_id: str
    connection_id: str
    seq: int
    at: datetime
    status: ConnectionStatus
    reason: str | None = None
    message: str = ""
    detail: str = ""
    endpoint_service_name: str
    region: str
    service_region: str
    display_name: str | None = None
    workflow_id: str
    vpc_endpoint_id: str | None = None
    ips: list[str] = Field(default_factory=list)
    dns_names: list[str] = Field(default_factory=list)


class CheckPrincipalInput(BaseModel):
    org_id: str
    connection_id: str
    service_name: str
    region: str  # where our endpoint lives
    service_region: str
    # Release 4: the status this step passes through, which the activity writes to the store
    # before it acts (instead of a local activity of its own); None from earlier releases.
    status: StatusRecord | None = None


class ServiceInfo(BaseModel):
    service_name: str
    service_id: str | None = None
    az_ids: list[str]
    acceptance_required: bool
    supported_regions: list[str] = Field(default_factory=list)
    private_dns_name: str | None = None
    usable_az_ids: list[str] = Field(default_factory=list)  # service AZs ∩ our subnets' AZs


class CreateEndpointInput(BaseModel):
    org_id: str
    connection_id: str
    service_name: str
    region: str
    service_region: str
    service_az_ids: list[str]
    # Release 4: the status this step passes through, which the activity writes to the store
    # before it acts (instead of a local activity of its own); None from earlier releases.
    status: StatusRecord | None = None


class EndpointRef(BaseModel):
    vpc_endpoint_id: str
    state: str
    created: bool = False  # False when an existing endpoint (tag or ClientToken) was found


class WaitStateInput(BaseModel):
    region: str
    vpc_endpoint_id: str
    # Whose endpoint (logs, crash-test failpoints); the endpoint id is what is read.
    org_id: str | None = None
    connection_id: str | None = None
    last_state: str | None = None
    # Until then a NotFound is EC2 eventual consistency (ENDPOINT_NOT_VISIBLE_YET, retried).
    not_found_retry_until: datetime | None = None




class EndpointAddressesInput(BaseModel):
    region: str
    vpc_endpoint_id: str
    # Whose endpoint (logs, crash-test failpoints); the endpoint id is what is read.
    org_id: str | None = None
    connection_id: str | None = None
    # Until then a NotFound is EC2 eventual consistency (ENDPOINT_NOT_VISIBLE_YET, retried).
    not_found_retry_until: datetime | None = None


class EndpointAddresses(BaseModel):
    vpc_endpoint_id: str
    state: str
    ips: list[str]
    dns_names: list[str]
    network_interface_ids: list[str] = Field(default_factory=list)


class EndpointState(BaseModel):
    vpc_endpoint_id: str
    state: str  # as AWS reports it; compare with .lower()
    attempt: int = 1
    # Filled when the state is available: the poll read the ENI IPs already.
    addresses: EndpointAddresses | None = None


class DeleteEndpointInput(BaseModel):
    region: str
    connection_id: str
    # Connection ids are unique per org only: the tag lookup and the ownership check
    # before a delete by id use both.
    org_id: str
    vpc_endpoint_id: str | None = None  # None: find by the connection-id tag
    # A NotFound for vpc_endpoint_id before this time is EC2 eventual consistency right after
    # our create, not "already gone" (ENDPOINT_NOT_VISIBLE_YET, retried).
    not_found_retry_until: datetime | None = None


class DeleteEndpointResult(BaseModel):
    vpc_endpoint_ids: list[str]  # what was (or is being) deleted; empty = nothing there
    # Endpoints found by id whose tags name another org/connection: never deleted (for
    # compensation: nothing of ours there).
    skipped_vpc_endpoint_ids: list[str] = Field(default_factory=list)


class ApplyPoliciesInput(BaseModel):
    org_id: str
    connection_id: str
    ips: list[str]
    ports: list[int] = Field(default_factory=list)
    # Release 4: the status this step passes through, which the activity writes to the store
    # before it acts (instead of a local activity of its own); None from earlier releases.
    status: StatusRecord | None = None


class ApplyPoliciesResult(BaseModel):
    namespaces: list[str]
    changed: list[str] = Field(default_factory=list)  # namespaces where a write happened


class DeletePoliciesInput(BaseModel):
    org_id: str
    connection_id: str


# --------------------------------------------------------------------------- views


class TimelineEntry(BaseModel):
    at: datetime
    status: str
    detail: str = ""


class ConnectionView(BaseModel):
    """The connection as the CLI (--json), HTTP API and ConnectionsClient show it."""

    org_id: str
    connection_id: str
    status: str
    reason: str | None = None
    message: str = ""
    endpoint_service_name: str
    region: str
    service_region: str
    display_name: str | None = None
    vpc_endpoint_id: str | None = None
    ips: list[str] = Field(default_factory=list)
    dns_names: list[str] = Field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    workflow_id: str | None = None
    timeline: list[TimelineEntry] | None = None


# --------------------------------------------------------------------------- edge (issue 14)
# Pre-flight check, setup facts and the sweeper: short workflows that run their activities
# in the worker (which holds the AWS role) and complete.

PREFLIGHT_WORKFLOW = "PreflightWorkflow"
SETUP_FACTS_WORKFLOW = "SetupFactsWorkflow"
SWEEP_WORKFLOW = "SweepWorkflow"
SWEEP_SCHEDULE_ID = "privnet-sweeper"

ACT_PREFLIGHT = "preflight_check"
ACT_SETUP_FACTS = "setup_facts"
ACT_SWEEP_FIND = "sweep_find_orphans"
ACT_SWEEP_DELETE = "sweep_delete_orphan"


class PreflightInput(BaseModel):
    org_id: str
    endpoint_service_name: str
    region: str  # where our endpoint would live
    service_region: str
    default_org_limit: int = 2


class PreflightCheck(BaseModel):
    name: str
    ok: bool
    detail: str
    fix: str | None = None  # what the customer (or operator) must do; None when ok


class PreflightResult(BaseModel):
    ok: bool
    checks: list[PreflightCheck]


class OrgUsage(BaseModel):
    org_id: str
    limit: int
    usage: int  # live (non-terminal) connections
    remaining: int


class RegionFacts(BaseModel):
    region: str
    az_ids: list[str]  # AZ ids where privnet has endpoint subnets
    cross_region: bool  # endpoints here can reach services in other regions


class SetupInput(BaseModel):
    region: str | None = None  # None: every offered region
    org_id: str | None = None
    default_org_limit: int = 2


class SetupFacts(BaseModel):
    principal_arn: str
    default_region: str
    regions_offered: list[str]
    regions: list[RegionFacts]
    cross_region_available: bool
    org: OrgUsage | None = None
    steps: list[str] = Field(default_factory=list)


class SweepInput(BaseModel):
    dry_run: bool = False
    grace: timedelta = timedelta(hours=1)


class Orphan(BaseModel):
    """A privnet-tagged endpoint or privnet-labelled policy that no live connection owns."""

    kind: Literal["endpoint", "policy"]
    id: str  # vpce id, or namespace/name
    region: str | None = None
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    org_id: str | None = None
    connection_id: str | None = None
    why: str
    created_at: datetime | None = None
    last_owned_at: datetime
    due: bool  # the grace period since last_owned_at has passed


class SweepReport(BaseModel):
    checked_at: datetime
    dry_run: bool = False
    grace_seconds: float
    endpoints_seen: int = 0
    policies_seen: int = 0
    orphans: list[Orphan] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)  # ids of orphans deleted
    skipped: list[str] = Field(default_factory=list)  # ids found owned/changed on re-check


class SweepDeleteInput(BaseModel):
    orphan: Orphan
    grace: timedelta


class SweepDeleteResult(BaseModel):
    deleted: bool
    detail: str
