"""`make_app(service)`: the FastAPI app every service exposes (health, ready, config, topics, metrics).

State-changing endpoints (PUT /config and the service's own POST/PUT/DELETE routes) depend on
`require_token`: when the service has an `api_token`, a missing bearer token gets 401 and a wrong
one 403. `/healthz` and `/readyz` stay open. Secrets are never shown by `/config`.

The OpenAPI document says what the running service does: every route's request and response
models, its error statuses (`errors(404, 409)`: bodies are `ErrorBody`), and the bearer scheme
with its 401/403 only when a token is configured (without one those routes are open).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from derbus.errors import ConfigError
from derbus.service import Service
from derbus.settings import ServiceSettings, describe_validation_error, redacted
from derbus.topics import CATALOGUE

_bearer = HTTPBearer(auto_error=False)


class ErrorBody(BaseModel):
    """A refused request: why (a message, or for 422 the invalid fields)."""

    detail: str | dict[str, Any] | list[Any] = Field(description="the reason")


_ERROR_TEXT = {
    400: "malformed request",
    401: "missing bearer token (a token is configured)",
    403: "wrong bearer token",
    404: "not found (named)",
    409: "conflicts with the current state (named)",
    413: "too large",
    415: "unsupported media type",
    422: "invalid (the field and why)",
    503: "not available now (why)",
    504: "no answer in time",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route's error statuses, each answered with an `ErrorBody`."""
    return {
        code: {"model": ErrorBody, "description": _ERROR_TEXT.get(code, "error")} for code in codes
    }


def content(media_type: str, description: str) -> dict[str, Any]:
    """A `responses=` entry for a body that is not JSON (text, CSV, PNG, an event stream)."""
    schema: dict[str, Any] = {"type": "string"}
    if media_type.startswith("image/"):
        schema["format"] = "binary"
    elif media_type == "text/event-stream":  # each event, as its fields
        schema = {"type": "object", "properties": {
            "event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"},
            "retry": {"type": "integer"}}}  # fmt: skip
    return {"description": description, "content": {media_type: {"schema": schema}}}


class Health(BaseModel):
    """Liveness of a service."""

    service: str
    status: str = Field(description="online, degraded (or offline)")
    reason: str | None = Field(description="why degraded")


class Readiness(BaseModel):
    """Readiness of a service (200 ready, 503 not yet)."""

    service: str
    ready: bool
    bus_connected: bool


class ConfigView(BaseModel):
    """A service's settings (secrets redacted) and which fields `PUT /config` may change."""

    config: dict[str, Any]
    mutable: list[str] = Field(default_factory=list)


class ConfigChanged(BaseModel):
    """The settings after a change (secrets redacted)."""

    config: dict[str, Any]


class Subscription(BaseModel):
    """A topic filter the service subscribes to."""

    key: str
    filter: str
    model: str
    qos: int
    handler: str


class Publication(BaseModel):
    """A catalogue topic the service publishes."""

    key: str
    topic: str
    model: str
    qos: int
    retain: bool


class TopicsView(BaseModel):
    """What a service subscribes to and publishes."""

    subscribes: list[Subscription]
    publishes: list[Publication]


def get_service(request: Request) -> Service[Any, Any]:
    """The service behind this app (FastAPI dependency)."""
    service: Service[Any, Any] = request.app.state.service
    return service


ServiceDep = Annotated[Service[Any, Any], Depends(get_service)]


def require_token(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Bearer-token check for endpoints that change state (no-op when no token is configured)."""
    token: SecretStr | None = service.settings.api_token
    if token is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status_code=401,
            detail="missing bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise HTTPException(status_code=403, detail="invalid token")


TokenDep = Annotated[None, Depends(require_token)]


def redacted_config(service: Service[Any, Any]) -> dict[str, Any]:
    """The service's settings as JSON, secrets replaced by `**********`."""
    return redacted(service.settings)


def make_app(service: Service[Any, Any], *, manage_lifecycle: bool = True) -> FastAPI:
    """Build the FastAPI app of a service.

    Args:
        service: the service to expose.
        manage_lifecycle: start and stop the service with the app (uvicorn's lifespan).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await service.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await service.stop()

    app = FastAPI(
        title=f"derbus {service.name}",
        version=service.version,
        lifespan=lifespan,
        description=f"Health, configuration and control API of the derbus {service.name} service.",
    )
    app.state.service = service

    @app.get("/healthz", tags=["health"], response_model=Health)
    def healthz() -> Health:
        """Liveness: the process answers. Reports online/degraded and why."""
        status = service.status()
        return Health(service=service.name, status=status.state, reason=status.reason)

    @app.get(
        "/readyz", tags=["health"], response_model=Readiness,
        responses={503: {"model": Readiness, "description": "not ready yet"}},
    )  # fmt: skip
    def readyz() -> JSONResponse:
        """Readiness: 200 once the bus is connected and every subscription acknowledged."""
        ready = service.ready
        return JSONResponse(
            status_code=200 if ready else 503,
            content={
                "service": service.name,
                "ready": ready,
                "bus_connected": service.bus.connected,
            },
        )

    @app.get("/config", tags=["config"], response_model=ConfigView)
    def get_config() -> ConfigView:
        """Current settings (secrets redacted) and which fields `PUT /config` may change."""
        return ConfigView(
            config=redacted_config(service), mutable=sorted(type(service.settings).mutable_fields)
        )

    @app.put("/config", tags=["config"], response_model=ConfigChanged, responses=errors(422))
    async def put_config(
        patch: Annotated[dict[str, Any], Body(description="fields to change: name → value")],
        _auth: TokenDep,
    ) -> dict[str, Any]:
        """Change mutable fields; 422 naming the field when refused or invalid."""
        try:
            if set(patch) <= type(service.settings).mutable_fields:
                _check_patch(type(service.settings), patch)
            await service.update_config(patch)
        except ConfigError as err:
            raise HTTPException(
                status_code=422, detail={"error": str(err), "fields": list(err.fields)}
            ) from err
        return {"config": redacted_config(service)}

    @app.get("/topics", tags=["bus"], response_model=TopicsView)
    def get_topics() -> dict[str, Any]:
        """What the service subscribes to and what it has published."""
        published = [
            {"key": s.key, "topic": s.filter(root=service.root), "model": s.model.__name__,
             "qos": s.qos, "retain": s.retain}
            for s in CATALOGUE if s.key in service.published_specs
        ]  # fmt: skip
        return {"subscribes": service.subscriptions(), "publishes": published}

    @app.get(
        "/metrics", tags=["health"], response_class=Response,
        responses={200: content("text/plain", "Prometheus text format")},
    )  # fmt: skip
    def metrics() -> Response:
        """Prometheus metrics."""
        service.metrics.bus_connected.set(1 if service.bus.connected else 0)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    for router in service.routers:
        app.include_router(router)
    app.openapi = lambda: _openapi(app, service)  # type: ignore[method-assign]
    app.add_exception_handler(StarletteHTTPException, _allow_every_method)
    return app


async def _allow_every_method(request: Request, exc: Exception) -> Response:
    """FastAPI's HTTP errors, a 405's `Allow` naming every method of the path (not one route's)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        methods = {
            method
            for route in request.app.router.routes
            if route.matches(request.scope)[0] is Match.PARTIAL
            for method in getattr(route, "methods", None) or ()
        }
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
    return await http_exception_handler(request, exc)


def _check_patch(settings: type[ServiceSettings], patch: dict[str, Any]) -> None:
    """Each value as its field's JSON type, no coercion ("5" is no number, 1 no boolean)."""
    try:
        config_patch_model(settings).model_validate_json(json.dumps(patch), strict=True)
    except ValidationError as err:
        fields = tuple(".".join(str(p) for p in e["loc"]) for e in err.errors())
        raise ConfigError(describe_validation_error(err), fields) from err


_PATCH_MODELS: dict[str, type[BaseModel]] = {}


def config_patch_model(settings: type[ServiceSettings]) -> type[BaseModel]:
    """The body of `PUT /config`: the mutable fields with their types and bounds, all optional.

    Rules between fields (an export limit below the import limit) are the settings' own: a
    patch that breaks one gets 422 naming the field, as an invalid value does.
    """
    key = f"{settings.__module__}.{settings.__qualname__}"
    if key in _PATCH_MODELS:
        return _PATCH_MODELS[key]
    fields: dict[str, Any] = {}
    for name in sorted(settings.mutable_fields):
        info = settings.model_fields[name]
        annotation = (
            Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        )
        fields[name] = (annotation, Field(default=None, description=info.description))
    model: type[BaseModel] = create_model(
        f"{settings.__name__}Patch", __config__=ConfigDict(extra="forbid"), **fields
    )
    _PATCH_MODELS[key] = model
    return model


ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def _openapi(app: FastAPI, service: Service[Any, Any]) -> dict[str, Any]:
    """The app's OpenAPI, its bearer scheme as configured now (cached per token state)."""
    secured = service.settings.api_token is not None
    cache: dict[bool, dict[str, Any]] = app.state.__dict__.setdefault("openapi_by_token", {})
    if secured not in cache:
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = doc.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        patch = config_patch_model(type(service.settings)).model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        schemas.update(patch.pop("$defs", {}))
        schemas[patch["title"]] = patch
        doc["paths"]["/config"]["put"]["requestBody"]["content"]["application/json"]["schema"] = {
            "$ref": f"#/components/schemas/{patch['title']}"
        }
        for path in doc.get("paths", {}).values():
            for operation in path.values():
                if "requestBody" in operation:
                    operation["responses"].setdefault("400", {
                        "description": _ERROR_TEXT[400] + " (a body that is not JSON)",
                        "content": {"application/json": {"schema": ERROR_REF}},
                    })  # fmt: skip
                if "security" not in operation:
                    continue
                if secured:
                    for code in (401, 403):
                        operation["responses"].setdefault(str(code), {
                            "description": _ERROR_TEXT[code],
                            "content": {"application/json": {"schema": ERROR_REF}},
                        })  # fmt: skip
                else:
                    del operation["security"]
        schemas["ErrorBody"] = ErrorBody.model_json_schema()
        if not secured:
            components.pop("securitySchemes", None)
        cache[secured] = doc
    return cache[secured]
