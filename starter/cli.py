"""The ``privnet`` command.

Configuration, lowest to highest precedence: settings defaults, the ``env`` object of the
stack file (``--stack PATH``, else ``.privnet/stack.json`` when it exists), ``PRIVNET_*``
variables in the environment. Every command takes ``--json`` for machine output.

Exit codes: 0 ok · 1 failed (connection Failed/Rejected, not found, unreachable) · 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from settings import Settings
from starter import validation
from workflows.contracts import (
    ConnectionStatus,
    ConnectionView,
    InvalidInput,
)

DEFAULT_STACK = os.path.join(".privnet", "stack.json")
FAILED_STATUSES = {ConnectionStatus.FAILED.value, ConnectionStatus.REJECTED.value}


class UsageError(Exception):
    """A mistake the user can fix: exit 2."""


class CommandFailed(Exception):
    """The command ran but the outcome is a failure: exit 1."""


# ---------------------------------------------------------------------- configuration


def load_stack_env(stack_path: str | None) -> dict[str, Any] | None:
    """Read the stack file and put its ``env`` under the process environment (variables
    already set win). Returns the stack document, or None when there is none."""
    path = stack_path
    if path is None:
        if not os.path.exists(DEFAULT_STACK):
            return None
        path = DEFAULT_STACK
    elif not os.path.exists(path):
        raise UsageError(f"stack file {path} does not exist (start one with `privnet dev up`)")
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read stack file {path}: {err}") from None
    for key, value in (doc.get("env") or {}).items():
        os.environ.setdefault(key, str(value))
    return dict(doc)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1d``, ``1h30m`` or plain seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return timedelta(seconds=float(text))
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 15m, 2h, 1d")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return timedelta(seconds=sum(float(n) * unit[u] for n, u in parts))


# ---------------------------------------------------------------------- output


def _dump(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, list):
        return [_dump(o) for o in obj]
    return obj


def print_json(obj: Any) -> None:
    print(json.dumps(_dump(obj), indent=2, sort_keys=False), flush=True)


def format_view(v: ConnectionView, *, ui_url: str | None = None) -> str:
    lines = [f"{v.org_id}/{v.connection_id}  {v.status}"]
    if v.reason or v.message:
        lines.append(f"  reason    {v.reason or '-'}: {v.message}")
    if v.display_name:
        lines.append(f"  name      {v.display_name}")
    cross = " (cross-region)" if v.service_region != v.region else ""
    lines.append(f"  service   {v.endpoint_service_name}{cross}")
    lines.append(f"  region    {v.region}")
    if v.vpc_endpoint_id:
        lines.append(f"  endpoint  {v.vpc_endpoint_id}")
    if v.ips:
        lines.append(f"  ips       {', '.join(v.ips)}")
    if v.dns_names:
        lines.append(f"  dns       {', '.join(v.dns_names)}")
    if v.created_at:
        lines.append(f"  created   {v.created_at.isoformat(timespec='seconds')}")
    if ui_url:
        lines.append(f"  ui        {ui_url}")
    if v.timeline:
        lines.append("  timeline")
        for t in v.timeline:
            detail = f"  {t.detail}" if t.detail else ""
            lines.append(f"    {t.at.isoformat(timespec='seconds')}  {t.status}{detail}")
    return "\n".join(lines)


def format_change(v: ConnectionView) -> str:
    extra = ""
    if v.reason:
        extra = f"  {v.reason}: {v.message}"
    elif v.message:
        extra = f"  {v.message}"
    return f"{v.org_id}/{v.connection_id}  {v.status}{extra}"


def _fail_if_failed(v: ConnectionView) -> None:
    if v.status in FAILED_STATUSES:
        raise CommandFailed(f"{v.status}: {v.reason or 'UNKNOWN'}: {v.message}")


# ---------------------------------------------------------------------- commands


async def _client(settings: Settings) -> Any:
    from starter.client import ConnectionsClient

    try:
        return await ConnectionsClient.connect(settings)
    except (RuntimeError, OSError) as err:  # what Client.connect raises when unreachable
        raise CommandFailed(
            f"cannot connect to Temporal at {settings.temporal_address}: {err} "
            "(start a stack with `privnet dev up`, or set PRIVNET_TEMPORAL_ADDRESS)"
        ) from None


async def _watch(
    client: Any,
    org: str,
    cid: str,
    *,
    until: set[str],
    as_json: bool,
    max_wait: float,
    replay: bool = True,
) -> ConnectionView:
    last: ConnectionView | None = None
    out = sys.stderr if as_json else sys.stdout
    async for view in client.watch(
        org, cid, until=until, max_wait=timedelta(seconds=max_wait), replay=replay
    ):
        print(format_change(view), file=out, flush=True)
        last = view
    assert last is not None
    return last


def _validate_ids(args: argparse.Namespace) -> None:
    """Bad input fails fast (exit 2), before any connection to Temporal."""
    if getattr(args, "org", None) is not None:
        validation.org_id(args.org)
    if getattr(args, "id", None) is not None:
        validation.connection_id(args.id)


async def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    from starter.client import validate_create

    validate_create(
        settings, args.org, args.service_name, args.region, args.id, args.port or (), args.name
    )
    client = await _client(settings)
    view = await client.create(
        args.org,
        args.service_name,
        region=args.region,
        connection_id=args.id,
        display_name=args.name,
        ports=args.port or (),
    )
    if args.wait:  # also when it already ended: the watch prints its timeline, then returns
        view = await _watch(
            client,
            args.org,
            view.connection_id,
            until={ConnectionStatus.ACTIVE.value},
            as_json=args.json,
            max_wait=args.timeout,
        )
        view = await client.get(args.org, view.connection_id)
        if not args.json:
            print()
    if args.json:
        print_json(view)
    else:
        print(format_view(view, ui_url=client.workflow_url(view.workflow_id or "")))
    _fail_if_failed(view)
    return 0


async def cmd_get(args: argparse.Namespace, settings: Settings) -> int:
    client = await _client(settings)
    view = await client.get(args.org, args.id)
    if args.json:
        print_json(view)
    else:
        print(format_view(view, ui_url=client.workflow_url(view.workflow_id or "")))
    return 0


async def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    client = await _client(settings)
    views = await client.list(args.org)
    if args.json:
        print_json(views)
        return 0
    if not views:
        print("no connections")
        return 0
    rows = [("ORG", "ID", "STATUS", "ENDPOINT", "IPS", "SERVICE")]
    for v in views:
        rows.append(
            (
                v.org_id,
                v.connection_id,
                v.status + (f" ({v.reason})" if v.reason else ""),
                v.vpc_endpoint_id or "-",
                ",".join(v.ips) or "-",
                v.endpoint_service_name,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


async def cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    client = await _client(settings)
    view = await client.delete(args.org, args.id)
    if args.wait:  # also when it already ended: the watch prints its timeline, then returns
        view = await _watch(
            client,
            args.org,
            args.id,
            until=set(),
            as_json=args.json,
            max_wait=args.timeout,
            replay=False,
        )
        view = await client.get(args.org, args.id)
    if args.json:
        print_json(view)
    else:
        print(format_change(view))
    if args.wait:
        _fail_if_failed(view)
    return 0


async def cmd_signal(args: argparse.Namespace, settings: Settings) -> int:
    client = await _client(settings)
    fn = client.cancel if args.command == "cancel" else client.retry
    view = await fn(args.org, args.id)
    if args.json:
        print_json(view)
    else:
        print(format_change(view))
    return 0


async def cmd_stuck(args: argparse.Namespace, settings: Settings) -> int:
    client = await _client(settings)
    items = await client.stuck(args.older_than)
    if args.json:
        print_json(items)
        return 0
    if not items:
        print(f"nothing provisioning for longer than {args.older_than}")
        return 0
    for s in items:
        age = timedelta(seconds=int(s.age_seconds))
        print(f"{s.org_id}/{s.connection_id}  {s.status}  for {age}")
        if s.step:
            print(f"  step      {s.step}")
        if s.aws_state:
            print(f"  aws       {s.aws_state}  {s.vpc_endpoint_id or ''}".rstrip())
        if s.message:
            print(f"  to fix    {s.message}")
        for pa in s.pending_activities:
            failure = f"  last failure: {pa.last_failure}" if pa.last_failure else ""
            print(f"  activity  {pa.activity_type} attempt {pa.attempt} ({pa.state}){failure}")
        print(f"  ui        {s.ui_url}")
        print(f"  retry now privnet retry {s.org_id} {s.connection_id}")
    return 0


async def cmd_limits(args: argparse.Namespace, settings: Settings) -> int:
    client = await _client(settings)
    if args.limits_command == "set":
        usage = await client.set_limit(args.org, args.limit)
    else:
        usage = await client.get_limit(args.org)
    if args.json:
        print_json(usage)
    else:
        print(f"{usage.org_id}: {usage.usage} of {usage.limit} connections in use")
    return 0


async def cmd_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    from activities.kubernetes import KubernetesActivities
    from workflows.contracts import SWEEP_SCHEDULE_ID

    kube = KubernetesActivities.from_settings(settings)
    result = kube.apply_baseline()
    if inspect.isawaitable(result):
        result = await result
    changed = bool(result)
    client = await _client(settings)
    created = await client.ensure_sweep_schedule()
    if args.json:
        print_json(
            {
                "applied": True,
                "changed": changed,
                "namespaces": settings.task_namespaces,
                "sweep_schedule": SWEEP_SCHEDULE_ID,
                "sweep_schedule_created": created,
            }
        )
    else:
        state = "applied" if changed else "already up to date"
        print(
            f"cluster baseline policy {state} (task namespaces: "
            f"{', '.join(settings.task_namespaces)})"
        )
        every = timedelta(seconds=settings.sweep_interval_seconds)
        print(
            f"sweep schedule {SWEEP_SCHEDULE_ID} {'created' if created else 'up to date'} "
            f"(every {every})"
        )
    return 0


def format_sweep(report: Any) -> str:
    grace = timedelta(seconds=int(report.grace_seconds))
    due = sum(1 for o in report.orphans if o.due)
    lines = [
        f"checked {report.endpoints_seen} endpoint(s) and {report.policies_seen} policy(ies): "
        f"{len(report.orphans)} orphan(s), {due} unowned for longer than {grace}"
    ]
    for o in report.orphans:
        where = o.region or o.namespace or ""
        if o.id in report.deleted:
            state = "DELETED"
        elif o.due and not report.dry_run:
            state = "kept"
        else:
            state = "due" if o.due else "in grace"
        lines.append(
            f"  {o.kind:<8} {o.id}  {where}  {o.org_id}/{o.connection_id}  "
            f"last owned {o.last_owned_at.isoformat(timespec='seconds')}  {state}"
        )
        lines.append(f"           {o.why}")
    if report.dry_run:
        lines.append("dry run: nothing deleted")
    return "\n".join(lines)


async def cmd_sweep(args: argparse.Namespace, settings: Settings) -> int:
    client = await _client(settings)
    report = await client.sweep(dry_run=args.dry_run, grace=args.grace)
    if args.json:
        print_json(report)
    else:
        print(format_sweep(report))
    return 0


def format_checks(result: Any) -> str:
    lines = [f"pre-flight: {'ok' if result.ok else 'NOT OK'}"]
    for c in result.checks:
        lines.append(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name:<20} {c.detail}")
        if c.fix:
            lines.append(f"        {'':<20} fix: {c.fix}")
    return "\n".join(lines)


async def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    validation.check_request(
        org=args.org,
        endpoint_service_name=args.service_name,
        region_name=args.region,
        default_region=settings.aws_region,
    )
    client = await _client(settings)
    result = await client.check(args.org, args.service_name, region=args.region)
    if args.json:
        print_json(result)
    else:
        print(format_checks(result))
    if not result.ok:
        failed = ", ".join(c.name for c in result.checks if not c.ok)
        raise CommandFailed(f"pre-flight check failed: {failed}")
    return 0


def format_setup(facts: Any) -> str:
    lines = [f"principal to allow   {facts.principal_arn}"]
    lines.append(f"regions offered      {', '.join(facts.regions_offered) or '-'}")
    for r in facts.regions:
        cross = "cross-region available" if r.cross_region else "same region only"
        lines.append(f"  {r.region:<18} AZ ids {', '.join(r.az_ids) or '-'}  ({cross})")
    if facts.org is not None:
        o = facts.org
        lines.append(f"org {o.org_id}: {o.usage} of {o.limit} connections ({o.remaining} left)")
    lines.append("steps")
    lines.extend(f"  {i}. {step}" for i, step in enumerate(facts.steps, 1))
    return "\n".join(lines)


async def cmd_setup(args: argparse.Namespace, settings: Settings) -> int:
    if args.region is not None:
        validation.region(args.region, settings.endpoint_networks)
    client = await _client(settings)
    facts = await client.setup(region=args.region, org_id=args.org)
    if args.json:
        print_json(facts)
    else:
        print(format_setup(facts))
    return 0


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from activities.store import Store
    from migrations import current_revision, head_revision, upgrade

    try:
        store = Store(settings.database_url)
    except ValueError as err:
        raise UsageError(f"PRIVNET_DATABASE_URL: {err}") from None
    try:
        before = current_revision(store)
        after = upgrade(store, args.revision) if args.db_command == "upgrade" else before
    except Exception as err:  # noqa: BLE001 - unreachable database, bad revision: one line
        raise CommandFailed(f"database {store.engine.url!r}: {err}") from None
    finally:
        store.dispose()
    head = head_revision()
    if args.json:
        print_json({"database_url": str(store.engine.url), "before": before, "current": after,
                    "head": head})
    elif args.db_command == "upgrade":
        moved = "already at" if before == after else f"upgraded from {before or 'empty'} to"
        print(f"store schema {moved} {after} (head {head})")
    else:
        print(f"store schema at {after or 'no revision'} (head {head})")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker import run_worker

    asyncio.run(run_worker(settings))
    return 0


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from starter.api import run

    if args.port is not None:
        settings = settings.model_copy(update={"api_port": args.port})
    if args.host is not None:
        settings = settings.model_copy(update={"api_host": args.host})
    run(settings)
    return 0


def cmd_dev_up(args: argparse.Namespace) -> int:
    from sandbox.stack import run_foreground

    return run_foreground(data_dir=args.data_dir, worker=not args.no_worker, as_json=args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    from sandbox.stack import run_demo

    return run_demo(data_dir=args.data_dir, once=args.once, as_json=args.json)


# ---------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    def options(parser: argparse.ArgumentParser, default: Any) -> argparse.ArgumentParser:
        parser.add_argument(
            "--json", action="store_true", default=default, help="machine-readable output"
        )
        parser.add_argument(
            "--stack",
            metavar="PATH",
            default=default if default is argparse.SUPPRESS else None,
            help=f"stack file (default {DEFAULT_STACK} when it exists)",
        )
        return parser

    # Subcommands repeat the options with SUPPRESS defaults, so `privnet --json list` and
    # `privnet list --json` both work (a subparser default would overwrite the first).
    common = options(argparse.ArgumentParser(add_help=False), argparse.SUPPRESS)
    p = options(
        argparse.ArgumentParser(
            prog="privnet",
            description="Private connections to customers' services over AWS PrivateLink.",
        ),
        False,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="the embedded development stack", parents=[common])
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="up")
    up = dev_sub.add_parser("up", help="start the embedded stack (foreground)", parents=[common])
    up.add_argument("--data-dir", default=".privnet", help="state directory (default .privnet)")
    up.add_argument("--no-worker", action="store_true", help="start everything but the worker")

    c = sub.add_parser("create", help="create a connection", parents=[common])
    c.add_argument("--org", required=True)
    c.add_argument("--service-name", required=True, help="com.amazonaws.vpce.<region>.vpce-svc-…")
    c.add_argument("--region", help="region of our endpoint (default PRIVNET_AWS_REGION)")
    c.add_argument("--id", help="connection id (idempotency key); generated when omitted")
    c.add_argument("--name", help="display name")
    c.add_argument("--port", type=int, action="append", help="allowed TCP port (repeatable)")
    c.add_argument("--wait", action="store_true", help="follow the status until Active")
    c.add_argument("--timeout", type=float, default=600, help="--wait timeout in seconds")

    for name, helptext in (
        ("get", "show a connection and its timeline"),
        ("cancel", "cancel provisioning (compensates what was created)"),
        ("retry", "retry the current step now (skip the backoff)"),
    ):
        s = sub.add_parser(name, help=helptext, parents=[common])
        s.add_argument("org")
        s.add_argument("id")

    d = sub.add_parser("delete", help="delete a connection", parents=[common])
    d.add_argument("org")
    d.add_argument("id")
    d.add_argument("--wait", action="store_true", help="follow the status until Deleted")
    d.add_argument("--timeout", type=float, default=600, help="--wait timeout in seconds")

    ls = sub.add_parser("list", help="list connections", parents=[common])
    ls.add_argument("--org")

    st = sub.add_parser("stuck", help="connections provisioning for too long", parents=[common])
    st.add_argument(
        "--older-than", type=parse_duration, default=timedelta(minutes=15), metavar="DURATION"
    )

    lim = sub.add_parser("limits", help="per-organization connection limits", parents=[common])
    lim_sub = lim.add_subparsers(dest="limits_command", required=True, metavar="{set,get}")
    ls_set = lim_sub.add_parser("set", help="set an org's limit", parents=[common])
    ls_set.add_argument("--org", required=True)
    ls_set.add_argument("limit", type=int, metavar="N")
    ls_get = lim_sub.add_parser("get", help="show an org's limit and usage", parents=[common])
    ls_get.add_argument("--org", required=True)

    chk = sub.add_parser(
        "check", help="pre-flight check of a connection (creates nothing)", parents=[common]
    )
    chk.add_argument("--org", required=True)
    chk.add_argument("--service-name", required=True, help="com.amazonaws.vpce.<region>.vpce-svc-…")
    chk.add_argument("--region", help="region of our endpoint (default PRIVNET_AWS_REGION)")

    su = sub.add_parser(
        "setup", help="what a customer must configure on their side", parents=[common]
    )
    su.add_argument("--region", help="only this region (default: every offered region)")
    su.add_argument("--org", help="also show this org's limit and usage")

    sub.add_parser(
        "bootstrap",
        help="apply the cluster baseline policy and create the hourly sweep schedule",
        parents=[common],
    )
    sw = sub.add_parser(
        "sweep", help="find (and delete) endpoints and policies no connection owns",
        parents=[common],
    )
    sw.add_argument("--dry-run", action="store_true", help="only list the orphans")
    sw.add_argument(
        "--grace", type=parse_duration, default=None, metavar="DURATION",
        help="delete only orphans unowned for this long (default PRIVNET_SWEEP_GRACE_SECONDS)",
    )
    db = sub.add_parser("db", help="the store's schema (migrations)", parents=[common])
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="{upgrade,current}")
    up_db = db_sub.add_parser("upgrade", help="migrate the store to head", parents=[common])
    up_db.add_argument("--revision", default="head", help="target revision (default head)")
    db_sub.add_parser("current", help="show the store's schema revision", parents=[common])

    sub.add_parser("worker", help="run the Temporal worker", parents=[common])
    sub.add_parser("soak", add_help=False,
                   help="random operations and faults against a stack of its own, then an "
                   "invariant check (privnet soak --help)")
    api = sub.add_parser("api", help="run the HTTP API", parents=[common])
    api.add_argument("--host")
    api.add_argument("--port", type=int)

    demo = sub.add_parser("demo", help="stack + one connection, end to end", parents=[common])
    demo.add_argument("--once", action="store_true", help="exit after the connection is Active")
    demo.add_argument("--data-dir", default=None, help="state directory (default: a temp dir)")
    return p


AsyncCmd = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]
ASYNC_COMMANDS: dict[str, AsyncCmd] = {
    "create": cmd_create,
    "get": cmd_get,
    "list": cmd_list,
    "delete": cmd_delete,
    "cancel": cmd_signal,
    "retry": cmd_signal,
    "stuck": cmd_stuck,
    "limits": cmd_limits,
    "bootstrap": cmd_bootstrap,
    "check": cmd_check,
    "setup": cmd_setup,
    "sweep": cmd_sweep,
}


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["soak"]:  # its own options (soak/run.py); it starts its own stack
        from soak.run import main as soak_main

        return soak_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from starter.client import Conflict, NotFound, Unavailable

    try:
        if args.command == "dev":
            return cmd_dev_up(args)
        if args.command == "demo":
            return cmd_demo(args)
        load_stack_env(args.stack)
        try:
            settings = Settings()  # type: ignore[call-arg]
        except Exception as err:
            raise UsageError(f"invalid PRIVNET_* configuration: {err}") from None
        if args.command == "worker":
            return cmd_worker(args, settings)
        if args.command == "api":
            return cmd_api(args, settings)
        if args.command == "db":
            return cmd_db(args, settings)
        _validate_ids(args)
        return asyncio.run(ASYNC_COMMANDS[args.command](args, settings))
    except (InvalidInput, UsageError) as err:
        code = getattr(err, "code", None)
        print(f"privnet: error: {code + ': ' if code else ''}{err}", file=sys.stderr)
        return 2
    except (NotFound, Conflict, Unavailable, CommandFailed, TimeoutError) as err:
        print(f"privnet: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main() -> None:
    code = run()
    # Exit without interpreter finalization: the Temporal client's Rust runtime threads can
    # call back into Python while it finalizes ("PyGILState_Release ... must be current"),
    # which aborts the process after the command has already succeeded or failed cleanly.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
