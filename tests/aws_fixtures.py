"""Shared fixtures for the sandbox-AWS and AWS-activity tests (import them explicitly:
``from tests.aws_fixtures import *``-style, see the test modules)."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.aws import AwsActivities, CallCounter
from sandbox.aws import (
    SANDBOX_ACCESS_KEY,
    SANDBOX_SECRET_KEY,
    SandboxAws,
    SandboxSeed,
)
from settings import Settings

T = TypeVar("T")
_ids = itertools.count(1)
_RUN = uuid.uuid4().hex[:6]


def unique(prefix: str = "c") -> str:
    """A connection id / token no other test (or test module sharing moto) uses."""
    return f"{prefix}-{_RUN}-{next(_ids)}"


@pytest.fixture(scope="session")
def sandbox_aws() -> Iterator[SandboxAws]:
    sandbox = SandboxAws(seed=1234)
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture(scope="session")
def aws_seed(sandbox_aws: SandboxAws) -> SandboxSeed:
    return sandbox_aws.seed_default()


@pytest.fixture
def sandbox(sandbox_aws: SandboxAws, aws_seed: SandboxSeed) -> Iterator[SandboxAws]:
    """The session sandbox with no faults and zero delays before and after the test."""
    reset(sandbox_aws)
    yield sandbox_aws
    reset(sandbox_aws)


# The session's seed VPC collects every test's endpoints: the quota tests use VPCs of
# their own and set the quota themselves.
TEST_QUOTA = 100_000


def reset(sb: SandboxAws) -> None:
    sb.clear_faults(seed=1234)
    sb.set_delays(pending=0, deleting=0, deleted_visible=0, lag=0, no_expiry=True)
    sb.set_quota(interface_endpoints_per_vpc=TEST_QUOTA)
    sb.set_default_page_size(None)


def base_session() -> boto3.Session:
    return boto3.Session(
        aws_access_key_id=SANDBOX_ACCESS_KEY, aws_secret_access_key=SANDBOX_SECRET_KEY,
        region_name="us-east-1",
    )


def make_settings(seed: SandboxSeed, **overrides: Any) -> Settings:
    return seed.settings(**overrides)


FAST = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=2, read_timeout=10)


def make_activities(seed: SandboxSeed, *, page_size: int | None = None, **overrides: Any) -> AwsActivities:
    return AwsActivities(
        make_settings(seed, **overrides), base_session(), client_config=FAST,
        counter=CallCounter(), page_size=page_size,
    )


@pytest.fixture
def aws_acts(sandbox: SandboxAws, aws_seed: SandboxSeed) -> AwsActivities:
    return make_activities(aws_seed)


def attempt(n: int) -> ActivityEnvironment:
    """An activity context whose ``activity.info().attempt`` is ``n`` (a Temporal retry)."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=n)
    return env


def retrying(fn: Callable[[Any], T], arg: Any, *, max_attempts: int = 500) -> T:
    """Emulate Temporal's retry policy (no backoff, attempt numbers from 1): retry
    retryable ApplicationErrors and raw botocore errors, re-raise non-retryable ones."""
    last: BaseException | None = None
    for n in range(1, max_attempts + 1):
        try:
            return attempt(n).run(fn, arg)
        except ApplicationError as err:
            if err.non_retryable:
                raise
            last = err
        except (ClientError, BotoCoreError) as err:
            last = err
    raise AssertionError(f"still failing after {max_attempts} attempts: {last}")
