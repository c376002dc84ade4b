"""OpenAPI v3 documents, as the API server publishes them (fidelity row "OpenAPI").

``GET /openapi/v3`` lists one document per group-version (``api/v1``,
``apis/cilium.io/v2``), each at ``/openapi/v3/<gv>?hash=<sha512>``. A document has the
resource paths with their operations (``x-kubernetes-action``,
``x-kubernetes-group-version-kind``, the query parameters, the patch content types a custom
resource accepts) and the component schemas: the CRD's ``openAPIV3Schema`` with
``metadata`` referring to ``ObjectMeta`` (``io.cilium.v2.CiliumNetworkPolicy``), its list
kind, and minimal meta.k8s.io schemas.

That is what kubectl reads: ``kubectl explain`` renders the schemas; ``kubectl apply``
finds ``fieldValidation`` among the PATCH parameters, so it validates on the server
(``fieldValidation=Strict``) instead of downloading ``/openapi/v2``; and it sees no
strategic-merge content type, so it patches custom resources with merge patches.

Not modelled: ``/openapi/v2`` (served upstream as protobuf only; 404 here, which kubectl
only reads when v3 is missing), protobuf encodings of v3.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import cache
from typing import Any

from sandbox.kube import schema
from sandbox.kube.resources import (
    CCNP,
    CNP,
    GROUP_VERSION,
    NAMESPACES,
    SERVER_VERSION,
    ResourceType,
)

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
RESOURCES_BY_GV = {"api/v1": (NAMESPACES,), f"apis/{GROUP_VERSION}": (CNP, CCNP)}
PATCH_TYPES = ("application/apply-patch+yaml", "application/json-patch+json",
               "application/merge-patch+json")


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def schema_name(rt: ResourceType, kind: str | None = None) -> str:
    if not rt.group:
        return f"io.k8s.api.core.{rt.version}.{kind or rt.kind}"
    reversed_group = ".".join(reversed(rt.group.split(".")))
    return f"{reversed_group}.{rt.version}.{kind or rt.kind}"


def _gvk(rt: ResourceType, kind: str | None = None) -> dict[str, str]:
    return {"group": rt.group, "version": rt.version, "kind": kind or rt.kind}


def _param(name: str, description: str, kind: str = "string", where: str = "query"
           ) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": where, "description": description,
                             "schema": {"type": kind, "uniqueItems": True}}
    if where == "path":
        param["required"] = True
    return param


WRITE_PARAMS = [
    _param("dryRun", "When present, indicates that modifications should not be persisted. "
           "Valid values: All"),
    _param("fieldManager", "a name associated with the actor or entity that is making these "
           "changes"),
    _param("fieldValidation", "how the server should respond to unknown or duplicate fields "
           "in the object: Ignore, Warn (default) or Strict"),
]
LIST_PARAMS = [
    _param("allowWatchBookmarks", "requests watch events with type BOOKMARK", "boolean"),
    _param("fieldSelector", "restrict the list of returned objects by their fields"),
    _param("labelSelector", "restrict the list of returned objects by their labels"),
    _param("resourceVersion", "where to start the list or watch"),
    _param("timeoutSeconds", "timeout for the list/watch call", "integer"),
    _param("watch", "watch for changes to the described resources", "boolean"),
]


def _operation(rt: ResourceType, action: str, verb: str, params: list[dict[str, Any]],
               body: tuple[str, ...] = (), response: str | None = None) -> dict[str, Any]:
    scope = "Namespaced" if rt.namespaced else ""
    op: dict[str, Any] = {
        "description": f"{action} {rt.kind}",
        "operationId": f"{verb}{scope}{rt.kind}",
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {
            "application/json": {"schema": _ref(response or schema_name(rt))}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(rt),
    }
    if body:
        op["requestBody"] = {"required": True, "content": {
            t: {"schema": _ref(f"{META}.Patch" if action == "patch" else schema_name(rt))}
            for t in body}}
    return op


def _paths(rt: ResourceType) -> dict[str, Any]:
    base = f"/apis/{rt.api_version}" if rt.group else f"/api/{rt.version}"
    collection = (f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced
                  else f"{base}/{rt.plural}")
    scope = [_param("namespace", "object name and auth scope", where="path")] \
        if rt.namespaced else []
    name = [_param("name", f"name of the {rt.kind}", where="path")]
    list_kind = schema_name(rt, f"{rt.kind}List")
    paths = {
        collection: {
            "get": _operation(rt, "list", "list", LIST_PARAMS, response=list_kind),
            "post": _operation(rt, "post", "create", WRITE_PARAMS, ("application/json",
                                                                    "application/yaml")),
            "parameters": scope,
        },
        f"{collection}/{{name}}": {
            "get": _operation(rt, "get", "read", []),
            "put": _operation(rt, "put", "replace", WRITE_PARAMS, ("application/json",
                                                                   "application/yaml")),
            "patch": _operation(rt, "patch", "patch", [
                *WRITE_PARAMS, _param("force", "force apply requests (re-acquire conflicting "
                                      "fields owned by other managers)", "boolean")],
                PATCH_TYPES),
            "delete": _operation(rt, "delete", "delete", [_param("dryRun", "Valid values: All")],
                                 response=f"{META}.Status"),
            "parameters": scope + name,
        },
    }
    if rt.namespaced:
        paths[f"{base}/{rt.plural}"] = {"get": _operation(
            rt, "list", "listForAllNamespaces", LIST_PARAMS, response=list_kind)}
    return paths


def _kind_schemas(rt: ResourceType) -> dict[str, Any]:
    crd_schema = schema.schema_for(rt)
    if crd_schema is None:
        body: dict[str, Any] = {
            "description": f"{rt.kind} (built in; only metadata is modelled)",
            "type": "object",
            "properties": {"spec": {"type": "object", "properties": {
                "finalizers": {"type": "array", "items": {"type": "string"}}}},
                "status": {"type": "object", "properties": {"phase": {"type": "string"}}}},
        }
    else:
        body = copy.deepcopy(crd_schema)
    props = body.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "description": "APIVersion defines the "
                           "versioned schema of this representation of an object."}
    props["kind"] = {"type": "string", "description": "Kind is a string value representing "
                     "the REST resource this object represents."}
    props["metadata"] = {"allOf": [_ref(f"{META}.ObjectMeta")], "default": {},
                         "description": "Standard object's metadata."}
    body["x-kubernetes-group-version-kind"] = [_gvk(rt)]
    listing = {
        "description": f"{rt.kind}List is a list of {rt.kind}",
        "type": "object", "required": ["items"],
        "properties": {
            "apiVersion": props["apiVersion"], "kind": props["kind"],
            "items": {"type": "array", "items": _ref(schema_name(rt))},
            "metadata": {"allOf": [_ref(f"{META}.ListMeta")], "default": {}},
        },
        "x-kubernetes-group-version-kind": [_gvk(rt, f"{rt.kind}List")],
    }
    return {schema_name(rt): body, schema_name(rt, f"{rt.kind}List"): listing}


def _meta_schemas() -> dict[str, Any]:
    string_map = {"type": "object", "additionalProperties": {"type": "string", "default": ""}}
    return {
        f"{META}.ObjectMeta": {
            "description": "ObjectMeta is metadata that all persisted resources must have.",
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "Name must be unique within a "
                         "namespace."},
                "generateName": {"type": "string"},
                "namespace": {"type": "string"},
                "uid": {"type": "string"},
                "resourceVersion": {"type": "string"},
                "generation": {"type": "integer", "format": "int64"},
                "creationTimestamp": {"type": "string", "format": "date-time"},
                "deletionTimestamp": {"type": "string", "format": "date-time"},
                "labels": {**string_map, "description": "Map of string keys and values that "
                           "can be used to organize and categorize objects."},
                "annotations": {**string_map, "description": "Unstructured key value map."},
                "finalizers": {"type": "array", "items": {"type": "string"}},
                "managedFields": {"type": "array", "items": {"type": "object"},
                                  "description": "Which manager set which fields."},
                "ownerReferences": {"type": "array", "items": {"type": "object"}},
            },
        },
        f"{META}.ListMeta": {"type": "object", "properties": {
            "resourceVersion": {"type": "string"}, "continue": {"type": "string"}}},
        f"{META}.Patch": {"type": "object", "description": "Patch is provided to give a "
                          "concrete name and type to the Kubernetes PATCH request body."},
        f"{META}.Status": {"type": "object", "properties": {
            "code": {"type": "integer"}, "message": {"type": "string"},
            "reason": {"type": "string"}, "status": {"type": "string"}}},
    }


@cache
def group_version_document(gv: str) -> bytes:
    """The OpenAPI v3 document of one group-version (``api/v1``, ``apis/cilium.io/v2``)."""
    resources = RESOURCES_BY_GV[gv]
    paths: dict[str, Any] = {}
    schemas = _meta_schemas()
    for rt in resources:
        paths.update(_paths(rt))
        schemas.update(_kind_schemas(rt))
    doc = {"openapi": "3.0.0",
           "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
           "paths": paths, "components": {"schemas": schemas}}
    return json.dumps(doc).encode()


@cache
def index_document() -> bytes:
    paths = {}
    for gv in RESOURCES_BY_GV:
        digest = hashlib.sha512(group_version_document(gv)).hexdigest().upper()
        paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
    return json.dumps({"paths": paths}).encode()
