"""The HTTP API (FastAPI): what the dashboard backend calls.

Bearer tokens come from ``PRIVNET_API_TOKENS`` (a JSON list); every error is
``{"error": {"code": ..., "message": ...}}`` with status 401, 404, 409 or 422.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from settings import Settings
from starter.client import Conflict, ConnectionsClient, NotFound
from workflows.contracts import (
    SERVICE_NAME_FORMAT,
    ConnectionStatus,
    ConnectionView,
    InvalidInput,
    Reason,
)

ClientFactory = Callable[[Settings], Awaitable[ConnectionsClient]]


class CreateConnection(BaseModel):
    endpoint_service_name: str = Field(
        description=f"The customer's endpoint service name, {SERVICE_NAME_FORMAT}",
        examples=["com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0"],
    )
    region: str | None = Field(None, description="Region of our endpoint; default the API's")
    connection_id: str | None = Field(
        None, description="Idempotency key and id; generated when omitted"
    )
    display_name: str | None = None
    ports: list[int] = Field(default_factory=list, description="TCP ports to allow; empty = all")


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


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token"},
    404: {"model": ErrorResponse, "description": "Unknown connection"},
    409: {"model": ErrorResponse, "description": "Limit reached or id conflict"},
    422: {"model": ErrorResponse, "description": "Invalid input"},
}


async def default_client_factory(settings: Settings) -> ConnectionsClient:
    return await ConnectionsClient.connect(settings)


def create_app(
    settings: Settings, client_factory: ClientFactory = default_client_factory
) -> FastAPI:
    state: dict[str, ConnectionsClient] = {}

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
    tokens = [t.encode() for t in settings.api_tokens if t]

    async def authorize(
        creds: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> None:
        if creds is None or creds.scheme.lower() != "bearer":
            raise ApiError(401, "UNAUTHORIZED", "send 'Authorization: Bearer <token>'")
        given = creds.credentials.encode()
        ok = False
        for t in tokens:  # compare against every token: no early exit timing signal
            ok = hmac.compare_digest(given, t) or ok
        if not ok:
            raise ApiError(401, "UNAUTHORIZED", "the bearer token is not valid")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Any:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(InvalidInput)
    async def _invalid(request: Request, exc: InvalidInput) -> Any:
        return _error(422, exc.code, exc.message)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Any:
        return _error(404, "NOT_FOUND", exc.message)

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> Any:
        return _error(409, exc.code, exc.message)

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

    auth = [Depends(authorize)]

    @app.post(
        "/v1/orgs/{org}/connections",
        status_code=202,
        response_model=ConnectionView,
        dependencies=auth,
        summary="Create a private connection (idempotent on connection_id)",
    )
    async def create_connection(org: str, body: CreateConnection) -> Any:
        client = await get_client()
        view = await client.create(
            org,
            body.endpoint_service_name,
            region=body.region,
            connection_id=body.connection_id,
            display_name=body.display_name,
            ports=body.ports,
        )
        if view.status == ConnectionStatus.REJECTED and view.reason == Reason.LIMIT_REACHED:
            return _error(
                409,
                Reason.LIMIT_REACHED.value,
                view.message or f"org {org!r} has reached its connection limit",
            )
        return JSONResponse(status_code=202, content=view.model_dump(mode="json"))

    @app.get(
        "/v1/orgs/{org}/connections",
        response_model=list[ConnectionView],
        dependencies=auth,
        summary="List an organization's connections",
    )
    async def list_connections(org: str) -> Any:
        client = await get_client()
        views = await client.list(org)
        return [v.model_dump(mode="json") for v in views]

    @app.get(
        "/v1/orgs/{org}/connections/{connection_id}",
        response_model=ConnectionView,
        dependencies=auth,
        summary="One connection with its timeline",
    )
    async def get_connection(org: str, connection_id: str) -> Any:
        client = await get_client()
        view = await client.get(org, connection_id)
        return view.model_dump(mode="json")

    @app.delete(
        "/v1/orgs/{org}/connections/{connection_id}",
        status_code=202,
        response_model=ConnectionView,
        dependencies=auth,
        summary="Delete a connection (asynchronous: watch its status until Deleted)",
    )
    async def delete_connection(org: str, connection_id: str) -> Any:
        client = await get_client()
        view = await client.delete(org, connection_id)
        return JSONResponse(status_code=202, content=view.model_dump(mode="json"))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def run(settings: Settings) -> None:
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
    )
