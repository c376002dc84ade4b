"""Compensation: privnet's undo steps and how the connection ends.

Each forward step registers one of these undos with the saga before it runs; ``_finish``
walks them in reverse, each retrying until it succeeds (``saga.until_done``: an error only
an operator can fix shows ``CleanupBlocked`` naming it, and is retried after a backoff), then
records the final status. Every undo treats "already gone" as success.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        ACT_DELETE_ENDPOINT,
        ACT_DELETE_POLICIES,
        ACT_RELEASE_SLOT,
        ACT_WAIT_ENDPOINT_DELETED,
        ConnectionStatus,
        DeleteEndpointInput,
        DeleteEndpointResult,
        DeletePoliciesInput,
        SlotRelease,
    )

from workflows.core import UNDO_RETRY, ConnectionCore
from workflows.errors import ConnectionFailed
from workflows.saga import BlockedHooks, Undo, until_done

S = ConnectionStatus

UNDO_ENDPOINT = "delete the VPC endpoint"
UNDO_POLICIES = "delete the CiliumNetworkPolicies"
# Release 6's first policy apply is a local activity: its policies can exist with no trace
# in the history (its workflow task lost, a stop seen first by the next attempt). Release 7
# registers their undo with the endpoint's; a release-6 workflow still running gets it when
# its compensation starts, behind this marker (its histories from before replay without).
PATCH_RELEASE6_POLICIES_UNDO = "release-6-policies-undo-with-the-endpoints"


class Cleanup(ConnectionCore):
    _visible_by: datetime | None
    _cancelled: bool
    _failure: ConnectionFailed | None

    def _register_slot_undo(self) -> Undo:
        release = SlotRelease(
            org_id=self._inp.org_id,
            connection_id=self._inp.connection_id,
            default_limit=self._inp.options.default_org_limit,
        )
        return self._saga.register(
            "release the org slot",
            functools.partial(self._until_done, ACT_RELEASE_SLOT, release, None),
        )

    def _register_endpoint_undo(self) -> Undo:
        return self._saga.register(UNDO_ENDPOINT, self._undo_endpoint)

    def _register_policies_undo(self) -> Undo:
        arg = DeletePoliciesInput(org_id=self._inp.org_id, connection_id=self._inp.connection_id)
        return self._saga.register(
            UNDO_POLICIES, functools.partial(self._until_done, ACT_DELETE_POLICIES, arg, None)
        )

    def _cover_a_lost_local_apply(self) -> None:
        """Release 6: an endpoint's undo without the policies' means the stop came before
        the apply reached the history, which a lost local apply can hide (see above)."""
        if (
            self._inp.release == 6
            and self._saga.holds(UNDO_ENDPOINT)
            and not self._saga.holds(UNDO_POLICIES)
            and workflow.patched(PATCH_RELEASE6_POLICIES_UNDO)
        ):
            self._register_policies_undo()  # last in, so it runs first

    async def _undo_endpoint(self) -> None:
        """Delete our endpoint (by id when known, else by its org/connection tags) and wait
        until AWS reports it gone. With no id, a tag lookup that finds nothing right after
        a create may be EC2 lagging: look again until the visibility window has passed."""
        target = DeleteEndpointInput(
            region=self._inp.region,
            connection_id=self._inp.connection_id,
            org_id=self._inp.org_id,
            vpc_endpoint_id=self._state.vpc_endpoint_id,
            not_found_retry_until=self._visible_by,
        )
        while True:
            deleted: DeleteEndpointResult = await self._until_done(
                ACT_DELETE_ENDPOINT, target, DeleteEndpointResult
            )
            if deleted.vpc_endpoint_ids or target.vpc_endpoint_id is not None:
                break
            if self._visible_by is None or workflow.now() >= self._visible_by:
                break
            await workflow.sleep(self._inp.options.poll_max_interval, summary="tag lookup lag")
        if deleted.vpc_endpoint_ids:
            await self._until_done(
                ACT_WAIT_ENDPOINT_DELETED,
                target.model_copy(update={"not_found_retry_until": None}),
                None,
                retry=RetryPolicy(
                    initial_interval=self._inp.options.poll_initial_interval,
                    backoff_coefficient=1.5,
                    maximum_interval=self._inp.options.poll_max_interval,
                    maximum_attempts=0,
                ),
            )

    async def _until_done(
        self, name: str, arg: Any, result_type: type | None, retry: RetryPolicy = UNDO_RETRY
    ) -> Any:
        what = name.replace("_", " ")
        return await until_done(
            lambda: self._activity(
                name, arg, result_type, summary=f"compensate: {what}", retry=retry
            ),
            what,
            BlockedHooks(
                blocked=self._cleanup_blocked,
                unblocked=self._cleanup_unblocked,
                retry_now=lambda: self._retry_now,
                clear_retry_now=self._clear_retry_now,
            ),
            max_backoff=self._inp.options.cleanup_max_backoff,
        )

    def _clear_retry_now(self) -> None:
        self._retry_now = False

    async def _cleanup_blocked(self, why: str) -> None:
        self._details("Compensation is blocked", "an operator", fix=why)
        if self._state.status == S.CLEANUP_BLOCKED and self._state.message == why:
            return
        self._state.message = why
        await self._record(S.CLEANUP_BLOCKED, why)

    async def _cleanup_unblocked(self, what: str) -> None:
        self._state.message = ""
        await self._record(S.DELETING, f"cleanup unblocked: {what} succeeded")

    def _final(self) -> tuple[ConnectionStatus, str | None, str]:
        """The status the connection ends in: the last stop request wins (the customer's
        latest word), then a failure, then a rejection."""
        if self._stop == "delete":
            return S.DELETED, None, "deleted"
        if self._stop == "cancel":
            return S.CANCELLED, None, "cancelled from Temporal" if self._cancelled else "cancelled"
        if self._failure is not None:
            return S.FAILED, self._failure.reason, self._failure.message
        return S.REJECTED, self._state.reason, self._state.message

    async def _finish(self) -> None:
        """Undo what ran, in reverse, then record the final status (again if a stop request
        changed it meanwhile)."""
        await self._settle_in_flight()
        self._cover_a_lost_local_apply()
        cleaned = bool(self._saga)
        if cleaned:
            status, reason, message = self._final()
            self._state.reason, self._state.message = reason, message
            why = f"cleaning up after {reason}" if status == S.FAILED else f"{status.value} requested"
            await self._record(S.DELETING, why)
            await self._saga.compensate(
                lambda undo: self._details(f"Compensating: {undo.what}", "AWS / Kubernetes")
            )
            self._state.ips = []
            self._state.dns_names = []
        recorded: tuple[ConnectionStatus, str | None, str] | None = None
        while (final := self._final()) != recorded:
            status, reason, message = final
            self._state.reason, self._state.message = reason, message
            await self._record(status, message + ("; cleaned up" if cleaned else ""))
            recorded = final
        self._details(f"{recorded[0].value}: {recorded[2]}", "nothing (finished)")
