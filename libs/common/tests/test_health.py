"""`python -m derbus.health`: the images' healthcheck, against a real uvicorn over HTTP and HTTPS."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from derbus import health
from derbus.bus import InMemoryBus
from derbus.certs import make_certs
from derbus.http import make_app
from derbus.testing import free_port
from derbus.testing.example import EchoSettings, build_echo


@contextmanager
def api(tls: tuple[Path, Path] | None = None, started: bool = True) -> Iterator[int]:
    """An echo service's API on a free loopback port, under uvicorn in a thread."""
    port = free_port()
    service = build_echo(EchoSettings(api_port=port), InMemoryBus())
    config = uvicorn.Config(
        make_app(service, manage_lifecycle=started),
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped at start-up"
        assert time.monotonic() < deadline, "uvicorn did not start within 20 s"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    files = make_certs(tmp_path_factory.mktemp("certs"))
    return files.server_cert, files.server_key


def test_the_scheme_follows_the_api_certificate_setting() -> None:
    assert health.scheme({}) == "http"
    assert health.scheme({"PEAK_SHAVING_API_TLS_CERT_FILE": ""}) == "http"
    assert health.scheme({"PEAK_SHAVING_API_TLS_CERT_FILE": "/certs/server.crt"}) == "https"
    assert health.scheme({"METER_GATEWAY_API_TLS_CERT_FILE": "/c.crt"}) == "https"
    assert health.scheme(
        {"PEAK_SHAVING_API_TLS_CERT_FILE": "/c.crt", "DERBUS_HEALTH_SCHEME": "http"}
    ) == ("http")
    assert health.scheme({"DERBUS_HEALTH_SCHEME": "HTTPS"}) == "https"
    with pytest.raises(ValueError, match="DERBUS_HEALTH_SCHEME"):
        health.scheme({"DERBUS_HEALTH_SCHEME": "ftp"})


def test_a_ready_http_api_is_healthy_and_a_closed_port_is_not() -> None:
    with api() as port:
        assert health.probe(port, {}) == ""
        assert health.main([str(port)], {}) == 0
        assert health.main([], {"DERBUS_HEALTH_PORT": str(port)}) == 0
    assert "Connection refused" in health.probe(port, {})
    assert health.main([str(port)], {}) == 1


def test_an_api_that_is_not_ready_yet_is_unhealthy() -> None:
    with api(started=False) as port:
        assert health.probe(port, {}) == f"http://127.0.0.1:{port}/readyz: HTTP 503"
        assert health.main([str(port)], {}) == 1


def test_an_https_api_is_probed_over_https_when_the_service_has_a_certificate(
    certs: tuple[Path, Path],
) -> None:
    env = {
        "LOAD_MANAGER_API_TLS_CERT_FILE": str(certs[0]),
        "LOAD_MANAGER_API_TLS_KEY_FILE": str(certs[1]),
    }
    with api(tls=certs) as port:
        # the plain-HTTP probe the images used before: an HTTPS API looks dead to it
        assert health.probe(port, {"DERBUS_HEALTH_SCHEME": "http"}) != ""
        assert health.probe(port, env) == ""
        # as the image runs it: a process with the service's environment
        done = subprocess.run(
            [sys.executable, "-m", "derbus.health", str(port)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_missing_or_invalid_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert health.main([], {}) == 2
    assert "DERBUS_HEALTH_PORT" in capsys.readouterr().out
    assert health.main(["http"], {}) == 2
    assert health.main(["70000"], {}) == 2
    assert health.main(["8106"], {"DERBUS_HEALTH_SCHEME": "gopher"}) == 2
