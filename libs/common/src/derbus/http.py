"""`make_app(service)`: the FastAPI app every service exposes (health, ready, config, topics, metrics).

State-changing endpoints (PUT /config and the service's own POST/PUT/DELETE routes) depend on
`require_token`: when the service has an `api_token`, a missing bearer token gets 401 and a wrong
one 403. `/healthz` and `/readyz` stay open. Secrets are never shown by `/config`.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr

from derbus.errors import ConfigError
from derbus.service import Service
from derbus.settings import redacted
from derbus.topics import CATALOGUE

_bearer = HTTPBearer(auto_error=False)


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

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers. Reports online/degraded and why."""
        status = service.status()
        return {"service": service.name, "status": status.state, "reason": status.reason}

    @app.get("/readyz", tags=["health"])
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

    @app.get("/config", tags=["config"])
    def get_config() -> dict[str, Any]:
        """Current settings (secrets redacted) and which fields `PUT /config` may change."""
        return {
            "config": redacted_config(service),
            "mutable": sorted(type(service.settings).mutable_fields),
        }

    @app.put("/config", tags=["config"])
    async def put_config(patch: dict[str, Any], _auth: TokenDep) -> dict[str, Any]:
        """Change mutable fields; 422 naming the field when refused or invalid."""
        try:
            await service.update_config(patch)
        except ConfigError as err:
            raise HTTPException(
                status_code=422, detail={"error": str(err), "fields": list(err.fields)}
            ) from err
        return {"config": redacted_config(service)}

    @app.get("/topics", tags=["bus"])
    def get_topics() -> dict[str, Any]:
        """What the service subscribes to and what it has published."""
        published = [
            {"key": s.key, "topic": s.filter(root=service.root), "model": s.model.__name__,
             "qos": s.qos, "retain": s.retain}
            for s in CATALOGUE if s.key in service.published_specs
        ]  # fmt: skip
        return {"subscribes": service.subscriptions(), "publishes": published}

    @app.get("/metrics", tags=["health"])
    def metrics() -> Response:
        """Prometheus metrics."""
        service.metrics.bus_connected.set(1 if service.bus.connected else 0)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    for router in service.routers:
        app.include_router(router)
    return app
