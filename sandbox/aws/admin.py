"""The sandbox's admin HTTP API under ``/_privnet/`` (JSON in, JSON out).

The soak and the crash tests drive ``privnet dev up`` from another process; these routes
are the same controls ``SandboxAws`` offers in process (each route calls the method named
beside it), and the ground truth a checker reads:

| Method | Path | Body | Calls |
|---|---|---|---|
| GET | /_privnet/config | | ``config()`` |
| POST | /_privnet/faults | {kind, rate, operations, phase, services, latency} | ``inject_fault`` / ``add_latency`` |
| DELETE | /_privnet/faults | optional ?seed=N | ``clear_faults`` |
| POST | /_privnet/faults/seed | {seed} | ``reseed`` |
| POST | /_privnet/delays | {pending, deleting, deleted_visible, lag, expire} | ``set_delays`` |
| POST | /_privnet/quotas | {interface_endpoints_per_vpc} | ``set_quota`` |
| POST | /_privnet/pagination | {default_page_size: N or null} | ``set_default_page_size`` |
| POST | /_privnet/clock/advance | {seconds} | ``advance`` |
| GET | /_privnet/endpoints | | ``inventory()`` |
| GET | /_privnet/history | optional ?since=N | ``history(since)`` |
| POST | /_privnet/endpoints/{id}/accept | | ``accept_endpoint`` |
| POST | /_privnet/endpoints/{id}/reject | | ``reject_endpoint`` (pending or accepted) |
| POST | /_privnet/endpoints/{id}/state | {state} | ``force_state`` |
| POST | /_privnet/endpoints/{id}/replace-ips | | ``replace_ips`` |

Errors are ``{"error": message}`` with 400 (bad body) or 404 (unknown endpoint or path).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from sandbox.aws.server import UnknownEndpoint

if TYPE_CHECKING:
    from sandbox.aws.server import SandboxAws


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _body(environ: dict[str, Any]) -> dict[str, Any]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    raw = environ["wsgi.input"].read(length) if length else b""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise AdminError(400, f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise AdminError(400, "the body must be a JSON object")
    return data


def _route(sb: SandboxAws, method: str, parts: list[str], body: dict[str, Any],
           query: dict[str, list[str]]) -> Any:
    match method, parts:
        case "GET", ["config"]:
            return sb.config()
        case "POST", ["faults"]:
            kind = body.pop("kind", None)
            if kind == "latency":
                rule = sb.add_latency(float(body.pop("latency", 0)), **body)
            else:
                rule = sb.inject_fault(str(kind), **body)
            return {"rule": rule.to_dict()}
        case "DELETE", ["faults"]:
            seed = query.get("seed", [None])[0]
            sb.clear_faults(seed=int(seed) if seed is not None else None)
            return {"cleared": True}
        case "POST", ["faults", "seed"]:
            sb.reseed(int(body["seed"]))
            return {"seed": int(body["seed"])}
        case "POST", ["delays"]:
            sb.set_delays(**body)
            return sb.config()["delays"]
        case "POST", ["quotas"]:
            sb.set_quota(**body)
            return sb.config()["quotas"]
        case "POST", ["pagination"]:
            sb.set_default_page_size(body.get("default_page_size"))
            return {"default_page_size": sb.config()["default_page_size"]}
        case "POST", ["clock", "advance"]:
            sb.advance(float(body["seconds"]))
            return {"clock": sb.clock()}
        case "GET", ["endpoints"]:
            return {"endpoints": sb.inventory()}
        case "GET", ["history"]:
            since = int(query.get("since", ["0"])[0])
            return {"events": sb.history(since)}
        case "POST", ["endpoints", ep_id, action]:
            if action == "accept":
                return sb.accept_endpoint(ep_id)
            if action == "reject":
                return sb.reject_endpoint(ep_id)
            if action == "state":
                return sb.force_state(ep_id, str(body.get("state")))
            if action == "replace-ips":
                return {"ips": sb.replace_ips(ep_id)}
    raise AdminError(404, f"no admin route {method} /_privnet/{'/'.join(parts)}")


def handle(sb: SandboxAws, environ: dict[str, Any], start_response: Any) -> list[bytes]:
    method = str(environ.get("REQUEST_METHOD", "GET")).upper()
    path = str(environ.get("PATH_INFO", ""))[len("/_privnet/"):]
    parts = [p for p in path.split("/") if p]
    query = parse_qs(str(environ.get("QUERY_STRING", "")))
    with sb._fault_lock:
        sb.requests["_admin"] = sb.requests.get("_admin", 0) + 1
    try:
        status, payload = 200, _route(sb, method, parts, _body(environ), query)
    except AdminError as err:
        status, payload = err.status, {"error": str(err)}
    except UnknownEndpoint as err:
        status, payload = 404, {"error": f"not found: {err.args[0]}"}
    except KeyError as err:
        status, payload = 400, {"error": f"missing field {err.args[0]!r}"}
    except (TypeError, ValueError) as err:
        status, payload = 400, {"error": str(err)}
    data = json.dumps(payload, default=str).encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(data)))])
    return [data]
