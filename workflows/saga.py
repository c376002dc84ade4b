"""The saga: every forward step registers its undo before it runs; compensation walks the
list in reverse and each undo retries until it succeeds.

An undo is registered *before* its step because a worker crash, a lost response or a
cancellation mid-call can leave the step's effect behind: the undo must find and remove it
whatever the step's own outcome. Undos therefore treat "already gone" as success.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows.errors import blocked_reason

T = TypeVar("T")


@dataclass(eq=False)
class Undo:
    """One compensation: what it undoes (shown in the UI and the timeline) and how."""

    what: str
    run: Callable[[], Awaitable[None]]


class Saga:
    """The undos of the steps that ran, in order."""

    def __init__(self) -> None:
        self._undos: list[Undo] = []

    def register(self, what: str, run: Callable[[], Awaitable[None]]) -> Undo:
        undo = Undo(what, run)
        self._undos.append(undo)
        return undo

    def forget(self, undo: Undo) -> None:
        """The step refused before doing anything: there is nothing to undo."""
        self._undos.remove(undo)

    def __bool__(self) -> bool:
        return bool(self._undos)

    def holds(self, what: str) -> bool:
        """Whether an undo of this description is registered."""
        return any(u.what == what for u in self._undos)

    async def compensate(self, announce: Callable[[Undo], None]) -> None:
        """Run the undos in reverse. An undo leaves the list only once it succeeded."""
        while self._undos:
            undo = self._undos[-1]
            announce(undo)
            await undo.run()
            self._undos.pop()


@dataclass
class BlockedHooks:
    """How compensation reports an error only an operator can fix, and its end."""

    blocked: Callable[[str], Awaitable[None]]
    unblocked: Callable[[str], Awaitable[None]]
    retry_now: Callable[[], bool]  # skip the backoff (``privnet retry``)
    clear_retry_now: Callable[[], None]


async def until_done(
    call: Callable[[], Awaitable[T]],
    what: str,
    hooks: BlockedHooks,
    *,
    first_backoff: timedelta = timedelta(seconds=5),
    max_backoff: timedelta = timedelta(minutes=10),
) -> T:
    """Run ``call`` (an activity whose retry policy already retries transient errors) until
    it succeeds. A failure that reaches the workflow (AccessDenied, Kubernetes 403, a bad
    input, an exhausted retry) is reported as blocked with what to fix, then retried after a
    backoff growing to ``max_backoff``: compensation never stops half-way."""
    backoff = first_backoff
    blocked = False
    while True:
        try:
            result = await call()
        except ActivityError as err:
            blocked = True
            await hooks.blocked(blocked_reason(err, what))
            try:
                await workflow.wait_condition(
                    hooks.retry_now, timeout=backoff, timeout_summary=f"retry: {what}"
                )
            except TimeoutError:
                pass
            hooks.clear_retry_now()
            backoff = min(backoff * 2, max_backoff)
            continue
        if blocked:
            await hooks.unblocked(what)
        return result
