"""Replay every recorded history (tests/histories/*.json) against the current workflow
code: a change that would break running workflows fails here.

Fixtures are recorded by running the workflow tests with PRIVNET_RECORD_HISTORIES=1."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import PayloadCodec, SerializationContext, WithSerializationContext
from temporalio.worker import Replayer

import worker
from tests.guard_requester import GuardRequester
from worker import WORKFLOW_RUNNER, WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))

EXPECTED = {
    "connection_happy_then_delete",
    "connection_fail_step1",
    "connection_fail_step2",
    "connection_fail_step3",
    "connection_fail_step4",
    "connection_fail_step5",
    "connection_cancel_signal",
    "connection_temporal_cancel",
    "connection_cancel_during_create_endpoint",
    "connection_cancel_during_apply_policies",
    "connection_acceptance",
    "connection_rejected",
    "connection_admitted_then_deleted",
    "connection_drift_repair",
    "connection_resumed_after_can",
    "connection_degraded_then_active",
    "connection_cleanup_blocked",
    # After one workflow.patched marker (status writes as local activities, the poll
    # schedule shaped by AWS, fewer search-attribute upserts, the slot asked by update):
    # the histories above keep replaying through the legacy branches.
    "connection_happy_then_delete_v2",
    "connection_acceptance_v2",
    "connection_fail_step5_v2",
    "connection_resumed_after_can_v2",
    "connection_rejected_v2",
    "connection_admitted_then_deleted_v2",
    "guard_by_update_v2",
    # Release 3 (``ConnectionInput.release``): the same commands without the patch markers,
    # and search-attribute upserts only for resting statuses.
    *(f"connection_{p}_v3" for p in (
        "happy_then_delete", "acceptance", "rejected", "admitted_then_deleted",
        "resumed_after_can", "drift_repair", "cancel_signal", "temporal_cancel",
        "cancel_during_create_endpoint", "cancel_during_apply_policies",
        *(f"fail_step{i}" for i in range(1, 6)),
    )),
    # Release 4: the statuses a connection passes through are written by the step's own
    # activity (in its input), not by a local activity (a marker) each.
    *(f"connection_{p}_v4" for p in (
        "happy_then_delete", "acceptance", "rejected", "admitted_then_deleted",
        "resumed_after_can", "drift_repair", "cancel_signal", "temporal_cancel",
        "cancel_during_create_endpoint", "cancel_during_apply_policies",
        *(f"fail_step{i}" for i in range(1, 6)),
    )),
    # Release 5: the guard's answer, the principal check and the look after the create are
    # local activities.
    *(f"connection_{p}_v5" for p in (
        "happy_then_delete", "acceptance", "rejected", "admitted_then_deleted",
        "resumed_after_can", "drift_repair", "cancel_signal", "temporal_cancel",
        "cancel_during_create_endpoint", "cancel_during_apply_policies",
        *(f"fail_step{i}" for i in range(1, 6)),
    )),
    # Release 6: the first policy apply is a local activity too.
    *(f"connection_{p}_v6" for p in (
        "happy_then_delete", "acceptance", "rejected", "admitted_then_deleted",
        "resumed_after_can", "drift_repair", "cancel_signal", "temporal_cancel",
        "cancel_during_create_endpoint", "cancel_during_apply_policies",
        *(f"fail_step{i}" for i in range(1, 6)),
    )),
    # Release 6 still running after the upgrade: a stop before the apply reached the history
    # registers the policies' undo at compensation, behind a patch marker (a lost local apply
    # may have left policies); release-6 histories from before replay without it.
    "connection_cancel_signal_v6_policies_undo_patched",
    # Release 7: no look right after the create; the first waits ``pending_first_look``.
    *(f"connection_{p}_v7" for p in (
        "happy_then_delete", "acceptance", "rejected", "admitted_then_deleted",
        "resumed_after_can", "drift_repair", "cancel_signal", "temporal_cancel",
        "cancel_during_create_endpoint", "cancel_during_apply_policies",
        *(f"fail_step{i}" for i in range(1, 6)),
    )),
    "connection_pending_after_create_v7",  # the first look after a wait, then the poll loop
    # The create's wait for admission: one ``admitted`` update sent with the start (accepted
    # and completed in the history), a second create's update refused (not in it).
    "connection_admitted_by_update",
    "guard_first_run",
    "guard_leak_repair",
    # The guard's leak check on a timer of its own (a patch marker): no command depends on
    # workflow.now(); the three above replay through the legacy loop.
    "guard_by_update_leak_timer",
    "guard_first_run_leak_timer",
    "guard_leak_repair_leak_timer",
}


def test_every_path_has_a_fixture() -> None:
    assert EXPECTED <= {p.stem for p in HISTORIES}


@pytest.mark.parametrize("strict", [True, False], ids=["strict-sandbox", "worker-runner"])
@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_replay(path: Path, strict: bool) -> None:
    """Under the default sandbox (it re-imports privnet's workflow modules and restricts what
    they call) and under the worker's runner (privnet's modules passed through)."""
    runner = {} if strict else {"workflow_runner": WORKFLOW_RUNNER}
    replayer = Replayer(
        workflows=[*WORKFLOWS, GuardRequester], data_converter=pydantic_data_converter, **runner
    )
    history = WorkflowHistory.from_json(path.stem, await asyncio.to_thread(path.read_text))
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


async def test_the_workers_sandbox_compiles_its_snippets_once() -> None:
    """The worker's runner relies on the SDK's private ``_Instance._run_code``: if an SDK
    upgrade stops calling it, this fails (and the override should go), rather than the
    saving silently vanishing."""
    path = next(p for p in HISTORIES if p.stem == "connection_happy_then_delete_v3")
    history = WorkflowHistory.from_json(path.stem, await asyncio.to_thread(path.read_text))
    before = worker._compiled.cache_info()
    replayer = Replayer(
        workflows=WORKFLOWS, data_converter=pydantic_data_converter, workflow_runner=WORKFLOW_RUNNER
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
    after = worker._compiled.cache_info()
    assert after.hits - before.hits > 20  # every activation
    assert after.misses - before.misses <= 10  # a few fixed snippets, not one per call


class _ContextCodec(PayloadCodec, WithSerializationContext):
    """A codec that reads the serialization context (as an encryption codec keyed by
    workflow id would): the SDK's payload passes must run for it, contexts included."""

    def __init__(self, seen: list[object] | None = None) -> None:
        self.seen = seen if seen is not None else []

    def with_context(self, context: SerializationContext) -> _ContextCodec:
        self.seen.append(context)
        return _ContextCodec(self.seen)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)


@pytest.mark.parametrize("idle", [True, False], ids=["pydantic", "context-codec"])
async def test_the_worker_skips_the_sdks_payload_passes_only_where_they_do_nothing(
    monkeypatch: pytest.MonkeyPatch, idle: bool
) -> None:
    """For every activation the SDK walks every payload six times (codec, external storage,
    storage references; in and out), asking the sandboxed workflow which command each
    belongs to. With privnet's converter (no codec, no external storage, no context read)
    the worker skips them: no pass, no question. A converter with a codec that reads
    contexts gets every pass and every context, as before. If an SDK upgrade moves the
    passes elsewhere, the first case fails."""
    from temporalio.bridge._visitor import PayloadVisitor
    from temporalio.worker.workflow_sandbox._runner import _Instance

    visits: list[str] = []
    asked: list[object] = []
    visit, context_of = PayloadVisitor.visit, _Instance.get_serialization_context

    async def counting_visit(self: PayloadVisitor, fs: object, root: object) -> None:
        visits.append(type(root).__name__)
        await visit(self, fs, root)  # type: ignore[arg-type]

    def counting_context(self: _Instance, command_info: object) -> object:
        asked.append(command_info)
        return context_of(self, command_info)  # type: ignore[arg-type]

    monkeypatch.setattr(PayloadVisitor, "visit", counting_visit)
    monkeypatch.setattr(_Instance, "get_serialization_context", counting_context)
    worker.skip_idle_payload_passes()  # what build_worker does
    seen: list[object] = []
    converter = pydantic_data_converter
    if not idle:
        converter = dataclasses.replace(pydantic_data_converter, payload_codec=_ContextCodec(seen))
    assert worker.payload_passes_idle(converter) is idle
    path = next(p for p in HISTORIES if p.stem == "connection_happy_then_delete_v4")
    history = WorkflowHistory.from_json(path.stem, await asyncio.to_thread(path.read_text))
    replayer = Replayer(
        workflows=WORKFLOWS, data_converter=converter, workflow_runner=WORKFLOW_RUNNER
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
    if idle:
        assert visits == [] and asked == []
    else:
        assert len(visits) > 30 and len(asked) > 10
        assert any(type(c).__name__ == "ActivitySerializationContext" for c in seen)
