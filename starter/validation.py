"""Every rule for input from outside, in one place: the HTTP API, the CLI and
``ConnectionsClient`` call these before anything is written or any workflow starts.

The id and service-name patterns are the ones in ``workflows.contracts`` (what the
workflows themselves accept); this module adds what the edge must know and workflows must
not import: the real AWS regions (botocore's partition data), the regions privnet offers
(``PRIVNET_ENDPOINT_NETWORKS``), the policy's port limit, and the shape of a JSON body.

Every refusal is an ``InvalidInput`` with a stable ``code`` and a message naming the fix;
``BadRequest`` (malformed JSON) is its subclass for HTTP 400.

| field | rule | code |
|---|---|---|
| org id | 1-63 of ``a-z 0-9 - _ .``, starts and ends alphanumeric (a label value) | INVALID_ORG_ID |
| connection id | 1-40 of ``a-z 0-9 -``, starts and ends alphanumeric | INVALID_CONNECTION_ID |
| service name | ``com.amazonaws.vpce.<region>.vpce-svc-<8-17 hex>``, nothing else | INVALID_SERVICE_NAME |
| region | a real AWS region (botocore), and one privnet has endpoints in | INVALID_REGION, REGION_NOT_OFFERED |
| ports | integers 1-65535, at most ``MAX_PORTS`` distinct | INVALID_PORT, TOO_MANY_PORTS |
| display name | 1-128 characters, no control characters | INVALID_DISPLAY_NAME |
| body | a JSON object, known fields only, each once | MALFORMED_JSON (400), INVALID_BODY, UNKNOWN_FIELD, DUPLICATE_FIELD, MISSING_FIELD |
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from activities.policy import MAX_PORTS
from workflows.contracts import (
    CONNECTION_ID_RE,
    ORG_ID_RE,
    SERVICE_NAME_FORMAT,
    SERVICE_NAME_RE,
    InvalidInput,
)

ORG_ID_MAX = 63
CONNECTION_ID_MAX = 40
SERVICE_NAME_MAX = 80  # "com.amazonaws.vpce." + the longest region + ".vpce-svc-" + 17 hex
DISPLAY_NAME_MAX = 128
MAX_BODY_BYTES = 16 * 1024


class BadRequest(InvalidInput):
    """The request body is not JSON at all (HTTP 400)."""


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------- single fields


def org_id(value: Any) -> str:
    if not isinstance(value, str) or len(value) > ORG_ID_MAX or not ORG_ID_RE.fullmatch(value):
        raise InvalidInput(
            "INVALID_ORG_ID",
            f"org id {_show(value)} is invalid: use 1-{ORG_ID_MAX} lowercase letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit (a Kubernetes label "
            "value)",
        )
    return value


def connection_id(value: Any) -> str:
    if (
        not isinstance(value, str)
        or len(value) > CONNECTION_ID_MAX
        or not CONNECTION_ID_RE.fullmatch(value)
    ):
        raise InvalidInput(
            "INVALID_CONNECTION_ID",
            f"connection id {_show(value)} is invalid: use 1-{CONNECTION_ID_MAX} lowercase "
            "letters, digits or '-', starting and ending with a letter or digit",
        )
    return value


@lru_cache(maxsize=1)
def aws_regions() -> frozenset[str]:
    """Every region of every AWS partition that serves EC2, from botocore's endpoint data."""
    import botocore.session

    session = botocore.session.get_session()
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("ec2", partition_name=partition))
    return frozenset(regions)


def region(value: Any, offered: Iterable[str] = ()) -> str:
    """A real AWS region; when ``offered`` is non-empty, also one of those."""
    if not isinstance(value, str) or value not in aws_regions():
        raise InvalidInput(
            "INVALID_REGION",
            f"region {_show(value)} is not an AWS region: use a region name such as us-east-1",
        )
    offered = sorted(offered)
    if offered and value not in offered:
        raise InvalidInput(
            "REGION_NOT_OFFERED",
            f"privnet has no endpoints in region {value}: use one of {', '.join(offered)}",
        )
    return value


def service_name(value: Any) -> tuple[str, str]:
    """(service name, its region). The name is taken exactly as given: no trimming."""
    m = (
        SERVICE_NAME_RE.fullmatch(value)
        if isinstance(value, str) and len(value) <= SERVICE_NAME_MAX
        else None
    )
    if m is None or m.group(1) not in aws_regions():
        raise InvalidInput(
            "INVALID_SERVICE_NAME",
            f"endpoint service name {_show(value)} is not of the form {SERVICE_NAME_FORMAT} "
            "with a real AWS region (copy it from the customer's VPC console: Endpoint "
            "services → Service name)",
        )
    return value, m.group(1)


def ports(values: Any) -> list[int]:
    """Distinct TCP ports, sorted; bools, floats and strings are refused."""
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise InvalidInput("INVALID_PORT", f"ports {_show(values)} must be a list of integers")
    result: set[int] = set()
    for p in values:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise InvalidInput(
                "INVALID_PORT", f"port {_show(p)} is not a TCP port: use integers 1-65535"
            )
        result.add(p)
    if len(result) > MAX_PORTS:
        raise InvalidInput(
            "TOO_MANY_PORTS",
            f"{len(result)} ports exceed the limit of {MAX_PORTS} per connection: list at "
            f"most {MAX_PORTS} ports, or none to allow every port",
        )
    return sorted(result)


def display_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= DISPLAY_NAME_MAX:
        raise InvalidInput(
            "INVALID_DISPLAY_NAME",
            f"display name {_show(value)} must be text of 1-{DISPLAY_NAME_MAX} characters",
        )
    bad = [c for c in value if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
    if bad:
        raise InvalidInput(
            "INVALID_DISPLAY_NAME",
            f"display name {_show(value)} contains control characters "
            f"({', '.join(sorted({f'U+{ord(c):04X}' for c in bad}))}): use printable text",
        )
    return value


# ---------------------------------------------------------------------- requests


@dataclass(frozen=True)
class CreateRequest:
    org_id: str
    connection_id: str | None  # None: the client generates one
    endpoint_service_name: str
    service_region: str
    region: str
    display_name: str | None
    ports: list[int]


@dataclass(frozen=True)
class CheckRequest:
    org_id: str
    endpoint_service_name: str
    service_region: str
    region: str


def create_request(
    *,
    org: Any,
    endpoint_service_name: Any,
    region_name: Any = None,
    connection: Any = None,
    name: Any = None,
    port_list: Any = (),
    default_region: str,
    offered_regions: Iterable[str] = (),
) -> CreateRequest:
    """Every rule of a create, in the order a user would fix them."""
    org = org_id(org)
    service, service_region = service_name(endpoint_service_name)
    reg = region(default_region if region_name is None else region_name, offered_regions)
    cid = None if connection is None else connection_id(connection)
    return CreateRequest(
        org_id=org,
        connection_id=cid,
        endpoint_service_name=service,
        service_region=service_region,
        region=reg,
        display_name=display_name(name),
        ports=ports(() if port_list is None else port_list),
    )


def check_request(
    *,
    org: Any,
    endpoint_service_name: Any,
    region_name: Any = None,
    default_region: str,
) -> CheckRequest:
    """A pre-flight check: the region may be one privnet does not offer (the check says so)."""
    org = org_id(org)
    service, service_region = service_name(endpoint_service_name)
    reg = region(default_region if region_name is None else region_name)
    return CheckRequest(org, service, service_region, reg)


# ---------------------------------------------------------------------- JSON bodies

CREATE_FIELDS = {
    "endpoint_service_name": True,  # required
    "region": False,
    "connection_id": False,
    "display_name": False,
    "ports": False,
}
CHECK_FIELDS = {"endpoint_service_name": True, "region": False}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidInput(
                "DUPLICATE_FIELD", f"field {_show(key)} appears more than once: send it once"
            )
        seen[key] = value
    return seen


def json_object(raw: bytes, fields: Mapping[str, bool]) -> dict[str, Any]:
    """Parse a request body that must be a JSON object with only ``fields`` (name →
    required). ``BadRequest`` when it is not JSON (cut short, not UTF-8, NaN), else
    ``InvalidInput`` naming what to change. Values are checked by the field rules."""
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidInput(
            "BODY_TOO_LARGE", f"the body has {len(raw)} bytes: send at most {MAX_BODY_BYTES}"
        )
    if not raw.strip():
        raise InvalidInput(
            "INVALID_BODY", f"the body is empty: send a JSON object with {_names(fields)}"
        )
    try:
        text = raw.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_reject_constant)
    except InvalidInput:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BadRequest(
            "MALFORMED_JSON",
            f"the body is not valid JSON ({err}): send a complete JSON object",
        ) from None
    if not isinstance(doc, dict):
        raise InvalidInput(
            "INVALID_BODY",
            f"the body is a JSON {type(doc).__name__}, not an object: send an object with "
            f"{_names(fields)}",
        )
    unknown = sorted(set(doc) - set(fields))
    if unknown:
        raise InvalidInput(
            "UNKNOWN_FIELD",
            f"unknown field(s) {', '.join(map(_show, unknown))}: the accepted fields are "
            f"{', '.join(fields)}",
        )
    missing = [k for k, required in fields.items() if required and k not in doc]
    if missing:
        raise InvalidInput("MISSING_FIELD", f"field(s) {', '.join(missing)} are required")
    return doc


def _names(fields: Mapping[str, bool]) -> str:
    required = [k for k, r in fields.items() if r]
    return "required field(s) " + ", ".join(required)
