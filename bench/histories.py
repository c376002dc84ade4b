"""Where the orchestration time goes, counted from Temporal histories: events, workflow
tasks, activities by type (and their attempts), local activities, search-attribute
upserts, timers, signals and updates. ``count_events`` is pure (tests feed it recorded fixtures)."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

E = EventType
LOCAL_ACTIVITY_MARKER = "core_local_activity"


def count_events(events: Iterable[HistoryEvent]) -> dict[str, Any]:
    """Counts of one workflow history (one run)."""
    by_type: Counter[str] = Counter()
    activities: Counter[str] = Counter()
    scheduled: dict[int, str] = {}
    attempts = 0
    local = 0
    for ev in events:
        by_type[E.Name(ev.event_type).removeprefix("EVENT_TYPE_").lower()] += 1
        if ev.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = ev.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[ev.event_id] = name
            activities[name] += 1
        elif ev.event_type == E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            # Retries do not grow the history: the one Started event carries the attempt.
            attempts += ev.activity_task_started_event_attributes.attempt
        elif (ev.event_type == E.EVENT_TYPE_MARKER_RECORDED
              and ev.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER):
            local += 1
    total = sum(by_type.values())
    return {
        "events": total,
        "workflow_tasks": by_type["workflow_task_completed"],
        # Failed or timed-out tasks (e.g. the server force-fails a task when more than
        # 100 events were buffered while it ran): each costs a full replay.
        "workflow_task_failures": by_type["workflow_task_failed"] + by_type[
            "workflow_task_timed_out"],
        "activities": sum(activities.values()),
        "activity_attempts": attempts,
        "activities_by_type": dict(sorted(activities.items())),
        "local_activities": local,
        "search_attribute_upserts": by_type["upsert_workflow_search_attributes"],
        "timers": by_type["timer_started"],
        "signals_received": by_type["workflow_execution_signaled"],
        "updates_accepted": by_type["workflow_execution_update_accepted"],
        "signals_sent": by_type["signal_external_workflow_execution_initiated"],
        "continued_as_new": by_type["workflow_execution_continued_as_new"],
    }


async def history_counts(client: Client, workflow_id: str) -> dict[str, Any]:
    events = [ev async for ev in client.get_workflow_handle(workflow_id).fetch_history_events()]
    return count_events(events)


def average(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each count over several histories (activities by type included)."""
    if not samples:
        return {}
    out: dict[str, Any] = {}
    for key, value in samples[0].items():
        if isinstance(value, dict):
            names = sorted({n for s in samples for n in s[key]})
            out[key] = {n: round(statistics.mean(s[key].get(n, 0) for s in samples), 2)
                        for n in names}
        else:
            out[key] = round(statistics.mean(s[key] for s in samples), 2)
    out["sampled"] = len(samples)
    return out
