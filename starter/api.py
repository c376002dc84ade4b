"""The HTTP API (FastAPI): what the dashboard backend calls.

Bearer tokens come from ``PRIVNET_API_TOKENS``: a JSON list (every token acts for every
org, as the dashboard backend does) or a JSON object ``{"<token>": ["org-a"] | "*"}``.
Order of refusals: 401 (no or unknown token) → 403 ``FORBIDDEN`` (the org is outside the
token's scope) → 400/422 (bad input, ``starter.validation``) → 404/409. Nothing is written
and no workflow starts before all of them passed. Every error is
``{"error": {"code": ..., "message": ...}}``.

Bodies are parsed here, not by FastAPI, so a malformed body can never be answered before
the token is checked, and every refusal has a named code. Each write (create, delete,
check) is logged as one structlog JSON line with the org, the connection and the token's
fingerprint (first 12 hex digits of its SHA-256), never the token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError

from settings import Settings
from starter import validation
from starter.client import Conflict, ConnectionsClient, NotFound, Unavailable
from workflows.contracts import (
    SERVICE_NAME_FORMAT,
    ConnectionStatus,
    ConnectionView,
    InvalidInput,
    PreflightResult,
    Reason,
    SetupFacts,
)

ClientFactory = Callable[[Settings], Awaitable[ConnectionsClient]]


class CreateConnection(BaseModel):
    """The create body (documentation; ``starter.validation`` enforces it)."""

    model_config = ConfigDict(extra="forbid")

    endpoint_service_name: str = Field(
        description=f"The customer's endpoint service name, {SERVICE_NAME_FORMAT}",
        examples=["com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0"],
        max_length=validation.SERVICE_NAME_MAX,
    )
    region: str | None = Field(None, description="Region of our endpoint; default the API's")
    connection_id: str | None = Field(
        None,
        description="Idempotency key and id (1-40 of a-z, 0-9, '-'); generated when omitted",
        max_length=validation.CONNECTION_ID_MAX,
    )
    display_name: str | None = Field(
        None, max_length=validation.DISPLAY_NAME_MAX, description="No control characters"
    )
    ports: list[int] = Field(
        default_factory=list, description="TCP ports to allow (at most 40); empty = all"
    )


class CheckConnection(BaseModel):
    """The pre-flight check body (documentation; ``starter.validation`` enforces it)."""

    model_config = ConfigDict(extra="forbid")

    endpoint_service_name: str = Field(description=SERVICE_NAME_FORMAT)
    region: str | None = Field(None, description="Region of our endpoint; default the API's")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Any:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message}},
        headers=headers,
    )


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not valid JSON"},
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token"},
    403: {"model": ErrorResponse, "description": "The org is outside the token's scope"},
    404: {"model": ErrorResponse, "description": "Unknown connection"},
    409: {"model": ErrorResponse, "description": "Limit reached or id conflict"},
    422: {"model": ErrorResponse, "description": "Invalid input (named code)"},
}


# ---------------------------------------------------------------------- tokens


def fingerprint(token: str) -> str:
    """What logs show instead of a token: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Caller:
    """The authenticated token: its fingerprint and the orgs it may act for."""

    fingerprint: str
    orgs: frozenset[str] | None  # None: every org

    def may_act_for(self, org: str) -> bool:
        return self.orgs is None or org in self.orgs


def token_scopes(settings: Settings) -> dict[str, frozenset[str] | None]:
    """token → orgs it may act for (None = every org), from ``PRIVNET_API_TOKENS``."""
    raw = settings.api_tokens
    if isinstance(raw, list):
        return {t: None for t in raw if t}
    scopes: dict[str, frozenset[str] | None] = {}
    for token, orgs in raw.items():
        if not token:
            continue
        if orgs == "*":
            scopes[token] = None
            continue
        for org in orgs:
            try:
                validation.org_id(org)
            except InvalidInput as err:
                raise ValueError(
                    f"PRIVNET_API_TOKENS: token {fingerprint(token)} names an invalid org: "
                    f"{err.message}"
                ) from None
        scopes[token] = frozenset(orgs)
    return scopes


def audit_log() -> Any:
    """The audit logger (looked up per call, so tests may reconfigure structlog)."""
    return structlog.get_logger("privnet.api")


async def default_client_factory(settings: Settings) -> ConnectionsClient:
    return await ConnectionsClient.connect(settings)


def create_app(
    settings: Settings, client_factory: ClientFactory = default_client_factory
) -> FastAPI:
    state: dict[str, ConnectionsClient] = {}
    scopes = [(t.encode(), fingerprint(t), orgs) for t, orgs in token_scopes(settings).items()]
    offered = sorted(settings.endpoint_networks)

    async def get_client() -> ConnectionsClient:
        if "client" not in state:
            state["client"] = await client_factory(settings)
        return state["client"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.clear()

    app = FastAPI(
        title="privnet",
        version="1",
        description="Private connections from task pods to customers' services over AWS "
        "PrivateLink, isolated per organization by Cilium.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    bearer = HTTPBearer(auto_error=False)

    async def authenticate(
        creds: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> Caller:
        if creds is None or creds.scheme.lower() != "bearer":
            raise ApiError(401, "UNAUTHORIZED", "send 'Authorization: Bearer <token>'")
        given = creds.credentials.encode()
        found: Caller | None = None
        for token, fp, orgs in scopes:  # compare against every token: no timing signal
            if hmac.compare_digest(given, token) and found is None:
                found = Caller(fp, orgs)
        if found is None:
            raise ApiError(401, "UNAUTHORIZED", "the bearer token is not valid")
        return found

    def authorize(caller: Caller, org: str, action: str, connection: str | None = None) -> None:
        if not caller.may_act_for(org):
            audit_log().warning(
                "api request refused",
                action=action,
                org_id=org,
                connection_id=connection,
                token=caller.fingerprint,
                code="FORBIDDEN",
            )
            raise ApiError(
                403,
                "FORBIDDEN",
                f"this token may not act for org {org!r}: use a token scoped to it "
                "(PRIVNET_API_TOKENS)",
            )

    def audit(
        action: str, caller: Caller, org: str, connection: str | None, **fields: Any
    ) -> None:
        audit_log().info(
            "api write",
            action=action,
            org_id=org,
            connection_id=connection,
            token=caller.fingerprint,
            **fields,
        )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Any:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(InvalidInput)
    async def _invalid(request: Request, exc: InvalidInput) -> Any:
        status = 400 if isinstance(exc, validation.BadRequest) else 422
        if exc.code == "BODY_TOO_LARGE":
            status = 413
        return _error(status, exc.code, exc.message)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Any:
        return _error(404, "NOT_FOUND", exc.message)

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> Any:
        return _error(409, exc.code, exc.message)

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> Any:
        return _error(503, "UNAVAILABLE", exc.message)

    @app.exception_handler(RPCError)
    async def _temporal_down(request: Request, exc: RPCError) -> Any:
        return _error(503, "UNAVAILABLE", f"Temporal did not answer ({exc}); try again")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Any:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return _error(422, "INVALID_INPUT", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 401: "UNAUTHORIZED"}.get(
            exc.status_code, "HTTP_ERROR"
        )
        return _error(exc.status_code, code, str(exc.detail))

    @app.post(
        "/v1/orgs/{org}/connections",
        status_code=202,
        response_model=ConnectionView,
        summary="Create a private connection (idempotent on connection_id)",
        openapi_extra=_body_doc(CreateConnection),
    )
    async def create_connection(
        org: str, request: Request, caller: Caller = Depends(authenticate)
    ) -> Any:
        authorize(caller, org, "create")
        body = validation.json_object(await request.body(), validation.CREATE_FIELDS)
        req = validation.create_request(
            org=org,
            endpoint_service_name=body["endpoint_service_name"],
            region_name=body.get("region"),
            connection=body.get("connection_id"),
            name=body.get("display_name"),
            port_list=body.get("ports"),
            default_region=settings.aws_region,
            offered_regions=offered,
        )
        client = await get_client()
        view = await client.create(
            org,
            req.endpoint_service_name,
            region=req.region,
            connection_id=req.connection_id,
            display_name=req.display_name,
            ports=req.ports,
        )
        audit(
            "create",
            caller,
            org,
            view.connection_id,
            service=req.endpoint_service_name,
            region=req.region,
            status=view.status,
            reason=view.reason,
        )
        if view.status == ConnectionStatus.REJECTED and view.reason == Reason.LIMIT_REACHED:
            return _error(
                409,
                Reason.LIMIT_REACHED.value,
                view.message or f"org {org!r} has reached its connection limit",
            )
        return JSONResponse(status_code=202, content=view.model_dump(mode="json"))

    @app.post(
        "/v1/orgs/{org}/connections:check",
        response_model=PreflightResult,
        summary="Pre-flight check: what creating this connection would find (creates nothing)",
        openapi_extra=_body_doc(CheckConnection),
    )
    async def check_connection(
        org: str, request: Request, caller: Caller = Depends(authenticate)
    ) -> Any:
        authorize(caller, org, "check")
        body = validation.json_object(await request.body(), validation.CHECK_FIELDS)
        req = validation.check_request(
            org=org,
            endpoint_service_name=body["endpoint_service_name"],
            region_name=body.get("region"),
            default_region=settings.aws_region,
        )
        client = await get_client()
        result = await client.check(org, req.endpoint_service_name, region=req.region)
        audit(
            "check",
            caller,
            org,
            None,
            service=req.endpoint_service_name,
            region=req.region,
            ok=result.ok,
            failed=[c.name for c in result.checks if not c.ok],
        )
        return result.model_dump(mode="json")

    @app.get(
        "/v1/orgs/{org}/connections",
        response_model=list[ConnectionView],
        summary="List an organization's connections",
    )
    async def list_connections(org: str, caller: Caller = Depends(authenticate)) -> Any:
        authorize(caller, org, "list")
        validation.org_id(org)
        client = await get_client()
        views = await client.list(org)
        return [v.model_dump(mode="json") for v in views]

    @app.get(
        "/v1/orgs/{org}/connections/{connection_id}",
        response_model=ConnectionView,
        summary="One connection with its timeline",
    )
    async def get_connection(
        org: str, connection_id: str, caller: Caller = Depends(authenticate)
    ) -> Any:
        authorize(caller, org, "get", connection_id)
        validation.org_id(org)
        validation.connection_id(connection_id)
        client = await get_client()
        view = await client.get(org, connection_id)
        return view.model_dump(mode="json")

    @app.delete(
        "/v1/orgs/{org}/connections/{connection_id}",
        status_code=202,
        response_model=ConnectionView,
        summary="Delete a connection (asynchronous: watch its status until Deleted)",
    )
    async def delete_connection(
        org: str, connection_id: str, caller: Caller = Depends(authenticate)
    ) -> Any:
        authorize(caller, org, "delete", connection_id)
        validation.org_id(org)
        validation.connection_id(connection_id)
        client = await get_client()
        view = await client.delete(org, connection_id)
        audit("delete", caller, org, connection_id, status=view.status)
        return JSONResponse(status_code=202, content=view.model_dump(mode="json"))

    @app.get(
        "/v1/setup",
        response_model=SetupFacts,
        summary="What the customer must configure: principal to allow, regions, AZ ids",
    )
    async def setup(
        region: str | None = None, org: str | None = None, caller: Caller = Depends(authenticate)
    ) -> Any:
        if org is not None:
            authorize(caller, org, "setup")
            validation.org_id(org)
        if region is not None:
            validation.region(region, offered)
        client = await get_client()
        facts = await client.setup(region=region, org_id=org)
        return facts.model_dump(mode="json")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def run(settings: Settings) -> None:
    import uvicorn

    from starter.client import open_store
    from worker import configure_logging

    configure_logging(settings.log_level)
    open_store(settings).dispose()  # migrate (PRIVNET_DB_AUTO_MIGRATE) before serving
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
    )
