"""The id and name rules every side shares (workflows.contracts): whole-string matches."""

from __future__ import annotations

import pytest

from workflows.contracts import (
    InvalidInput,
    parse_service_region,
    validate_connection_id,
    validate_org_id,
    validate_region,
)

SERVICE = "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0"


@pytest.mark.parametrize(
    ("check", "good"),
    [
        (validate_org_id, "acme"),
        (validate_connection_id, "db"),
        (validate_region, "us-east-1"),
        (parse_service_region, SERVICE),
    ],
)
@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\t", "\x00"])
def test_a_trailing_character_never_passes(check: object, good: str, suffix: str) -> None:
    assert callable(check)
    check(good)  # the rule accepts the plain value
    with pytest.raises(InvalidInput):
        check(good + suffix)


def test_the_settings_defaults_are_the_workflows_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection started through ConnectionsClient (options from PRIVNET_* settings)
    and one started by hand (ConnectionOptions' defaults) run the same schedule, e.g. the
    first poll 39.5 s after the create."""
    import os

    from settings import Settings
    from starter.client import connection_options
    from workflows.contracts import ConnectionOptions

    for name in [n for n in os.environ if n.startswith("PRIVNET_")]:
        monkeypatch.delenv(name)
    assert connection_options(Settings()) == ConnectionOptions()
    assert ConnectionOptions().pending_first_look.total_seconds() == 39.5
