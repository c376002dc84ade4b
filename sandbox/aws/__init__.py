"""Sandbox AWS: moto's server in-process, its EC2 backend extended to behave like PrivateLink.

moto 5 does not model PrivateLink between accounts. ``SandboxAws`` starts
``moto.server.ThreadedMotoServer`` on 127.0.0.1 (a free port) behind a fault-injection
middleware and, once per process (``install_privatelink()``, idempotent), replaces a few
action handlers of moto's ``EC2Response`` with the PrivateLink model. Everything else
(VPCs, subnets, security groups, ENIs, ELBv2, STS, IAM) is plain moto. Clients talk to it
over real HTTP (boto3, the AWS CLI).

Modules: ``state`` (clock, delays, quotas, history), ``model`` (the PrivateLink model on
moto's objects), ``handlers`` (the moto patching), ``pagination`` (MaxResults/NextToken),
``faults`` (the WSGI fault middleware), ``admin`` (the ``/_privnet/`` HTTP controls),
``server`` (``SandboxAws``), ``seed`` (accounts, networks, services; privnet settings).

Accounts: moto attributes each request to the account of its access key; STS AssumeRole
into ``arn:aws:iam::<acct>:role/<name>`` returns keys mapped to ``<acct>``, so the
customer account and our endpoints account are separate.

Fidelity table (behaviour → the AWS documentation / known behaviour it follows → where →
test; tests are in tests/test_sandbox_aws.py unless marked *controls* =
tests/test_sandbox_aws_controls.py or *cli* = tests/test_aws_cli.py):

| # | Behaviour | AWS reference | Code | Test |
|---|-----------|---------------|------|------|
| 1 | Assumed-role credentials act in the role's account (GetCallerIdentity) | STS AssumeRole API reference | moto | test_accounts_are_separate |
| 2 | DescribeVpcEndpointServices(ServiceNames) shows another account's service only to its allowed principals (`arn:aws:iam::<acct>:root`, the caller's role ARN, or `*`); otherwise `InvalidServiceName` "The Vpc Endpoint Service '<name>' does not exist" | PrivateLink guide "Manage permissions"; EC2 error codes (InvalidServiceName) | model.allowed, model.visible_service | test_service_visible_only_to_allowed_principals, test_wildcard_principal |
| 3 | ServiceDetails carry AvailabilityZones, AvailabilityZoneIds, AcceptanceRequired, Owner, ServiceRegion, BaseEndpointDnsNames | EC2 API ServiceDetail | model.service_detail | test_service_details_fields |
| 4 | CreateVpcEndpoint validates the service and the caller's permission (`InvalidServiceName`) | PrivateLink guide "Create an interface endpoint" | handlers._validate_and_create | test_create_rejects_unknown_or_forbidden_service |
| 5 | Each subnet's AZ (by AZ id) must be one of the service's: `InvalidParameter` "The VPC endpoint service <svc> does not support the availability zone of the subnet: <subnet>." | Known AWS error text; guide "Availability Zones" (AZ ids are consistent across accounts) | handlers._validate_and_create | test_create_rejects_unsupported_az |
| 6 | One endpoint subnet per AZ (`DuplicateSubnetsInSameZone`) | EC2 API CreateVpcEndpoint | handlers._validate_and_create | test_create_rejects_two_subnets_in_one_az |
| 7 | Cross-Region: `ServiceRegion` must be the service's Region and the consumer Region one of the service's SupportedRegions; without `ServiceRegion` a remote service is not found; the provider's AZs are not checked against the consumer's subnets | PrivateLink guide "Cross-Region connectivity"; CreateVpcEndpoint ServiceRegion | model.visible_service, handlers._validate_and_create | test_cross_region_create, test_cross_region_requires_supported_region |
| 8 | ClientToken: same token + same parameters → the same endpoint, before any other check (quota included); different parameters → `IdempotentParameterMismatch` | EC2 "Ensuring idempotency" | handlers._h_create_vpc_endpoint | test_client_token_idempotency, *controls* test_quota_per_vpc |
| 9 | States: `pending` → `available` after a delay; with acceptance required `pendingAcceptance` until the owner calls AcceptVpcEndpointConnections (→ `pending` → `available`) or RejectVpcEndpointConnections (→ `rejected`); only the owner may accept | PrivateLink guide "Accept or reject connection requests"; VpcEndpoint State enum | model.advance, model.decide | test_state_transitions_with_delay, test_acceptance_accept, test_acceptance_reject |
| 9b | DescribeVpcEndpointConnections shows the owner every endpoint of its services (owner account, state, Region), filterable by service-id / vpc-endpoint-state, paginated | EC2 API DescribeVpcEndpointConnections | handlers._h_describe_vpc_endpoint_connections | test_acceptance_accept |
| 10 | DeleteVpcEndpoints: `deleting` → `deleted`, then the endpoint disappears (DescribeVpcEndpoints by id → `InvalidVpcEndpointId.NotFound`); unknown ids come back in `Unsuccessful` | EC2 API DeleteVpcEndpoints | handlers._h_delete_vpc_endpoints, model.advance | test_delete_transitions, test_delete_unknown_id_is_unsuccessful |
| 11 | One requester-managed ENI per subnet (interface type `vpc_endpoint`, description "VPC Endpoint Interface <id>"), private IP inside the subnet CIDR, never one of the 4 first addresses AWS reserves; ENIs go away with the endpoint | VPC guide "Subnet CIDR blocks"; PrivateLink "endpoint network interfaces" | handlers._validate_and_create | test_enis_inside_subnet_cidr |
| 12 | DnsEntries: a Regional name plus one zonal name per AZ | PrivateLink guide "DNS names for interface endpoints" | model.dns_entries | test_enis_inside_subnet_cidr |
| 13 | Faults: `RequestLimitExceeded` as HTTP 503 with EC2's XML error body, `InternalError` 500, `Unavailable` 503, `UnauthorizedOperation` 403 (a missing IAM action), `InvalidVpcEndpointId.NotFound` 400 (a describe lagging behind), added latency — by rate and operation, seeded; "after" faults apply the request then lose the response | EC2 API "Request throttling"; EC2 error response format | faults | test_fault_injection_* |
| 14 | Eventual consistency: for `lag` seconds after CreateVpcEndpoint the new id is `InvalidVpcEndpointId.NotFound` to DescribeVpcEndpoints by id, absent from filtered describes, NotFound to DeleteVpcEndpoints; a ClientToken replay still returns it | EC2 API "Eventual consistency" (describe right after create may not find the resource) | model.visible, handlers | *controls* test_eventual_consistency_lag |
| 15 | States `expired` (pendingAcceptance not decided within `expire` seconds), `failed` and `partial` (admin control: no API makes AWS report them) | VpcEndpoint State enum (PendingAcceptance, Pending, Available, Deleting, Deleted, Rejected, Failed, Expired, Partial) | model.advance, model.set_state | *controls* test_states_failed_expired_partial |
| 16 | Quota: interface endpoints per VPC (default 50, configurable): CreateVpcEndpoint beyond it → `VpcEndpointLimitExceeded` (HTTP 400); deleted endpoints free their slot | Service Quotas "Interface and Gateway Load Balancer endpoints per VPC"; EC2 error codes | model.check_quota | *controls* test_quota_per_vpc |
| 17 | The owner may reject a connection it already accepted (`available` → `rejected`) | PrivateLink guide "Accept or reject connection requests"; RejectVpcEndpointConnections | model.decide | *controls* test_owner_rejects_accepted_connection |
| 18 | Pagination: MaxResults/NextToken on DescribeVpcEndpoints, DescribeVpcEndpointServices, DescribeVpcEndpointConnections (≤ 1,000 per page), DescribeNetworkInterfaces and DescribeSubnets (MaxResults 5-1000; ENIs: not with NetworkInterfaceIds → `InvalidParameterCombination`); bad token → `InvalidPaginationToken` | EC2 API reference (MaxResults constraints), "Pagination" | pagination, handlers | *controls* test_pagination_*, *cli* test_cli_lists_endpoints_page_by_page |
| 19 | Tag filters (`tag:<key>`) return exactly the tagged endpoints, served from a tag index (no scan of every endpoint and tag) | EC2 API "Filter your resources" | model.tag_index, handlers | *controls* test_tag_filter_index |

Sandbox controls (no AWS counterpart; for the soak and crash tests): the admin API
``/_privnet/`` (sandbox/aws/admin.py lists the routes) and the same in-process methods of
``SandboxAws``: faults, delays and lag, quota, clock, accept/reject/force state, replace
ENI IPs, and the ground truth (``inventory()``, ``history()``) — *controls* test_admin_*.

Limitations: one process holds one moto state (moto's backends are module globals), so
two ``SandboxAws`` in one process share accounts and resources (each has its own faults,
delays, clock offset, quota and history). Faults are deterministic for a given seed and a
given sequence of requests. Filtered describes page over the filtered result (EC2 may
return short or empty pages with a NextToken; privnet follows NextToken either way).
"""

from sandbox.aws.state import (  # noqa: I001 - state first: the other modules import it
    ADMIN_ROLE_NAME,
    BOOTSTRAP_ACCOUNT_ID,
    CUSTOMER_ACCOUNT_ID,
    DEFAULT_ENDPOINTS_PER_VPC,
    ENDPOINTS_ACCOUNT_ID,
    ENDPOINTS_ROLE_NAME,
    SANDBOX_ACCESS_KEY,
    SANDBOX_SECRET_KEY,
    VPCE_HOSTED_ZONE_ID,
    Delays,
    Quotas,
)
from sandbox.aws.faults import FAULT_CODES, FaultRule
from sandbox.aws.handlers import install_privatelink
from sandbox.aws.seed import EndpointNetworkSeed, SandboxSeed, create_endpoint_network
from sandbox.aws.server import SandboxAws, UnknownEndpoint
from sandbox.aws.main import main

__all__ = [
    "ADMIN_ROLE_NAME",
    "BOOTSTRAP_ACCOUNT_ID",
    "CUSTOMER_ACCOUNT_ID",
    "DEFAULT_ENDPOINTS_PER_VPC",
    "ENDPOINTS_ACCOUNT_ID",
    "ENDPOINTS_ROLE_NAME",
    "FAULT_CODES",
    "SANDBOX_ACCESS_KEY",
    "SANDBOX_SECRET_KEY",
    "VPCE_HOSTED_ZONE_ID",
    "Delays",
    "EndpointNetworkSeed",
    "FaultRule",
    "Quotas",
    "SandboxAws",
    "SandboxSeed",
    "UnknownEndpoint",
    "create_endpoint_network",
    "install_privatelink",
    "main",
]
