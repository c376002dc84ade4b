"""Render and validate privnet's Cilium policies. Pure: no I/O, no clients.

Two kinds of policy enforce isolation between organizations (DESIGN.md, "Isolation"):

* ``render_baseline_policy`` — one ``CiliumClusterwideNetworkPolicy`` ``privnet-baseline``
  selecting *every* pod of the task namespaces (by namespace, not by org label, so a task
  pod without the org label is still in default-deny). It allows egress to the internet
  (``0.0.0.0/0`` except the private ranges) and DNS to kube-dns. It never uses
  ``egressDeny``: Cilium deny rules beat every allow, so no per-org /32 could open.
* ``render_connection_policy`` — one ``CiliumNetworkPolicy`` per connection and task
  namespace, named from both the org and the connection id
  (``workflows.contracts.policy_name``: connection ids are unique only within an org),
  labelled with both (the labels decide ownership), selecting only pods labelled with the
  org id and allowing egress only to that connection's endpoint IPs as host /32s.

Every input is validated before anything is rendered; a refusal raises
``PolicyValidationError`` (code ``POLICY_INVALID``) whose message names the fix.

Endpoint IP rule: an endpoint IP is the private IPv4 address of a PrivateLink ENI, so it
must be a single host address inside one of the ranges the baseline blocks
(``PRIVATE_RANGES``). A public address would be reachable by every org through the
baseline anyway, so accepting it would silently give no isolation; addresses that can
never be an ENI IP (unspecified, loopback, multicast, link-local, broadcast, the network
address of a private range) and any prefix broader than /32 are refused. IPv6 is refused as
unsupported (the baseline and the endpoints are IPv4-only).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any

from workflows.contracts import (
    DEFAULT_ORG_LABEL_KEY,
    MANAGED_BY,
    InvalidInput,
    Reason,
    policy_name,
    validate_connection_id,
    validate_org_id,
)

API_VERSION = "cilium.io/v2"
GROUP = "cilium.io"
VERSION = "v2"
KIND_NAMESPACED = "CiliumNetworkPolicy"
KIND_CLUSTERWIDE = "CiliumClusterwideNetworkPolicy"
PLURAL_NAMESPACED = "ciliumnetworkpolicies"
PLURAL_CLUSTERWIDE = "ciliumclusterwidenetworkpolicies"

BASELINE_NAME = "privnet-baseline"

# Labels on the policy objects themselves (for listing / ownership), independent of the
# pod label key used in selectors.
LABEL_ORG_ID = "privnet.dev/org-id"
LABEL_CONNECTION_ID = "privnet.dev/connection-id"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_ORG_LABEL_KEY = "privnet.dev/org-label-key"

# Cilium's label for a pod's namespace (source-prefixed, as Cilium stores it).
NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"

# Everything task pods must not reach unless a per-connection policy opens a /32.
PRIVATE_RANGES: tuple[str, ...] = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
)
_PRIVATE_NETS = tuple(ipaddress.IPv4Network(c) for c in PRIVATE_RANGES)
# Ranges an endpoint (ENI) IP may be in: the private ranges minus link-local.
_ENDPOINT_NETS = tuple(n for n in _PRIVATE_NETS if not n.is_link_local)

# Namespaces privnet must never put into default-deny.
_SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})

DNS_1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_1123_SUBDOMAIN_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

MAX_PORTS = 40  # the CRD's maxItems for toPorts[].ports
MAX_IPS = 1000  # sanity bound; an endpoint has one IP per AZ


class PolicyValidationError(InvalidInput):
    """A policy input privnet refuses to render; ``message`` names the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.POLICY_INVALID.value, message)


# --------------------------------------------------------------------------- validation


def validate_label_key(label_key: str) -> str:
    """A Kubernetes label key: ``[prefix/]name`` (prefix a DNS subdomain ≤ 253)."""
    if not isinstance(label_key, str) or not label_key:
        raise PolicyValidationError(
            "the org label key is empty, which would make an empty pod selector (every pod): "
            f"set PRIVNET_ORG_LABEL_KEY to a label key such as {DEFAULT_ORG_LABEL_KEY!r}"
        )
    prefix, _, name = label_key.rpartition("/")
    if "/" in label_key and (
        not prefix or len(prefix) > 253 or not _DNS_1123_SUBDOMAIN_RE.match(prefix)
    ):
        raise PolicyValidationError(
            f"org label key {label_key!r} has an invalid prefix: use a DNS subdomain such as "
            f"'privnet.dev', e.g. {DEFAULT_ORG_LABEL_KEY!r}"
        )
    if not _LABEL_NAME_RE.match(name):
        raise PolicyValidationError(
            f"org label key {label_key!r} is not a valid label key: the name part must be 1-63 "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    return label_key


def validate_org(org_id: str) -> str:
    try:
        return validate_org_id(org_id)
    except InvalidInput as e:
        raise PolicyValidationError(e.message) from None


def validate_connection(connection_id: str) -> str:
    try:
        return validate_connection_id(connection_id)
    except InvalidInput as e:
        raise PolicyValidationError(e.message) from None


def validate_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not DNS_1123_LABEL_RE.match(namespace):
        raise PolicyValidationError(
            f"namespace {namespace!r} is not a valid Kubernetes namespace name: use 1-63 "
            "lowercase letters, digits or '-', starting and ending with a letter or digit "
            "(fix PRIVNET_TASK_NAMESPACES)"
        )
    return namespace


def validate_task_namespaces(namespaces: Iterable[str]) -> list[str]:
    if isinstance(namespaces, str):
        raise PolicyValidationError(
            f"task namespaces must be a list of names, got the string {namespaces!r}: "
            'set PRIVNET_TASK_NAMESPACES as JSON, e.g. \'["tasks"]\''
        )
    result = sorted({validate_namespace(n) for n in namespaces})
    if not result:
        raise PolicyValidationError(
            "no task namespace configured: set PRIVNET_TASK_NAMESPACES, e.g. '[\"tasks\"]'"
        )
    system = _SYSTEM_NAMESPACES.intersection(result)
    if system:
        raise PolicyValidationError(
            f"{sorted(system)} cannot be task namespaces: the baseline would cut system pods "
            "off the network; list only the namespaces where task pods run"
        )
    return result


def normalize_endpoint_ip(value: str) -> str:
    """The dotted IPv4 host address of one endpoint IP (``a.b.c.d`` or ``a.b.c.d/32``)."""
    if not isinstance(value, str) or not value.strip():
        raise PolicyValidationError(
            f"endpoint IP {value!r} is not an IP address: pass the ENI's private IPv4 address"
        )
    text = value.strip()
    host, slash, prefix = text.partition("/")
    if slash:
        if prefix != "32":
            raise PolicyValidationError(
                f"endpoint IP {value!r} is a prefix: privnet allows only single hosts (/32); "
                "pass each endpoint ENI's private IPv4 address"
            )
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise PolicyValidationError(
            f"endpoint IP {value!r} is not an IPv4 address: pass the ENI's private IPv4 "
            "address, e.g. 10.0.1.23"
        ) from None
    if ip.version != 4:
        raise PolicyValidationError(
            f"endpoint IP {value!r} is IPv6, which privnet does not support: use the "
            "endpoint's IPv4 address (IpAddressType ipv4)"
        )
    assert isinstance(ip, ipaddress.IPv4Address)
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local:
        raise PolicyValidationError(
            f"endpoint IP {value!r} is an unspecified, loopback, multicast or link-local "
            "address, never an endpoint ENI's IP: pass the ENI's private IPv4 address"
        )
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        raise PolicyValidationError(f"endpoint IP {value!r} is the broadcast address")
    net = next((n for n in _ENDPOINT_NETS if ip in n), None)
    if net is None:
        raise PolicyValidationError(
            f"endpoint IP {value!r} is not private: endpoint ENI IPs lie in "
            f"{', '.join(PRIVATE_RANGES[:4])}; a public address is already reachable by "
            "every organization, so it cannot be isolated"
        )
    if ip in (net.network_address, net.broadcast_address):
        raise PolicyValidationError(
            f"endpoint IP {value!r} is the network or broadcast address of {net}, never an "
            "ENI IP: pass the ENI's private IPv4 address"
        )
    return str(ip)


def validate_endpoint_ips(ips: Sequence[str]) -> list[str]:
    if isinstance(ips, str):
        raise PolicyValidationError(
            f"endpoint IPs must be a list of addresses, got the string {ips!r}"
        )
    ips = list(ips)
    if not ips:
        raise PolicyValidationError(
            "no endpoint IP: a policy needs at least one endpoint ENI IP (wait until the "
            "endpoint is available and its network interfaces have private IPs)"
        )
    if len(ips) > MAX_IPS:
        raise PolicyValidationError(f"{len(ips)} endpoint IPs exceed the limit of {MAX_IPS}")
    seen: set[str] = set()
    for raw in ips:
        ip = normalize_endpoint_ip(raw)
        if ip in seen:
            raise PolicyValidationError(
                f"endpoint IP {ip} is listed twice: pass each endpoint IP once"
            )
        seen.add(ip)
    return sorted(seen, key=lambda s: ipaddress.IPv4Address(s))


def validate_ports(ports: Iterable[int]) -> list[int]:
    result: set[int] = set()
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise PolicyValidationError(
                f"port {p!r} is invalid: use TCP port numbers between 1 and 65535"
            )
        result.add(p)
    if len(result) > MAX_PORTS:
        raise PolicyValidationError(
            f"{len(result)} ports exceed Cilium's limit of {MAX_PORTS} per rule: "
            "list fewer ports or none (all ports)"
        )
    return sorted(result)


# --------------------------------------------------------------------------- rendering


def policy_labels(org_id: str, connection_id: str) -> dict[str, str]:
    return {
        LABEL_ORG_ID: org_id,
        LABEL_CONNECTION_ID: connection_id,
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def render_connection_policy(
    org_id: str,
    connection_id: str,
    ips: Sequence[str],
    ports: Iterable[int] = (),
    *,
    namespace: str,
    label_key: str = DEFAULT_ORG_LABEL_KEY,
) -> dict[str, Any]:
    """The ``CiliumNetworkPolicy`` letting org ``org_id``'s pods in ``namespace`` reach the
    connection's endpoint IPs (each as a /32), optionally only on the given TCP ports."""
    org_id = validate_org(org_id)
    connection_id = validate_connection(connection_id)
    namespace = validate_namespace(namespace)
    label_key = validate_label_key(label_key)
    hosts = validate_endpoint_ips(ips)
    port_list = validate_ports(ports)

    rule: dict[str, Any] = {"toCIDR": [f"{ip}/32" for ip in hosts]}
    if port_list:
        rule["toPorts"] = [{"ports": [{"port": str(p), "protocol": "TCP"} for p in port_list]}]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND_NAMESPACED,
        "metadata": {
            "name": policy_name(org_id, connection_id),
            "namespace": namespace,
            "labels": policy_labels(org_id, connection_id),
        },
        "spec": {
            "description": (
                f"privnet: pods of organization {org_id} may reach the PrivateLink endpoint "
                f"of connection {connection_id}"
            ),
            "endpointSelector": {"matchLabels": {label_key: org_id}},
            "egress": [rule],
        },
    }


def render_baseline_policy(
    task_namespaces: Iterable[str], label_key: str = DEFAULT_ORG_LABEL_KEY
) -> dict[str, Any]:
    """The ``CiliumClusterwideNetworkPolicy`` putting every task pod in default-deny egress
    while allowing the internet (not the private ranges) and DNS to kube-dns."""
    namespaces = validate_task_namespaces(task_namespaces)
    label_key = validate_label_key(label_key)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND_CLUSTERWIDE,
        "metadata": {
            "name": BASELINE_NAME,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY},
            "annotations": {ANNOTATION_ORG_LABEL_KEY: label_key},
        },
        "spec": {
            "description": (
                "privnet baseline: task pods may reach the internet and DNS but no private "
                "range; per-connection policies open single endpoint IPs per organization"
            ),
            "endpointSelector": {
                "matchExpressions": [
                    {"key": NAMESPACE_LABEL, "operator": "In", "values": namespaces}
                ]
            },
            "egress": [
                {"toCIDRSet": [{"cidr": "0.0.0.0/0", "except": list(PRIVATE_RANGES)}]},
                {
                    "toEndpoints": [
                        {
                            "matchLabels": {
                                NAMESPACE_LABEL: "kube-system",
                                "k8s:k8s-app": "kube-dns",
                            }
                        }
                    ],
                    "toPorts": [
                        {
                            "ports": [
                                {"port": "53", "protocol": "UDP"},
                                {"port": "53", "protocol": "TCP"},
                            ]
                        }
                    ],
                },
            ],
        },
    }
