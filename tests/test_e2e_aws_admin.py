"""End to end: the sandbox AWS controls of ``privnet dev up`` driven from another process
(as the soak and the crash matrix do): the customer accepts through the admin API, AWS
changes the endpoint's IPs, and the ground truth (inventory, history) follows privnet."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_e2e_stack import StackProc

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProc]:
    s = StackProc(tmp_path_factory.mktemp("e2e-aws") / "data")
    s.start()
    try:
        yield s
    finally:
        s.stop()


def admin(stack: StackProc, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{stack.info['aws_endpoint_url']}/_privnet/{path}", data=data,
                                 method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def endpoint_of(stack: StackProc, org: str, cid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for row in admin(stack, "GET", "endpoints")["endpoints"]:
            tags = row["tags"]
            if tags.get("privnet.dev/org-id") == org and tags.get("privnet.dev/connection-id") == cid:
                return dict(row)
        time.sleep(0.2)
    raise AssertionError(f"no endpoint for {org}/{cid} in sandbox AWS")


def test_admin_api_drives_the_dev_stack(stack: StackProc) -> None:
    env = stack.info["env"]
    networks = json.loads(env["PRIVNET_ENDPOINT_NETWORKS"])
    assert len(networks[stack.info["region"]]) == 2  # two endpoint VPCs: the quota
    assert admin(stack, "GET", "config")["quotas"] == {"interface_endpoints_per_vpc": 50}
    org, cid = "e2e-" + uuid.uuid4().hex[:6], "c-" + uuid.uuid4().hex[:8]
    service = stack.info["customer_services"]["acceptance_required"]
    stack.cli_json("create", "--org", org, "--service-name", service, "--id", cid)
    stack.wait_status(org, cid, {"WaitingForAcceptance"})
    ep = endpoint_of(stack, org, cid)
    assert ep["state"] == "pendingAcceptance"
    # The customer accepts from another process; privnet's `retry` skips the backoff.
    assert admin(stack, "POST", f"endpoints/{ep['vpc_endpoint_id']}/accept")["unsuccessful"] == []
    stack.cli("retry", org, cid)
    active = stack.wait_status(org, cid, {"Active"}, timeout=120)
    truth = endpoint_of(stack, org, cid)
    assert active["vpc_endpoint_id"] == truth["vpc_endpoint_id"]
    assert sorted(active["ips"]) == truth["ips"]
    # AWS moves the ENIs: the ground truth shows new IPs at once.
    new_ips = admin(stack, "POST", f"endpoints/{ep['vpc_endpoint_id']}/replace-ips")["ips"]
    assert new_ips == endpoint_of(stack, org, cid)["ips"] and set(new_ips) != set(truth["ips"])
    stack.cli_json("delete", org, cid, "--wait")
    events = [e for e in admin(stack, "GET", "history")["events"]
              if e["vpc_endpoint_id"] == ep["vpc_endpoint_id"]]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "created" and kinds.count("created") == 1
    assert "deleting" in kinds and kinds[-1] == "deleted"
    assert {(e["org_id"], e["connection_id"]) for e in events} == {(org, cid)}
