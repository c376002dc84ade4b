"""``SandboxAws``: moto's server in a thread, behind the fault middleware, with the
controls tests and the soak use in process (the admin API exposes the same ones)."""

from __future__ import annotations

import copy
import pickle
import random
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

from sandbox.aws import model
from sandbox.aws.faults import FaultMiddleware, FaultRule, make_rule
from sandbox.aws.handlers import install_privatelink
from sandbox.aws.state import (
    ADMIN_ROLE_NAME,
    LOCK,
    SANDBOX_ACCESS_KEY,
    SANDBOX_SECRET_KEY,
    Delays,
    SandboxState,
    now,
    using,
)

if TYPE_CHECKING:
    from sandbox.aws.seed import SandboxSeed


class UnknownEndpoint(KeyError):
    """No PrivateLink endpoint with that id (admin API: 404)."""


class SandboxAws:
    """moto server + PrivateLink model + faults. ``start()`` returns the endpoint URL."""

    SNAPSHOT_SERVICES = ("ec2", "elbv2", "iam", "sts")

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, seed: int = 0) -> None:
        self.host = host
        self.port = port
        self._server: Any = None
        self._url: str | None = None
        self._state = SandboxState()
        self._faults: list[FaultRule] = []
        self._fault_lock = threading.Lock()
        self._rng = random.Random(seed)
        self.requests: dict[str, int] = {}
        self.injected: list[tuple[str, str]] = []
        self._sessions: dict[str, boto3.Session] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        install_privatelink()
        sandbox = self

        class _Server(ThreadedMotoServer):
            def _server_entry(self) -> None:
                from moto.moto_server.threaded_moto_server import MotoRequestHandler

                class _Quiet(MotoRequestHandler):
                    def log_request(self, *args: Any, **kwargs: Any) -> None:
                        pass

                app = FaultMiddleware(DomainDispatcherApplication(create_backend_app), sandbox)
                self._server = make_server(
                    self._ip_address, self._port, app, True, request_handler=_Quiet
                )
                self._server_ready_event.set()
                self._server.serve_forever()

        self._server = _Server(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.port = port
        self._url = f"http://{host}:{port}"
        return self._url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("SandboxAws is not started")
        return self._url

    def __enter__(self) -> SandboxAws:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextmanager
    def _active(self) -> Iterator[None]:
        """This sandbox's state current and moto locked (in-process controls)."""
        with using(self._state), LOCK:
            yield

    # ------------------------------------------------------------------ persistence

    def snapshot(self, path: str | Path) -> None:
        """Write moto's state (every account and region of the services privnet uses,
        the PrivateLink model and the history included) to ``path`` atomically."""
        from moto.backends import get_backend

        with self._active():
            data = {
                name: {acct: dict(regions) for acct, regions in get_backend(name).items()}  # type: ignore[call-overload]
                for name in self.SNAPSHOT_SERVICES
            }
            blob = pickle.dumps(
                {"clock": now(), "backends": data, "history": self._state.history})
        target = Path(path)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_bytes(blob)
        tmp.replace(target)

    def restore(self, path: str | Path) -> None:
        """Load a ``snapshot``. Pending transitions resume where they were (the time the
        sandbox was down does not count); the history continues."""
        from moto.backends import get_backend

        saved = pickle.loads(Path(path).read_bytes())  # noqa: S301 - our own file
        with self._active():
            shift = now() - float(saved["clock"])
            for name, accounts in saved["backends"].items():
                backend_dict = get_backend(name)
                for acct, regions in accounts.items():
                    for region, backend in regions.items():
                        if name == "ec2":
                            for ep in backend.vpc_end_points.values():
                                pl = getattr(ep, "_pl", None) or {}
                                for key in model.PL_TIMES:
                                    if key in pl and pl[key] != model.GONE:
                                        pl[key] += shift
                        backend_dict[acct][region] = backend
            history = saved.get("history") or []
            for event in history:
                event["t"] += shift
            self._state.history[:0] = history
        self._sessions.clear()

    # ------------------------------------------------------------------ configuration

    def set_delays(
        self, *, pending: float | None = None, deleting: float | None = None,
        deleted_visible: float | None = None, lag: float | None = None,
        expire: float | None = None, no_expiry: bool = False,
    ) -> None:
        """Transition delays on the sandbox clock; ``lag`` is EC2's eventual consistency
        after a create; ``expire`` the pendingAcceptance timeout (``no_expiry`` clears it)."""
        d = self._state.delays
        for name, value in (("pending", pending), ("deleting", deleting),
                            ("deleted_visible", deleted_visible), ("lag", lag)):
            if value is not None:
                if float(value) < 0:
                    raise ValueError(f"{name} must be >= 0 seconds")
                setattr(d, name, float(value))
        if expire is not None:
            d.expire = float(expire)
        if no_expiry:
            d.expire = None

    @property
    def delays(self) -> Delays:
        return self._state.delays

    def set_quota(self, *, interface_endpoints_per_vpc: int) -> None:
        """The interface-endpoints-per-VPC quota (AWS default 50)."""
        if int(interface_endpoints_per_vpc) < 0:
            raise ValueError("interface_endpoints_per_vpc must be >= 0")
        self._state.quotas.interface_endpoints_per_vpc = int(interface_endpoints_per_vpc)

    def set_default_page_size(self, size: int | None) -> None:
        """Page every describe without MaxResults at ``size`` (None: AWS's all-at-once)."""
        if size is not None and int(size) < 1:
            raise ValueError("default_page_size must be >= 1 or null")
        self._state.default_page_size = None if size is None else int(size)

    def advance(self, seconds: float) -> None:
        """Move the sandbox clock forward (pending → available, deleting → deleted, lag)."""
        if float(seconds) < 0:
            raise ValueError("the sandbox clock only moves forward")
        self._state.clock_offset += float(seconds)

    def clock(self) -> float:
        with using(self._state):
            return now()

    def config(self) -> dict[str, Any]:
        with self._fault_lock:
            faults = [r.to_dict() for r in self._faults]
        return {
            "delays": asdict(self._state.delays), "quotas": asdict(self._state.quotas),
            "default_page_size": self._state.default_page_size, "faults": faults,
            "clock": self.clock(), "requests": dict(self.requests),
        }

    # ------------------------------------------------------------------ faults

    def inject_fault(
        self, kind: str = "RequestLimitExceeded", *, rate: float = 1.0,
        operations: Iterable[str] | None = None, phase: str = "before",
        services: Iterable[str] = ("ec2",),
    ) -> FaultRule:
        """Answer matching requests with an EC2 error (``phase="after"``: apply, then
        lose the response)."""
        if kind == "latency":
            raise ValueError("use add_latency for latency")
        return self._add_rule(make_rule(
            kind, rate=rate, operations=operations, phase=phase, services=services))

    def add_latency(
        self, seconds: float, *, rate: float = 1.0, operations: Iterable[str] | None = None,
        services: Iterable[str] = ("ec2",),
    ) -> FaultRule:
        return self._add_rule(make_rule(
            "latency", rate=rate, operations=operations, services=services, latency=seconds))

    def _add_rule(self, rule: FaultRule) -> FaultRule:
        with self._fault_lock:
            self._faults.append(rule)
        return rule

    def clear_faults(self, *, seed: int | None = None) -> None:
        with self._fault_lock:
            self._faults.clear()
            self.injected.clear()
            if seed is not None:
                self._rng = random.Random(seed)

    def reseed(self, seed: int) -> None:
        with self._fault_lock:
            self._rng = random.Random(seed)

    # ------------------------------------------------------------------ clients

    def session(self, account_id: str | None = None, role_name: str = ADMIN_ROLE_NAME) -> boto3.Session:
        """A boto3 session acting in ``account_id`` (assumed role) or plain credentials."""
        base = boto3.Session(
            aws_access_key_id=SANDBOX_ACCESS_KEY, aws_secret_access_key=SANDBOX_SECRET_KEY,
            region_name="us-east-1",
        )
        if account_id is None:
            return base
        key = f"{account_id}/{role_name}"
        if key not in self._sessions:
            sts = base.client("sts", endpoint_url=self.url)
            creds = sts.assume_role(
                RoleArn=f"arn:aws:iam::{account_id}:role/{role_name}",
                RoleSessionName="sandbox",
            )["Credentials"]
            self._sessions[key] = boto3.Session(
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"], region_name="us-east-1",
            )
        return self._sessions[key]

    def credentials(self, account_id: str) -> dict[str, str]:
        """AWS_* environment variables acting in ``account_id`` (e.g. for the AWS CLI)."""
        creds = self.session(account_id).get_credentials()
        assert creds is not None
        frozen = creds.get_frozen_credentials()
        return {"AWS_ACCESS_KEY_ID": frozen.access_key or "",
                "AWS_SECRET_ACCESS_KEY": frozen.secret_key or "",
                "AWS_SESSION_TOKEN": frozen.token or ""}

    def client(self, service: str, region: str, account_id: str | None = None) -> Any:
        session: Any = self.session(account_id)
        return session.client(service, region_name=region, endpoint_url=self.url)

    # ------------------------------------------------------------------ the customer side

    def _decide(self, service_name: str, endpoint_ids: str | list[str], accept: bool) -> list[Any]:
        found = model.find_service(service_name)
        if found is None:
            raise KeyError(service_name)
        owner, _backend, cfg = found
        ec2 = self.client("ec2", model.service_region(cfg), owner)
        ids = [endpoint_ids] if isinstance(endpoint_ids, str) else list(endpoint_ids)
        fn = ec2.accept_vpc_endpoint_connections if accept else ec2.reject_vpc_endpoint_connections
        return list(fn(ServiceId=cfg.id, VpcEndpointIds=ids).get("Unsuccessful", []))

    def connections(self, service_name: str, state: str | None = None) -> list[dict[str, Any]]:
        """DescribeVpcEndpointConnections as the service owner (optionally by state)."""
        found = model.find_service(service_name)
        if found is None:
            raise KeyError(service_name)
        owner, _backend, cfg = found
        ec2 = self.client("ec2", model.service_region(cfg), owner)
        filters = [{"Name": "service-id", "Values": [cfg.id]}]
        if state:
            filters.append({"Name": "vpc-endpoint-state", "Values": [state]})
        pages = ec2.get_paginator("describe_vpc_endpoint_connections").paginate(Filters=filters)
        return [c for p in pages for c in p["VpcEndpointConnections"]]

    def accept(self, service_name: str, endpoint_ids: str | list[str]) -> list[Any]:
        """Accept endpoint connections as the service owner (over the API); returns the
        Unsuccessful items."""
        return self._decide(service_name, endpoint_ids, True)

    def reject(self, service_name: str, endpoint_ids: str | list[str]) -> list[Any]:
        """Reject as the service owner: a pending request, or one already accepted."""
        return self._decide(service_name, endpoint_ids, False)

    def _endpoint(self, ep_id: str) -> Any:
        ep = model.find_endpoint(ep_id)
        if ep is None:
            raise UnknownEndpoint(f"endpoint {ep_id}")
        return ep

    def _owner_decision(self, ep_id: str, accept: bool) -> dict[str, Any]:
        with self._active():
            ep = self._endpoint(ep_id)
            found = model.find_service(ep.service_name)
            if found is None:
                raise UnknownEndpoint(f"service {ep.service_name}")
            unsuccessful = model.decide(found[2], [ep_id], accept)
            return {**model.describe(ep), "unsuccessful": unsuccessful}

    def accept_endpoint(self, ep_id: str) -> dict[str, Any]:
        """The service owner accepts this endpoint (by id alone; admin control)."""
        return self._owner_decision(ep_id, True)

    def reject_endpoint(self, ep_id: str) -> dict[str, Any]:
        """The service owner rejects this endpoint, pending or already accepted."""
        return self._owner_decision(ep_id, False)

    # ------------------------------------------------------------------ AWS's side

    def force_state(self, ep_id: str, state: str) -> dict[str, Any]:
        """Put an endpoint in any State of the EC2 enum (failed, expired, partial, ...)."""
        with self._active():
            ep = self._endpoint(ep_id)
            model.set_state(ep, state)
            return model.describe(ep)

    def replace_ips(self, ep_id: str) -> list[str]:
        """AWS gives the endpoint's ENIs new private IPs in the same subnets."""
        with self._active():
            return model.replace_ips(self._endpoint(ep_id))

    # ------------------------------------------------------------------ ground truth

    def inventory(self) -> list[dict[str, Any]]:
        """Every PrivateLink endpoint now (id, state, VPC, tags, IPs), lag ignored."""
        with self._active():
            return model.inventory()

    def history(self, since: int = 0) -> list[dict[str, Any]]:
        """Events from index ``since``: created, state, deleting, deleted (each with the
        endpoint's org/connection tags and ``t`` on the sandbox clock)."""
        with self._active():
            model.sweep_all()
            return copy.deepcopy(self._state.history[since:])

    # ------------------------------------------------------------------ seeding

    def seed_default(
        self, region: str = "us-east-1", other_region: str = "us-west-2", *,
        vpcs_per_region: int = 1,
    ) -> SandboxSeed:
        from sandbox.aws.seed import seed_default

        return seed_default(self, region, other_region, vpcs_per_region=vpcs_per_region)
