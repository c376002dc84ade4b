"""ConnectionsClient.watch merges two views that move at different times: the workflow's
`status` query (moves once a store write returned) and the store's timeline. Scripted
polls pin down that every transition is reported once, in order, whatever the lag."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from settings import Settings
from starter.client import ConnectionsClient
from workflows.contracts import ConnectionView, TimelineEntry

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Scripted(ConnectionsClient):
    """Each poll returns the next (query status, timeline statuses) pair."""

    def __init__(self, polls: list[tuple[str, list[str]]]) -> None:
        super().__init__(None, None, Settings())  # type: ignore[arg-type]
        self.polls = polls
        self.i = -1

    def _view(self, status: str, timeline: list[str] | None) -> ConnectionView:
        return ConnectionView(
            org_id="acme",
            connection_id="db",
            status=status,
            endpoint_service_name="com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0",
            region="us-east-1",
            service_region="us-east-1",
            timeline=None
            if timeline is None
            else [
                TimelineEntry(at=T0 + timedelta(seconds=n), status=s)
                for n, s in enumerate(timeline)
            ],
        )

    async def current(self, org_id: str, connection_id: str) -> ConnectionView:
        self.i = min(self.i + 1, len(self.polls) - 1)
        return self._view(self.polls[self.i][0], None)

    async def _store_get(self, *args: Any, **kwargs: Any) -> ConnectionView | None:
        return self._view(self.polls[self.i][0], self.polls[self.i][1])


async def statuses(client: Scripted, **kwargs: Any) -> list[str]:
    return [v.status async for v in client.watch("acme", "db", interval=0, **kwargs)]


HAPPY = ["Pending", "CheckingPrincipal", "CreatingEndpoint", "WaitingForIp", "ApplyingPolicy"]


async def test_create_sees_every_status_even_those_between_polls() -> None:
    client = Scripted(
        [
            ("Pending", ["Pending", "CheckingPrincipal"]),  # the query lags one write
            ("WaitingForIp", HAPPY[:4]),
            ("WaitingForIp", HAPPY),  # lagging again
            ("Active", [*HAPPY, "Active"]),
        ]
    )
    assert await statuses(client, until=["Active"]) == [*HAPPY, "Active"]


async def test_delete_without_replay_starts_at_the_latest_status_and_ignores_lag() -> None:
    done = [*HAPPY, "Active"]
    client = Scripted(
        [
            ("Active", [*done, "Deleting"]),  # query behind the store
            ("Deleting", [*done, "Deleting", "Deleted"]),  # and again
            ("Deleted", [*done, "Deleting", "Deleted"]),
        ]
    )
    assert await statuses(client, replay=False) == ["Deleting", "Deleted"]


async def test_without_a_store_the_query_alone_drives_it() -> None:
    client = Scripted([("Active", []), ("Deleting", []), ("Deleted", [])])
    assert await statuses(client) == ["Active", "Deleting", "Deleted"]
