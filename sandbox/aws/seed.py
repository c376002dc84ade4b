"""Seeding: the accounts, networks and customer services privnet's sandbox starts with,
and the settings/environment that point privnet at them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from sandbox.aws.state import (
    ADMIN_ROLE_NAME,
    BOOTSTRAP_ACCOUNT_ID,
    CUSTOMER_ACCOUNT_ID,
    ENDPOINTS_ACCOUNT_ID,
    ENDPOINTS_ROLE_NAME,
    SANDBOX_ACCESS_KEY,
    SANDBOX_SECRET_KEY,
)

if TYPE_CHECKING:
    from sandbox.aws.server import SandboxAws
    from settings import Settings


class EndpointNetworkSeed(BaseModel):
    vpc_id: str
    subnet_ids: list[str]
    security_group_ids: list[str]
    az_ids: dict[str, str] = Field(default_factory=dict)  # subnet id → AZ id


class SandboxSeed(BaseModel):
    endpoint_url: str
    endpoints_account_id: str
    customer_account_id: str
    region: str
    other_region: str
    role_arn: str
    principal_arn: str
    endpoint_networks: dict[str, EndpointNetworkSeed]
    customer_services: dict[str, str]
    customer_service_ids: dict[str, str]
    customer_role_arn: str
    customer_vpc_ids: dict[str, str]
    customer_az_ids: dict[str, list[str]]  # service key → AZ ids of its NLB
    customer_nlb_arns: dict[str, str]  # region → the customer's internal NLB
    access_key_id: str = SANDBOX_ACCESS_KEY
    secret_access_key: str = SANDBOX_SECRET_KEY

    # Further endpoint VPCs per region (tried after the first: the per-VPC quota).
    more_endpoint_networks: dict[str, list[EndpointNetworkSeed]] = Field(default_factory=dict)

    def networks(self, region: str) -> list[EndpointNetworkSeed]:
        first = self.endpoint_networks.get(region)
        return ([first] if first else []) + list(self.more_endpoint_networks.get(region, []))

    def _networks_json(self) -> dict[str, Any]:
        """PRIVNET_ENDPOINT_NETWORKS: one object per region, a list where it has several."""
        out: dict[str, Any] = {}
        for region in self.endpoint_networks:
            nets = [{"vpc_id": n.vpc_id, "subnet_ids": n.subnet_ids,
                     "security_group_ids": n.security_group_ids}
                    for n in self.networks(region)]
            out[region] = nets[0] if len(nets) == 1 else nets
        return out

    def settings(self, **overrides: Any) -> Settings:
        """privnet settings that use this sandbox as the endpoints account."""
        from settings import Settings

        values: dict[str, Any] = {
            "aws_region": self.region,
            "aws_role_arn": self.role_arn,
            "aws_endpoint_url": self.endpoint_url,
            "endpoint_networks": self._networks_json(),
        }
        values.update(overrides)
        return Settings(**values)

    def env(self) -> dict[str, str]:
        """PRIVNET_* / AWS_* variables a worker needs to use this sandbox."""
        return {
            "PRIVNET_AWS_REGION": self.region,
            "PRIVNET_AWS_ROLE_ARN": self.role_arn,
            "PRIVNET_AWS_ENDPOINT_URL": self.endpoint_url,
            "PRIVNET_AWS_PRINCIPAL_ARN": self.principal_arn,
            "PRIVNET_ENDPOINT_NETWORKS": json.dumps(self._networks_json()),
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def create_endpoint_network(
    sandbox: SandboxAws, region: str, prefix: str, account_id: str = ENDPOINTS_ACCOUNT_ID,
    *, subnet_bits: int = 24,
) -> EndpointNetworkSeed:
    """A VPC ``<prefix>.0.0/16`` in our endpoints account with one subnet per AZ and a
    security group: where privnet puts interface endpoints (``/20`` subnets hold many)."""
    ec2 = sandbox.client("ec2", region, account_id)
    vpc = ec2.create_vpc(CidrBlock=f"{prefix}.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnets, az_ids = [], {}
    step = 2 ** (24 - subnet_bits)
    for j, z in enumerate(ec2.describe_availability_zones()["AvailabilityZones"]):
        sn = ec2.create_subnet(
            VpcId=vpc, CidrBlock=f"{prefix}.{j * step}.0/{subnet_bits}",
            AvailabilityZoneId=z["ZoneId"],
        )["Subnet"]
        subnets.append(sn["SubnetId"])
        az_ids[sn["SubnetId"]] = sn["AvailabilityZoneId"]
    sg = ec2.create_security_group(
        GroupName="privnet-endpoints", Description="privnet endpoints", VpcId=vpc
    )["GroupId"]
    return EndpointNetworkSeed(
        vpc_id=vpc, subnet_ids=subnets, security_group_ids=[sg], az_ids=az_ids
    )


def seed_default(
    self: SandboxAws, region: str = "us-east-1", other_region: str = "us-west-2",
    *, vpcs_per_region: int = 1,
) -> SandboxSeed:
    """Two accounts: ours (a role, ``vpcs_per_region`` endpoint networks per Region) and
    the customer's (an internal NLB per Region and the endpoint services tests use)."""
    ours = ENDPOINTS_ACCOUNT_ID
    cust = CUSTOMER_ACCOUNT_ID
    iam = self.client("iam", region, ours)
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{BOOTSTRAP_ACCOUNT_ID}:root"},
        "Action": "sts:AssumeRole"}]})
    try:
        role_arn = iam.create_role(
            RoleName=ENDPOINTS_ROLE_NAME, AssumeRolePolicyDocument=trust
        )["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        role_arn = iam.get_role(RoleName=ENDPOINTS_ROLE_NAME)["Role"]["Arn"]

    networks = {
        reg: create_endpoint_network(self, reg, f"10.{10 + i}")
        for i, reg in enumerate([region, other_region])
    }
    more = {
        reg: [create_endpoint_network(self, reg, f"10.{20 + 2 * k + i}")
              for k in range(vpcs_per_region - 1)]
        for i, reg in enumerate([region, other_region])
    } if vpcs_per_region > 1 else {}

    principal = f"arn:aws:iam::{ours}:root"
    services: dict[str, str] = {}
    service_ids: dict[str, str] = {}
    vpcs: dict[str, str] = {}
    svc_azs: dict[str, list[str]] = {}
    nlbs: dict[str, str] = {}
    for i, reg in enumerate([region, other_region]):
        ec2 = self.client("ec2", reg, cust)
        vpc = ec2.create_vpc(CidrBlock=f"10.{50 + i}.0.0/16")["Vpc"]["VpcId"]
        zones = ec2.describe_availability_zones()["AvailabilityZones"][:2]
        sns = [
            ec2.create_subnet(
                VpcId=vpc, CidrBlock=f"10.{50 + i}.{j}.0/24", AvailabilityZoneId=z["ZoneId"]
            )["Subnet"]["SubnetId"]
            for j, z in enumerate(zones)
        ]
        elb = self.client("elbv2", reg, cust)
        nlbs[reg] = elb.create_load_balancer(
            Name=f"customer-nlb-{reg}", Subnets=sns, Scheme="internal", Type="network"
        )["LoadBalancers"][0]["LoadBalancerArn"]
        vpcs[reg] = vpc
        svc_azs[reg] = sorted(z["ZoneId"] for z in zones)

    spec = {
        "allowed": (region, False, [principal], [region]),
        "not_allowed": (region, False, [], [region]),
        "acceptance_required": (region, True, [principal], [region]),
        "other_region": (other_region, False, [principal], [other_region, region]),
    }
    azs_by_service: dict[str, list[str]] = {}
    for key, (reg, acceptance, principals, supported) in spec.items():
        ec2 = self.client("ec2", reg, cust)
        cfg = ec2.create_vpc_endpoint_service_configuration(
            NetworkLoadBalancerArns=[nlbs[reg]], AcceptanceRequired=acceptance,
            SupportedRegions=supported,
            TagSpecifications=[{"ResourceType": "vpc-endpoint-service",
                                "Tags": [{"Key": "Name", "Value": key}]}],
        )["ServiceConfiguration"]
        if principals:
            ec2.modify_vpc_endpoint_service_permissions(
                ServiceId=cfg["ServiceId"], AddAllowedPrincipals=principals
            )
        services[key] = cfg["ServiceName"]
        service_ids[key] = cfg["ServiceId"]
        azs_by_service[key] = svc_azs[reg]

    return SandboxSeed(
        endpoint_url=self.url, endpoints_account_id=ours, customer_account_id=cust,
        region=region, other_region=other_region, role_arn=role_arn,
        principal_arn=principal, endpoint_networks=networks, customer_services=services,
        customer_service_ids=service_ids,
        customer_role_arn=f"arn:aws:iam::{cust}:role/{ADMIN_ROLE_NAME}",
        customer_vpc_ids=vpcs, customer_az_ids=azs_by_service, customer_nlb_arns=nlbs,
        more_endpoint_networks=more,
    )
