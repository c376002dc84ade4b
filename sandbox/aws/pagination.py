"""EC2's MaxResults / NextToken (fidelity row 18).

Bounds from the EC2 API reference (botocore's service model): DescribeVpcEndpoints,
DescribeVpcEndpointServices and DescribeVpcEndpointConnections return at most 1,000 items
per page whatever MaxResults says; DescribeNetworkInterfaces and DescribeSubnets take
MaxResults 5-1000, and DescribeNetworkInterfaces refuses MaxResults together with
NetworkInterfaceIds. Without MaxResults every result comes back in one response unless the
sandbox's ``default_page_size`` test knob is set. Tokens are opaque: they name the last
item returned, so items created between pages neither repeat nor shift the next page.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sandbox.aws import state
from sandbox.aws.state import ec2_error

T = TypeVar("T")
PAGE_CAP = 1000


def _bad_token(token: str) -> Exception:
    return ec2_error(
        "InvalidPaginationToken", f"The pagination token '{token}' is not valid or is expired."
    )


def encode(last_key: str, scope: str) -> str:
    raw = json.dumps({"k": last_key, "s": scope}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, scope: str) -> str:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        key, token_scope = str(data["k"]), str(data["s"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _bad_token(token) from exc
    if token_scope != scope:
        raise _bad_token(token)
    return key


def page(
    items: Sequence[T],
    key: Callable[[T], str],
    *,
    max_results: int | None,
    next_token: str | None,
    scope: str,
    minimum: int | None = None,
) -> tuple[list[T], str | None]:
    """One page of ``items`` ordered by ``key``; the token for the next page or None."""
    if max_results is not None and minimum is not None and not (
        minimum <= max_results <= PAGE_CAP
    ):
        raise ec2_error(
            "InvalidParameterValue",
            f"Value ( {max_results} ) for parameter maxResults is invalid. Expecting a value "
            f"between {minimum} and {PAGE_CAP}.",
        )
    ordered = sorted(items, key=key)
    if next_token:
        after = decode(next_token, scope)
        ordered = [i for i in ordered if key(i) > after]
    size = max_results if max_results is not None else state.current().default_page_size
    if size is None:
        return list(ordered), None
    size = max(1, min(size, PAGE_CAP))
    chunk = list(ordered[:size])
    more = len(ordered) > size
    return chunk, (encode(key(chunk[-1]), scope) if more and chunk else None)


def params(response: Any) -> tuple[int | None, str | None]:
    """(MaxResults, NextToken) of a moto EC2Response."""
    return response._get_int_param("MaxResults"), response._get_param("NextToken") or None
