"""Run a service process: logging, the FastAPI app under uvicorn, clean shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI

from derbus.http import make_app
from derbus.logging import configure_logging
from derbus.service import Service


def serve(service: Service[Any, Any], app: FastAPI | None = None) -> None:
    """Serve a service's API and run the service until interrupted (blocking)."""
    settings = service.settings
    configure_logging(settings.log_level, service.name)
    uvicorn.run(
        app or make_app(service),
        host=settings.api_host,
        port=settings.api_port,
        ssl_certfile=settings.api_tls_cert_file,
        ssl_keyfile=settings.api_tls_key_file,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
        lifespan="on",
    )
