"""Apply and delete privnet's Cilium policies with the official ``kubernetes`` client.

Activities are sync ``def`` methods (the worker runs them in its thread pool) of
``KubernetesActivities``, which holds an injected ``kubernetes.client.ApiClient``.

Apply is idempotent and converges: for every configured task namespace, GET the policy;
create it when absent; when its spec or privnet's labels differ, replace it carrying the
resourceVersion that was read (optimistic concurrency), retrying 409 conflicts a few
times; when nothing differs, write nothing. Delete treats 404 as success.

Error mapping (``ApplicationError.type``):

* invalid input → ``POLICY_INVALID`` (non-retryable), raised before any API call;
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
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

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
    ) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        try:
            self.namespaces = validate_task_namespaces(namespaces)
        except PolicyValidationError as e:
            raise ValueError(e.message) from None
        self.label_key = label_key
        self.conflict_retries = conflict_retries
        self.conflict_backoff = conflict_backoff  # seconds; doubles per attempt, max 10x

    @classmethod
    def from_settings(cls, settings: Settings) -> KubernetesActivities:
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
        return cls(api_client, list(settings.task_namespaces), settings.org_label_key)

    # ------------------------------------------------------------------ activities

    @activity.defn(name=ACT_APPLY_POLICIES)
    def apply_policies(self, input: ApplyPoliciesInput) -> ApplyPoliciesResult:
        """Make ``privnet-{connection_id}`` in every task namespace match the rendering."""
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
                    GROUP, VERSION, ns, PLURAL_NAMESPACED, _request_timeout=REQUEST_TIMEOUT,
                ),
                replace=partial(
                    self.custom.replace_namespaced_custom_object,
                    GROUP, VERSION, ns, PLURAL_NAMESPACED, name, _request_timeout=REQUEST_TIMEOUT,
                ),
                where=f"namespace {ns}",
            )
            if wrote:
                changed.append(ns)
            _heartbeat(ns)
        return ApplyPoliciesResult(namespaces=list(self.namespaces), changed=changed)

    @activity.defn(name=ACT_DELETE_POLICIES)
    def delete_policies(self, input: DeletePoliciesInput) -> None:
        """Delete ``privnet-{connection_id}`` from every task namespace; absent = success."""
        try:
            validate_org(input.org_id)
            name = policy_name(validate_connection(input.connection_id))
        except PolicyValidationError as e:
            raise _invalid(e) from None
        for ns in self.namespaces:
            self._call(
                partial(
                    self.custom.delete_namespaced_custom_object,
                    GROUP, VERSION, ns, PLURAL_NAMESPACED, name, _request_timeout=REQUEST_TIMEOUT,
                ),
                where=f"namespace {ns}",
                missing_ok=True,
            )
            _heartbeat(ns)

    # ------------------------------------------------------------------ helpers for CLI

    def list_policies(self, org_id: str) -> list[dict[str, Any]]:
        """privnet's policies of one org in every task namespace (by the org label)."""
        try:
            validate_org(org_id)
        except PolicyValidationError as e:
            raise _invalid(e) from None
        selector = f"{LABEL_ORG_ID}={org_id},{LABEL_MANAGED_BY}={MANAGED_BY}"
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
                GROUP, VERSION, PLURAL_CLUSTERWIDE, b, _request_timeout=REQUEST_TIMEOUT
            ),
            replace=lambda b: self.custom.replace_cluster_custom_object(
                GROUP, VERSION, PLURAL_CLUSTERWIDE, BASELINE_NAME, b,
                _request_timeout=REQUEST_TIMEOUT,
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
    ) -> bool:
        """GET → create if absent / replace with resourceVersion if different / nothing.
        Returns whether a write happened. Retries 409 conflicts ``conflict_retries`` times."""
        name = desired["metadata"]["name"]
        for attempt in range(self.conflict_retries + 1):
            current = self._call(get, where=where, missing_ok=True)
            try:
                if current is None:
                    self._call(partial(create, desired), where=where, conflict_ok=False)
                    return True
                if _up_to_date(current, desired):
                    return False
                body = _merged(current, desired)
                self._call(partial(replace, body), where=where, conflict_ok=False)
                return True
            except _Conflict:
                # Someone else wrote in between (or created it first): read again.
                time.sleep(min(self.conflict_backoff * 2**attempt, 10 * self.conflict_backoff))
        raise ApplicationError(
            f"policy {name} in {where} kept changing under us ({self.conflict_retries + 1} "
            "conflicting writes); will retry",
            type=RETRYABLE_TRANSIENT,
        )

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


def _heartbeat(detail: str) -> None:
    if activity.in_activity():
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
