"""One settings model for every privnet process (worker, API, CLI), env prefix ``PRIVNET_``.

Complex values (lists, dicts) are read from the environment as JSON, e.g.
``PRIVNET_TASK_NAMESPACES='["tasks"]'`` and
``PRIVNET_ENDPOINT_NETWORKS='{"us-east-1": {"vpc_id": "vpc-1", "subnet_ids": ["subnet-1"],
"security_group_ids": ["sg-1"]}}'``; a region may also map to a list of such networks
(several VPCs: new endpoints go to the first with room under the per-VPC quota).
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EndpointNetwork(BaseModel):
    """Where our interface endpoints live in one region of the dedicated endpoints account."""

    vpc_id: str
    subnet_ids: list[str] = Field(
        default_factory=list, description="Candidate subnets; empty = every subnet of the VPC"
    )
    security_group_ids: list[str] = Field(default_factory=list)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRIVNET_", extra="ignore")

    # Temporal
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_tls_cert: str | None = Field(None, description="Path to the client certificate (mTLS)")
    temporal_tls_key: str | None = Field(None, description="Path to the client key (mTLS)")
    temporal_api_key: str | None = Field(None, description="Temporal Cloud API key")
    task_queue: str = "privnet"
    guard_task_queue: str | None = Field(
        None, description="org guards' own queue; default '<task_queue>-guards'"
    )
    worker_activity_slots: int = Field(
        64, description="activities one worker runs at once (threads for the sync ones)"
    )
    worker_cache_size: int = Field(
        1500, description="connection workflows a worker keeps in its sticky cache"
    )
    worker_guard_cache_size: int = Field(
        100, description="org guard workflows a worker keeps in its sticky cache"
    )
    temporal_ui_url: str = "http://localhost:8233"

    # Store
    database_url: str = "sqlite:///privnet.db"

    # AWS: the dedicated endpoints account
    aws_region: str = "us-east-1"
    aws_role_arn: str | None = Field(
        None, description="Role assumed in the endpoints account; unset = ambient credentials"
    )
    aws_endpoint_url: str | None = Field(None, description="Override (sandbox/moto) endpoint URL")
    aws_principal_arn: str | None = Field(
        None,
        description="The principal customers must allow on their endpoint service; "
        "default arn:aws:iam::<endpoints account>:root",
    )
    # Per region: one network, or a list tried in order (the per-VPC endpoint quota).
    endpoint_networks: dict[str, EndpointNetwork | list[EndpointNetwork]] = Field(
        default_factory=dict
    )
    endpoint_vpc_full_seconds: float = Field(
        300, description="A VPC that answered VpcEndpointLimitExceeded is skipped this long"
    )
    aws_max_pool_connections: int = Field(
        64, description="boto3 HTTP pool per client; match the worker's activity concurrency"
    )

    # Kubernetes
    kubeconfig: str | None = Field(None, description="Path to a kubeconfig; unset = in-cluster")
    kube_context: str | None = None
    kube_url: str | None = Field(None, description="API server URL without auth (sandbox only)")
    task_namespaces: list[str] = Field(default_factory=lambda: ["tasks"])
    org_label_key: str = "privnet.dev/org-id"

    # Connections
    default_org_limit: int = 2
    acceptance_timeout_seconds: float = 7 * 24 * 3600
    drift_check_interval_seconds: float = 600
    endpoint_first_poll_seconds: float = Field(
        39.5, description="after the create, the first look waits this long (AWS takes "
        "30-150 s to make an interface endpoint available: the earliest plus one interval, "
        "so no look is spent before it); 0 against an AWS with no delay looks at once"
    )
    endpoint_poll_interval_seconds: float = Field(
        9.5, description="then look this often: bounds the delay from available to Active "
        "(10 s with the poll's own time)"
    )
    acceptance_first_poll_seconds: float = Field(
        30, description="first look at a pendingAcceptance endpoint; then ever less often"
    )
    acceptance_poll_max_interval_seconds: float = Field(
        300, description="longest wait between two looks while the customer has not accepted"
    )
    drift_not_found_grace_seconds: float = Field(
        600, description="an Active connection ends only after NotFound on looks this long"
    )
    endpoint_visibility_window_seconds: float = Field(
        300, description="after a create, NotFound for the new endpoint is retried this long"
    )
    cleanup_max_backoff_seconds: float = Field(
        600, description="compensation blocked by an operator-fixable error retries this often"
    )
    slot_decision_timeout_seconds: float = 300
    temporal_connect_timeout_seconds: float = Field(
        300, description="a starting worker waits this long for Temporal before it exits"
    )
    step_timeout_seconds: float = Field(
        60, description="one attempt of a step; a dead worker's attempt is retried after this"
    )
    guard_leak_check_interval_seconds: float = 300

    # HTTP API. A JSON list (each token acts for every org, as the dashboard backend does)
    # or a JSON object {"<token>": ["org-a", "org-b"] | "*"} scoping each token.
    api_tokens: list[str] | dict[str, list[str] | Literal["*"]] = Field(default_factory=list)
    api_host: str = "127.0.0.1"
    api_port: int = 8080

    # Crash tests only: block a worker inside an activity so a test can SIGKILL it there.
    # A JSON list of {"activity", "phase": "before"|"after", "connection_id"?, "status"?};
    # each hit is appended to ``failpoint_log``. Never set in production.
    failpoints: list[dict[str, str]] = Field(default_factory=list)
    failpoint_log: str | None = None

    # Pre-flight check and setup facts: how long a caller waits for the worker's answer
    edge_timeout_seconds: float = 60

    # Sweeper (orphaned endpoints and policies) and store migrations
    sweep_interval_seconds: float = 3600
    sweep_grace_seconds: float = Field(
        3600, description="an orphan is deleted only this long after it was last owned"
    )
    db_auto_migrate: bool | None = Field(
        None, description="migrate the store at worker/API start; unset = on for SQLite only"
    )

    # Observability
    log_level: str = "INFO"
    metrics_port: int | None = Field(None, description="Prometheus port for SDK + privnet metrics")

    def networks_for(self, region: str) -> list[EndpointNetwork]:
        """The endpoint networks of ``region`` in the order new endpoints try them."""
        value = self.endpoint_networks.get(region)
        if value is None:
            return []
        return list(value) if isinstance(value, list) else [value]

    @property
    def guard_queue(self) -> str:
        """Org guards run on their own task queue: their decisions never wait behind
        connection tasks, and they stay out of the connections' sticky cache."""
        return self.guard_task_queue or f"{self.task_queue}-guards"

    @property
    def acceptance_timeout(self) -> timedelta:
        return timedelta(seconds=self.acceptance_timeout_seconds)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
