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
