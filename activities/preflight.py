"""Pre-flight check and setup facts: what step 1 of a connection would find, without
creating anything or taking a slot, and what a customer must configure on their side.

Both run in the worker (it holds the AWS role), each as one activity of a short workflow.
The check makes at most 3 AWS calls: DescribeVpcEndpointServices in our region (with
``ServiceRegions`` when cross-region), a second one in the service's region only to tell
"not allowed" from "our region not supported" when the first finds nothing, and
DescribeSubnets for our AZ ids (cached per process) only when the service is visible. The
principal ARN comes from settings or the role ARN; STS GetCallerIdentity is asked (once per
process) only when neither names it. Not counted: the role's AssumeRole, made when its
credentials are refreshed (hourly, shared with every activity).

``evaluate`` is pure: it turns what AWS and the store said into the named checks, each
failing one with a fix in words a customer can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsActivities, ErrorContext, classify_exception
from settings import Settings
from workflows.contracts import (
    ACT_PREFLIGHT,
    ACT_SETUP_FACTS,
    OrgUsage,
    PreflightCheck,
    PreflightInput,
    PreflightResult,
    RegionFacts,
    SetupFacts,
    SetupInput,
)

ALLOW_PRINCIPALS = "VPC console → Endpoint services → your service → Allow principals"
SUPPORTED_REGIONS = (
    "VPC console → Endpoint services → your service → Actions → Modify supported Regions"
)
ACCEPT = "VPC console → Endpoint services → Endpoint connections → Accept"


@dataclass(frozen=True)
class ServiceFacts:
    """What DescribeVpcEndpointServices says about the customer's service."""

    az_ids: list[str]
    acceptance_required: bool


@dataclass(frozen=True)
class Findings:
    """Everything ``evaluate`` needs, gathered by the activity."""

    org_id: str
    service_name: str
    region: str
    service_region: str
    principal_arn: str
    offered_regions: list[str]
    visibility: str  # "visible" | "not_allowed" | "region_not_supported"
    service: ServiceFacts | None
    our_az_ids: list[str] | None  # None: unknown (not looked up, or the lookup failed)
    usage: OrgUsage
    aws_error: str | None = None  # a non-retryable AWS error on our side (access, config)


def evaluate(f: Findings) -> PreflightResult:
    """The checks, in the order a customer would fix them."""
    checks: list[PreflightCheck] = []
    cross = f.service_region != f.region
    offered = f.region in f.offered_regions

    if offered:
        checks.append(PreflightCheck(name="region", ok=True, detail=f"privnet offers {f.region}"))
    else:
        where = ", ".join(f.offered_regions) or "none configured"
        checks.append(
            PreflightCheck(
                name="region",
                ok=False,
                detail=f"privnet has no endpoints in {f.region} (offered: {where})",
                fix=f"create the connection in one of the regions privnet offers: {where}",
            )
        )

    if f.aws_error is not None:
        checks.append(
            PreflightCheck(
                name="privnet_aws_access",
                ok=False,
                detail=f.aws_error,
                fix="a privnet operator must fix privnet's AWS access; nothing for the "
                "customer to change",
            )
        )
    elif f.visibility == "not_allowed":
        checks.append(
            PreflightCheck(
                name="service_visible",
                ok=False,
                detail=f"endpoint service {f.service_name} does not exist in "
                f"{f.service_region} or does not allow privnet's principal {f.principal_arn}",
                fix=f"allow the principal {f.principal_arn} on endpoint service "
                f"{f.service_name} ({ALLOW_PRINCIPALS}), and copy the service name exactly",
            )
        )
    else:
        checks.append(
            PreflightCheck(
                name="service_visible",
                ok=True,
                detail=f"endpoint service {f.service_name} allows privnet's principal "
                f"{f.principal_arn}",
            )
        )
        if not offered:
            pass  # cross-region and AZs are about our region: nothing to say about it
        elif not cross:
            checks.append(
                PreflightCheck(
                    name="cross_region",
                    ok=True,
                    detail=f"the service is in {f.region}, the region of our endpoint",
                )
            )
        elif f.visibility == "region_not_supported":
            alt = (
                f", or create the connection in region {f.service_region}"
                if f.service_region in f.offered_regions
                else ""
            )
            checks.append(
                PreflightCheck(
                    name="cross_region",
                    ok=False,
                    detail=f"the service is in {f.service_region} and does not support "
                    f"access from {f.region}",
                    fix=f"add {f.region} to the supported Regions of {f.service_name} "
                    f"({SUPPORTED_REGIONS}){alt}",
                )
            )
        else:
            checks.append(
                PreflightCheck(
                    name="cross_region",
                    ok=True,
                    detail=f"the service is in {f.service_region} and supports access from "
                    f"{f.region} (cross-region endpoint)",
                )
            )
        if f.service is not None and offered and f.visibility == "visible":
            checks.append(_az_check(f, f.service, cross))
        if f.service is not None:
            if f.service.acceptance_required:
                detail = (
                    "the service requires acceptance: after the connection is created, its "
                    f"owner must accept the endpoint connection request ({ACCEPT})"
                )
            else:
                detail = "the service accepts endpoint connections automatically"
            checks.append(PreflightCheck(name="acceptance", ok=True, detail=detail))

    u = f.usage
    if u.remaining > 0:
        checks.append(
            PreflightCheck(
                name="slots",
                ok=True,
                detail=f"org {u.org_id} uses {u.usage} of {u.limit} connections "
                f"({u.remaining} left)",
            )
        )
    else:
        checks.append(
            PreflightCheck(
                name="slots",
                ok=False,
                detail=f"org {u.org_id} uses {u.usage} of {u.limit} connections",
                fix=f"delete one of org {u.org_id}'s connections, or ask privnet to raise its "
                f"limit (privnet limits set --org {u.org_id} {u.usage + 1})",
            )
        )
    return PreflightResult(ok=all(c.ok for c in checks), checks=checks)


def _az_check(f: Findings, service: ServiceFacts, cross: bool) -> PreflightCheck:
    ours = f.our_az_ids
    if ours is None:
        return PreflightCheck(
            name="availability_zones",
            ok=False,
            detail=f"privnet's endpoint subnets in {f.region} could not be read",
            fix="a privnet operator must fix PRIVNET_ENDPOINT_NETWORKS; nothing for the "
            "customer to change",
        )
    if cross:
        return PreflightCheck(
            name="availability_zones",
            ok=bool(ours),
            detail=f"a cross-region endpoint uses privnet's AZ ids in {f.region}: "
            f"{', '.join(ours) or 'none'}",
            fix=None if ours else "a privnet operator must add endpoint subnets in "
            f"{f.region} (PRIVNET_ENDPOINT_NETWORKS)",
        )
    usable = sorted(set(service.az_ids) & set(ours))
    if usable:
        return PreflightCheck(
            name="availability_zones",
            ok=True,
            detail=f"the endpoint will use AZ ids {', '.join(usable)} (the service's load "
            f"balancer is in {', '.join(service.az_ids)}; privnet has subnets in "
            f"{', '.join(ours)})",
        )
    return PreflightCheck(
        name="availability_zones",
        ok=False,
        detail=f"the service's load balancer is in AZ ids {', '.join(service.az_ids) or 'none'} "
        f"and privnet's subnets in {f.region} are in {', '.join(ours)}: no AZ in common",
        fix=f"enable the load balancer of {f.service_name} in at least one of the AZ ids "
        f"{', '.join(ours)} (AZ ids, not names: names differ between accounts)",
    )


def org_usage(store: Any, org_id: str, default_limit: int) -> OrgUsage:
    """The org's limit (stored override, else the default) and its live connections."""
    override = store.org_limit(org_id)
    limit = default_limit if override is None else override
    usage = len(store.live_connections(org_id))
    return OrgUsage(org_id=org_id, limit=limit, usage=usage, remaining=max(limit - usage, 0))


def principal_for(settings: Settings, aws: AwsActivities) -> str:
    """The principal customers allow: settings, else the role's account, else STS."""
    if settings.aws_principal_arn:
        return settings.aws_principal_arn
    role = settings.aws_role_arn or ""
    parts = role.split(":")
    if len(parts) >= 5 and parts[2] == "iam" and parts[4].isdigit():
        return f"arn:aws:iam::{parts[4]}:root"
    return aws.principal_arn()


class PreflightActivities:
    """The pre-flight check and the setup facts. Sync: run in the worker's thread pool."""

    def __init__(self, settings: Settings, store: Any, aws: AwsActivities | None = None):
        self.settings = settings
        self.store = store
        self.aws = aws or AwsActivities(settings)

    def _describe(self, region: str, name: str, service_region: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"ServiceNames": [name]}
        if service_region is not None:
            kwargs["ServiceRegions"] = [service_region]
        resp = self.aws.client("ec2", region).describe_vpc_endpoint_services(**kwargs)
        for d in resp.get("ServiceDetails") or []:
            if d.get("ServiceName") == name:
                return dict(d)
        raise _NotVisible()

    def _visible(self, region: str, name: str, service_region: str | None) -> dict[str, Any] | None:
        """The service's details, or None when AWS says InvalidServiceName."""
        try:
            return self._describe(region, name, service_region)
        except _NotVisible:
            return None
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidServiceName":
                return None
            raise classify_exception(
                exc, "DescribeVpcEndpointServices", ErrorContext(region=region, service_name=name)
            ) from exc
        except BotoCoreError as exc:
            raise classify_exception(exc, "DescribeVpcEndpointServices") from exc

    @activity.defn(name=ACT_PREFLIGHT)
    def preflight_check(self, inp: PreflightInput) -> PreflightResult:
        offered = sorted(self.settings.endpoint_networks)
        usage = org_usage(self.store, inp.org_id, inp.default_org_limit)
        cross = inp.service_region != inp.region
        in_region = inp.region in offered
        visibility = "visible"
        service: ServiceFacts | None = None
        our_azs: list[str] | None = None
        aws_error: str | None = None
        try:
            if in_region:
                detail = self._visible(
                    inp.region, inp.endpoint_service_name, inp.service_region if cross else None
                )
            else:  # our region is not offered: still tell whether the service is visible
                detail = self._visible(inp.service_region, inp.endpoint_service_name, None)
            if detail is None and cross and in_region:
                # Not found from our region: not allowed, or our region not supported?
                detail = self._visible(inp.service_region, inp.endpoint_service_name, None)
                visibility = "not_allowed" if detail is None else "region_not_supported"
            elif detail is None:
                visibility = "not_allowed"
            if detail is not None:
                service = ServiceFacts(
                    az_ids=sorted(detail.get("AvailabilityZoneIds") or []),
                    acceptance_required=bool(detail.get("AcceptanceRequired")),
                )
                if in_region and visibility == "visible":
                    try:
                        our_azs = sorted(set(self.aws.our_subnets(inp.region).values()))
                    except ApplicationError as err:
                        if not err.non_retryable:
                            raise
        except ApplicationError as err:
            if not err.non_retryable:
                raise  # throttled / transient: the activity's retry policy tries again
            aws_error = str(err)
        principal = principal_for(self.settings, self.aws)
        return evaluate(
            Findings(
                org_id=inp.org_id,
                service_name=inp.endpoint_service_name,
                region=inp.region,
                service_region=inp.service_region,
                principal_arn=principal,
                offered_regions=offered,
                visibility=visibility,
                service=service,
                our_az_ids=our_azs,
                usage=usage,
                aws_error=aws_error,
            )
        )

    @activity.defn(name=ACT_SETUP_FACTS)
    def setup_facts(self, inp: SetupInput) -> SetupFacts:
        offered = sorted(self.settings.endpoint_networks)
        wanted = [inp.region] if inp.region is not None else offered
        regions = []
        for region in wanted:
            if region not in offered:
                continue
            azs = sorted(set(self.aws.our_subnets(region).values()))
            regions.append(RegionFacts(region=region, az_ids=azs, cross_region=True))
        principal = principal_for(self.settings, self.aws)
        usage = (
            org_usage(self.store, inp.org_id, inp.default_org_limit)
            if inp.org_id is not None
            else None
        )
        steps = [
            f"Allow the principal {principal} on your endpoint service ({ALLOW_PRINCIPALS}).",
            "Put your Network Load Balancer in at least one of privnet's AZ ids of the "
            "region you connect from (AZ ids, not names: names differ between accounts): "
            + "; ".join(f"{r.region}: {', '.join(r.az_ids)}" for r in regions)
            + ".",
            "If your service is in another region than privnet's endpoint, add that region to "
            f"your service's supported Regions ({SUPPORTED_REGIONS}).",
            "If your service requires acceptance, accept privnet's endpoint connection "
            f"request ({ACCEPT}).",
        ]
        return SetupFacts(
            principal_arn=principal,
            default_region=self.settings.aws_region,
            regions_offered=offered,
            regions=regions,
            cross_region_available=bool(regions),
            org=usage,
            steps=steps,
        )


class _NotVisible(Exception):
    pass
