"""Short workflows that run one activity in the worker (which holds the AWS role) and
complete: the pre-flight check and the customer setup facts. They never wait for a
signal, take no slot and write nothing; their execution timeout bounds them."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        ACT_PREFLIGHT,
        ACT_SETUP_FACTS,
        NON_RETRYABLE_TYPES,
        PREFLIGHT_WORKFLOW,
        SETUP_FACTS_WORKFLOW,
        PreflightInput,
        PreflightResult,
        SetupFacts,
        SetupInput,
    )

# Throttling and transient AWS errors are retried a few times, quickly: a caller waits.
QUICK_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_TYPES,
)


@workflow.defn(name=PREFLIGHT_WORKFLOW)
class PreflightWorkflow:
    @workflow.run
    async def run(self, inp: PreflightInput) -> PreflightResult:
        return await workflow.execute_activity(
            ACT_PREFLIGHT,
            inp,
            result_type=PreflightResult,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=QUICK_RETRY,
            summary=f"pre-flight check of {inp.endpoint_service_name} for {inp.org_id}",
        )


@workflow.defn(name=SETUP_FACTS_WORKFLOW)
class SetupFactsWorkflow:
    @workflow.run
    async def run(self, inp: SetupInput) -> SetupFacts:
        return await workflow.execute_activity(
            ACT_SETUP_FACTS,
            inp,
            result_type=SetupFacts,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=QUICK_RETRY,
            summary="setup facts for customers",
        )
