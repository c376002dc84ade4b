"""Apply and delete privnet's Cilium policies with the official ``kubernetes`` client.

Activities are sync ``def`` methods (the worker runs them in its thread pool) of
``KubernetesActivities``, which holds an injected ``kubernetes.client.ApiClient``.

Apply is idempotent and converges: for every configured task namespace, GET the policy
(named by ``policy_name(org, connection)``); create it when absent; when it exists, check
it is ours (its ``privnet.dev/org-id`` and ``privnet.dev/connection-id`` labels name this
org and connection; otherwise fail ``NAME_CONFLICT`` and never touch it); when its spec or
privnet's labels differ, replace it carrying the resourceVersion that was read (optimistic
concurrency), retrying 409 conflicts a few times; when nothing differs, write nothing.

Delete converges too: GET; absent = done; another owner's object = nothing of ours is
there (done, logged, never deleted); ours = DELETE with preconditions (the uid and
resourceVersion just read), so an object replaced in between is never removed: on a 409
the object is read again and the decision made again.

Writes carry ``fieldManager=privnet``, so ``metadata.managedFields`` (and ``kubectl apply
--server-side`` conflicts) name privnet.

Error mapping (``ApplicationError.type``):

* invalid input → ``POLICY_INVALID`` (non-retryable), raised before any API call;
* an object with privnet's name but another owner → ``NAME_CONFLICT`` (non-retryable),
  naming the object, the owner found and the fix;
* 422 from the API server (the CRD refused the body) → ``POLICY_INVALID`` (non-retryable);
* 403 → ``KUBERNETES_FORBIDDEN`` (non-retryable), naming the RBAC objects of
  ``deploy/rbac.yaml`` to install;
* 404 on create (namespace or Cilium CRDs missing) → ``CONFIGURATION_ERROR``
  (non-retryable);
* 401, 409 after the retries, 429, 5xx, connection errors, timeouts → ``TRANSIENT``
  (retryable: Temporal's retry policy retries them).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.policy import (
    BASELINE_NAME,
    GROUP,
    LABEL_CONNECTION_ID,
    LABEL_MANAGED_BY,
    LABEL_ORG_ID,
    PLURAL_CLUSTERWIDE,
    PLURAL_NAMESPACED,
    VERSION,
    PolicyValidationError,
    render_baseline_policy,
    render_connection_policy,
    validate_connection,
    validate_org,
    validate_task_namespaces,
)
from activities.status_writes import StatusWriter, write_passing_status
from settings import Settings
from workflows.contracts import (
    ACT_APPLY_POLICIES,
    ACT_DELETE_POLICIES,
    DEFAULT_ORG_LABEL_KEY,
    MANAGED_BY,
    RETRYABLE_TRANSIENT,
    ApplyPoliciesInput,
    ApplyPoliciesResult,
    DeletePoliciesInput,
    Reason,
    policy_name,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
FIELD_MANAGER = "privnet"  # metadata.managedFields name privnet's writes

RBAC_HINT = (
    "install deploy/rbac.yaml: ServiceAccount privnet-worker bound to the Role "
    "privnet-policy-writer (get/list/watch/create/patch/update/delete on "
    "ciliumnetworkpolicies.cilium.io) in every task namespace, and the ClusterRole "
    "privnet-baseline-writer for ciliumclusterwidenetworkpolicies/privnet-baseline"
)
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read (seconds)


class KubernetesActivities:
    """Policy activities against one cluster's API server."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespaces: list[str],
        label_key: str = DEFAULT_ORG_LABEL_KEY,
        *,
        conflict_retries: int = 5,
        conflict_backoff: float = 0.05,
        status_writer: StatusWriter | None = None,
    ) -> None:
        self.api_client = api_client
        self._status_writer = status_writer  # the store, for the status apply passes through
        self.custom = client.CustomObjectsApi(api_client)
        try:
            self.namespaces = validate_task_namespaces(namespaces)
        except PolicyValidationError as e:
            raise ValueError(e.message) from None
        self.label_key = label_key
        self.conflict_retries = conflict_retries
        self.conflict_backoff = conflict_backoff  # seconds; doubles per attempt, max 10x

    @classmethod
    def from_settings(
        cls, settings: Settings, status_writer: StatusWriter | None = None
    ) -> KubernetesActivities:
        """``kube_url`` → plain HTTP(S) without auth (the sandbox); ``kubeconfig`` /
        ``kube_context`` → that kubeconfig; else the in-cluster service account."""
        if settings.kube_url:
            api_client = client.ApiClient(client.Configuration(host=settings.kube_url))
        elif settings.kubeconfig or settings.kube_context:
            api_client = config.new_client_from_config(
                config_file=settings.kubeconfig, context=settings.kube_context
            )
        else:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            api_client = client.ApiClient(configuration)
        return cls(
            api_client,
            list(settings.task_namespaces),
            settings.org_label_key,
            status_writer=status_writer,
        )

    # ------------------------------------------------------------------ activities

    @activity.defn(name=ACT_APPLY_POLICIES)
    def apply_policies(self, input: ApplyPoliciesInput) -> ApplyPoliciesResult:
        """Make the connection's policy in every task namespace match the rendering."""
        write_passing_status(self._status_writer, input.status)
        try:
            desired = {
                ns: render_connection_policy(
                    input.org_id,
                    input.connection_id,
                    input.ips,
                    input.ports,
                    namespace=ns,
                    label_key=self.label_key,
                )
                for ns in self.namespaces
            }
        except PolicyValidationError as e:
            raise _invalid(e) from None
        owner = (input.org_id, input.connection_id)
        changed: list[str] = []
        for ns, body in desired.items():
            name = body["metadata"]["name"]
            wrote = self._converge(
                body,
                get=partial(
                    self.custom.get_namespaced_custom_object,
                    GROUP, VERSION, ns, PLURAL_NAMESPACED, name, _request_timeout=REQUEST_TIMEOUT,
                ),
                create=partial(
                    self.custom.create_namespaced_custom_object,
                    GROUP, VERSION, ns, PLURAL_NAMESPACED, field_manager=FIELD_MANAGER,
                    _request_timeout=REQUEST_TIMEOUT,
                ),
                replace=partial(
                    self.custom.replace_namespaced_custom_object,
                    GROUP, VERSION, ns, PLURAL_NAMESPACED, name, field_manager=FIELD_MANAGER,
                    _request_timeout=REQUEST_TIMEOUT,
                ),
                where=f"namespace {ns}",
                owner=owner,
            )
            if wrote:
                changed.append(ns)
            _heartbeat(ns)
        return ApplyPoliciesResult(namespaces=list(self.namespaces), changed=changed)

    @activity.defn(name=ACT_DELETE_POLICIES)
    def delete_policies(self, input: DeletePoliciesInput) -> None:
        """Delete the connection's policy from every task namespace. Absent, or present but
        another owner's, both mean "nothing of ours is there": success."""
        try:
            org_id = validate_org(input.org_id)
            connection_id = validate_connection(input.connection_id)
        except PolicyValidationError as e:
            raise _invalid(e) from None
        name = policy_name(org_id, connection_id)
        for ns in self.namespaces:
            self._delete_owned(ns, name, (org_id, connection_id))
            _heartbeat(ns)

    # ------------------------------------------------------------------ helpers for CLI

    def list_policies(self, org_id: str | None = None) -> list[dict[str, Any]]:
        """privnet's policies (of one org, or of every org) in every task namespace, found
        by their labels; each carries ``privnet.dev/org-id`` and ``privnet.dev/connection-id``
        so a sweeper can tell which connection it belongs to."""
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        if org_id is not None:
            try:
                validate_org(org_id)
            except PolicyValidationError as e:
                raise _invalid(e) from None
            selector = f"{LABEL_ORG_ID}={org_id},{selector}"
        result: list[dict[str, Any]] = []
        for ns in self.namespaces:
            listing = self._call(
                partial(
                    self.custom.list_namespaced_custom_object,
                    GROUP, VERSION, ns, PLURAL_NAMESPACED, label_selector=selector,
                    _request_timeout=REQUEST_TIMEOUT,
                ),
                where=f"namespace {ns}",
            )
            items = listing.get("items", []) if isinstance(listing, dict) else []
            result.extend(items)
        return result

    def apply_baseline(self) -> bool:
        """Create or update the cluster baseline policy; True when something was written."""
        try:
            body = render_baseline_policy(self.namespaces, self.label_key)
        except PolicyValidationError as e:
            raise _invalid(e) from None
        return self._converge(
            body,
            get=lambda: self.custom.get_cluster_custom_object(
                GROUP, VERSION, PLURAL_CLUSTERWIDE, BASELINE_NAME,
                _request_timeout=REQUEST_TIMEOUT,
            ),
            create=lambda b: self.custom.create_cluster_custom_object(
                GROUP, VERSION, PLURAL_CLUSTERWIDE, b, field_manager=FIELD_MANAGER,
                _request_timeout=REQUEST_TIMEOUT,
            ),
            replace=lambda b: self.custom.replace_cluster_custom_object(
                GROUP, VERSION, PLURAL_CLUSTERWIDE, BASELINE_NAME, b,
                field_manager=FIELD_MANAGER, _request_timeout=REQUEST_TIMEOUT,
            ),
            where="the cluster",
        )

    # ------------------------------------------------------------------ internals

    def _converge(
        self,
        desired: dict[str, Any],
        *,
        get: Callable[[], Any],
        create: Callable[[dict[str, Any]], Any],
        replace: Callable[[dict[str, Any]], Any],
        where: str,
        owner: tuple[str, str] | None = None,
    ) -> bool:
        """GET → create if absent / refuse another owner's object / replace with the
        resourceVersion if different / nothing. Returns whether a write happened. Retries
        409 conflicts ``conflict_retries`` times (reading again each time)."""
        name = desired["metadata"]["name"]
        for attempt in range(self.conflict_retries + 1):
            current = self._call(get, where=where, missing_ok=True)
            try:
                if current is None:
                    self._call(partial(create, desired), where=where, conflict_ok=False)
                    return True
                if owner is not None and _owner(current) != owner:
                    raise _name_conflict(current, owner, where)
                if _up_to_date(current, desired):
                    return False
                body = _merged(current, desired)
                self._call(partial(replace, body), where=where, conflict_ok=False)
                return True
            except _Conflict:
                # Someone else wrote in between (or created it first): read again.
                self._backoff(attempt)
        raise ApplicationError(
            f"policy {name} in {where} kept changing under us ({self.conflict_retries + 1} "
            "conflicting writes); will retry",
            type=RETRYABLE_TRANSIENT,
        )

    def _delete_owned(self, namespace: str, name: str, owner: tuple[str, str]) -> None:
        """Delete ``namespace/name`` only while it is ours, with preconditions so an object
        replaced after the GET is never the one deleted."""
        where = f"namespace {namespace}"
        for attempt in range(self.conflict_retries + 1):
            current = cast("dict[str, Any] | None", self._call(
                partial(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace,
                        PLURAL_NAMESPACED, name, _request_timeout=REQUEST_TIMEOUT),
                where=where, missing_ok=True,
            ))
            if current is None:
                return
            found = _owner(current)
            if found != owner:
                _log().warning(
                    "policy %s/%s belongs to %s, not to %s/%s: left in place (nothing of "
                    "this connection's is there)", namespace, name, _describe(found), *owner,
                )
                return
            meta = current.get("metadata") or {}
            options = client.V1DeleteOptions(preconditions=client.V1Preconditions(
                uid=meta.get("uid"), resource_version=meta.get("resourceVersion")))
            try:
                self._call(
                    partial(self.custom.delete_namespaced_custom_object, GROUP, VERSION,
                            namespace, PLURAL_NAMESPACED, name, body=options,
                            _request_timeout=REQUEST_TIMEOUT),
                    where=where, missing_ok=True, conflict_ok=False,
                )
                return
            except _Conflict:
                self._backoff(attempt)  # changed or replaced since the GET: decide again
        raise ApplicationError(
            f"policy {name} in {where} kept changing while privnet deleted it "
            f"({self.conflict_retries + 1} failed preconditions); will retry",
            type=RETRYABLE_TRANSIENT,
        )

    def _backoff(self, attempt: int) -> None:
        time.sleep(min(self.conflict_backoff * 2**attempt, 10 * self.conflict_backoff))

    def _call(
        self,
        fn: Callable[[], T],
        *,
        where: str,
        missing_ok: bool = False,
        conflict_ok: bool = True,
    ) -> T | None:
        try:
            return fn()
        except ApiException as e:
            status = e.status or 0
            if status == 404 and missing_ok:
                return None
            if status == 409 and not conflict_ok:
                raise _Conflict() from e
            raise _api_error(e, where) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApplicationError(
                f"cannot reach the Kubernetes API server for {where}: {e}; will retry",
                type=RETRYABLE_TRANSIENT,
            ) from e


class _Conflict(Exception):
    pass


def _log() -> Any:
    return activity.logger if activity.in_activity() else log


def _owner(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(org, connection) from the object's privnet labels; None when it has neither."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    org, connection = labels.get(LABEL_ORG_ID), labels.get(LABEL_CONNECTION_ID)
    if org is None and connection is None:
        return None
    return (str(org), str(connection))


def _describe(owner: tuple[str, str] | None) -> str:
    if owner is None:
        return (f"another owner (it has no {LABEL_ORG_ID} / {LABEL_CONNECTION_ID} labels: "
                "not created by privnet)")
    return f"org {owner[0]!r}, connection {owner[1]!r}"


def _name_conflict(current: dict[str, Any], owner: tuple[str, str], where: str
                   ) -> ApplicationError:
    meta = current.get("metadata") or {}
    name = f"{meta.get('namespace') or ''}/{meta.get('name')}".lstrip("/")
    kubectl = f"kubectl delete ciliumnetworkpolicy -n {meta.get('namespace')} {meta.get('name')}"
    return ApplicationError(
        f"CiliumNetworkPolicy {name} in {where} already exists and belongs to "
        f"{_describe(_owner(current))}, not to org {owner[0]!r}, connection {owner[1]!r}: "
        "privnet never changes another owner's object. Fix: if that object is stale, delete "
        f"it ({kubectl}) and create the connection again; otherwise remove whatever "
        "created it under privnet's name",
        type=Reason.NAME_CONFLICT.value,
        non_retryable=True,
    )


def _heartbeat(detail: str) -> None:
    # A local activity's heartbeat goes nowhere (its workflow task heartbeats for it).
    if activity.in_activity() and not activity.info().is_local:
        activity.heartbeat(detail)


def _invalid(e: PolicyValidationError) -> ApplicationError:
    return ApplicationError(e.message, type=Reason.POLICY_INVALID.value, non_retryable=True)


def _status_message(e: ApiException) -> str:
    try:
        body = json.loads(e.body or "")
        return str(body.get("message") or e.reason)
    except (ValueError, AttributeError):
        return str(e.reason or e.body or "")


def _api_error(e: ApiException, where: str) -> ApplicationError:
    status = e.status or 0
    message = _status_message(e)
    if status == 403:
        return ApplicationError(
            f"the Kubernetes API refused privnet's worker in {where} (403 Forbidden: "
            f"{message}): {RBAC_HINT}",
            type=Reason.KUBERNETES_FORBIDDEN.value,
            non_retryable=True,
        )
    if status == 422:
        return ApplicationError(
            f"the Kubernetes API rejected the policy in {where} (422: {message}); the "
            "installed Cilium CRD does not accept privnet's policy: upgrade Cilium to a "
            "version serving cilium.io/v2",
            type=Reason.POLICY_INVALID.value,
            non_retryable=True,
        )
    if status == 404:
        return ApplicationError(
            f"not found in {where} (404: {message}): create the namespace or install "
            "Cilium (its CRDs), or fix PRIVNET_TASK_NAMESPACES",
            type=Reason.CONFIGURATION_ERROR.value,
            non_retryable=True,
        )
    if status == 400:
        return ApplicationError(
            f"the Kubernetes API refused the request in {where} (400: {message})",
            type=Reason.POLICY_APPLY_FAILED.value,
            non_retryable=True,
        )
    return ApplicationError(
        f"Kubernetes API error in {where} ({status}: {message}); will retry",
        type=RETRYABLE_TRANSIENT,
    )


def _managed_labels(obj: dict[str, Any]) -> dict[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    keys = (LABEL_ORG_ID, LABEL_CONNECTION_ID, LABEL_MANAGED_BY)
    return {k: v for k, v in labels.items() if k in keys}


def _up_to_date(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    want_labels = (desired.get("metadata") or {}).get("labels") or {}
    have_labels = (current.get("metadata") or {}).get("labels") or {}
    want_ann = (desired.get("metadata") or {}).get("annotations") or {}
    have_ann = (current.get("metadata") or {}).get("annotations") or {}
    return (
        current.get("spec") == desired.get("spec")
        and "specs" not in current
        and all(have_labels.get(k) == v for k, v in want_labels.items())
        and _managed_labels(current) == want_labels
        and all(have_ann.get(k) == v for k, v in want_ann.items())
    )


def _merged(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """``desired`` carrying the current resourceVersion and foreign labels/annotations."""
    body = copy.deepcopy(desired)
    cur_meta = current.get("metadata") or {}
    meta = body["metadata"]
    meta["resourceVersion"] = cur_meta.get("resourceVersion")
    keys = (LABEL_ORG_ID, LABEL_CONNECTION_ID, LABEL_MANAGED_BY)
    foreign = {k: v for k, v in (cur_meta.get("labels") or {}).items() if k not in keys}
    meta["labels"] = {**foreign, **meta.get("labels", {})}
    annotations = {**(cur_meta.get("annotations") or {}), **meta.get("annotations", {})}
    if annotations:
        meta["annotations"] = annotations
    return body
