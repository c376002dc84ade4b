"""Sandbox Kubernetes: an API server emulator serving the Cilium policy CRDs over HTTP,
for the tests and the dev stack. Real clients are its referee: the official Python
client and ``kubectl`` (plain and server-side ``apply``, ``get -l``, ``get -w``,
``explain``, ``delete --dry-run=server``) work against it unchanged.

Modules, one concern each: ``resources`` (types, Status errors), ``store`` (objects,
resourceVersions, events, write semantics), ``validation`` + ``schema`` (decode, pruning,
defaulting, the vendored CRD schemas), ``apply`` (managedFields, server-side apply),
``patches``, ``selectors``, ``watch``, ``openapi``, ``faults``, ``http`` (routes, admin),
``server`` (``SandboxKube``: lifecycle and the in-process test API).

Fidelity table: what is modelled, where, and the test that holds it (tests/
test_sandbox_kube.py unless named; ``kubectl`` = tests/test_kubectl.py). Each row is
repeated next to the code that implements it.

| behaviour (upstream) | modelled | not modelled | code | test |
| --- | --- | --- | --- | --- |
| discovery | /version, /api, /api/v1, /apis, /apis/cilium.io[/v2], short names, categories | aggregated discovery (clients fall back) | http | test_discovery_for_the_official_client, kubectl test_kubectl_get_and_yaml_of_a_policy_privnet_applied |
| OpenAPI | /openapi/v3 index and per-group-version documents with the CRD schemas, operations, fieldValidation, patch types | /openapi/v2 (protobuf upstream), protobuf v3 | openapi | test_openapi_v3_documents, kubectl test_kubectl_explain_reads_the_crd_schema |
| CRUD | create / get / list / replace / delete, 201/200, AlreadyExists, NotFound, missing namespace, generateName | deletecollection, subresources (/status), finalizers, graceful deletion, namespace Terminating | store | test_crud_status_codes_and_server_fields |
| optimistic concurrency | stale resourceVersion → 409 Conflict, unconditional writes, no-op keeps the resourceVersion, generation on spec change | | store | test_optimistic_concurrency_and_no_op_writes |
| delete preconditions | uid / resourceVersion → 409 Conflict Status, nothing deleted | | store | test_delete_preconditions |
| patch | merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge → 415 | | patches | test_patch_formats |
| managedFields | FieldsV1 per (manager, operation); fieldManager or User-Agent | associative lists, "." entries, subresource field | apply | test_managed_fields_follow_updates |
| server-side apply | apply-patch+yaml, fieldManager required, 409 conflicts unless force, removal of dropped fields, no-op re-apply, create by apply | set lists are atomic | apply | test_server_side_apply_semantics, kubectl test_kubectl_server_side_apply_twice_and_a_conflicting_manager |
| unknown fields | pruned per structural schema; fieldValidation Strict → 400, Warn → Warning header, Ignore | | schema, validation | test_unknown_fields_are_pruned_or_refused |
| schema validation | the CRD's openAPIV3Schema (types, enums, patterns, formats, bounds, oneOf/anyOf), metadata names and labels → 422 Invalid | CEL rules (none in these CRDs) | schema, validation | test_schema_validation_agrees_with_jsonschema (test_sandbox_kube_schema), test_crd_invalid_bodies_are_422 |
| label / field selectors | =, ==, !=, in, notin, exists, !exists; metadata.name / metadata.namespace | other field selectors (400) | selectors | test_label_and_field_selectors, kubectl test_kubectl_get_with_a_set_based_selector |
| watch | chunked JSON events, resourceVersion start, 410 Expired, bookmarks, selector transitions, timeoutSeconds | watch-list (sendInitialEvents) | watch | test_watch_streams_changes, kubectl test_kubectl_get_watch_sees_privnet_change |
| dry run | dryRun=All on every write | | store | test_dry_run_writes_nothing, kubectl test_kubectl_delete_dry_run_server |
| faults | one-shot errors; seeded rate-based 409 / 500 / lost response / latency | | faults | test_seeded_faults_and_admin_surface |
| admin | GET /_sandbox/objects, GET/POST/DELETE /_sandbox/faults, GET /_sandbox/stats | | http | test_seeded_faults_and_admin_surface |
| restart | snapshot / restore keep uids and resourceVersions | | server | test_snapshot_restore_keeps_identity |
| not modelled | authentication and RBAC (use ``inject_error(403)``), pagination (one page), Table output, CBOR/protobuf, admission webhooks | | | |

Why not ``kmock``: its emulator mutates the store before any reaction runs (it cannot
refuse a stale resourceVersion or an invalid body before storing it), treats every PATCH
as a naive merge, has no PUT, and is asyncio-bound while the client is synchronous.

Standalone: ``python -m sandbox.kube --port 8001 [--namespace tasks ...]``.
"""

from sandbox.kube.faults import FaultConfig
from sandbox.kube.resources import DEFAULT_NAMESPACES, ApiError
from sandbox.kube.server import SandboxKube

__all__ = ["DEFAULT_NAMESPACES", "ApiError", "FaultConfig", "SandboxKube"]
