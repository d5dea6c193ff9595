"""A container's healthcheck: `python -m derbus.health [PORT]` exits 0 when `/readyz` answers 200.

The port is the argument, else `DERBUS_HEALTH_PORT`. The probe speaks what the service serves:
HTTPS when the container's environment gives the API a certificate (`<PREFIX>API_TLS_CERT_FILE`,
whatever the prefix: one service runs per container) or `DERBUS_HEALTH_SCHEME=https`, plain HTTP
otherwise (`DERBUS_HEALTH_SCHEME=http` forces it). The certificate is not verified: the probe
asks 127.0.0.1 inside the container, a name the certificate need not carry, and it checks that
the service is ready, not who it is (Kubernetes' HTTPS probes do the same). Standard library
only, so a probe every few seconds costs little.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

TLS_CERT_SUFFIX = "API_TLS_CERT_FILE"


def scheme(env: Mapping[str, str]) -> str:
    """`https` or `http`, from `DERBUS_HEALTH_SCHEME` or the API certificate settings."""
    forced = env.get("DERBUS_HEALTH_SCHEME", "").strip().lower()
    if forced:
        if forced not in ("http", "https"):
            raise ValueError(f"DERBUS_HEALTH_SCHEME: {forced!r} is neither http nor https")
        return forced
    tls = any(key.upper().endswith(TLS_CERT_SUFFIX) and value for key, value in env.items())
    return "https" if tls else "http"


def probe(port: int, env: Mapping[str, str], path: str = "/readyz", timeout_s: float = 2.0) -> str:
    """Ask the API once; return "" when it answers 200, else why not (one line)."""
    url = f"{scheme(env)}://127.0.0.1:{port}{path}"
    context = None
    if url.startswith("https"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as rsp:  # noqa: S310
            status = int(rsp.status)
    except urllib.error.HTTPError as err:
        return f"{url}: HTTP {err.code}"
    except (OSError, ValueError) as err:
        return f"{url}: {err}"
    return "" if status == 200 else f"{url}: HTTP {status}"


def main(argv: Sequence[str] = sys.argv[1:], env: Mapping[str, str] = os.environ) -> int:
    """Probe once; print the reason and return 1 when the service is not ready."""
    raw = argv[0] if argv else env.get("DERBUS_HEALTH_PORT", "")
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        print(f"derbus.health: no valid port ({raw!r}): give it or set DERBUS_HEALTH_PORT")
        return 2
    try:
        problem = probe(int(raw), env)
    except ValueError as err:
        print(f"derbus.health: {err}")
        return 2
    if problem:
        print(f"derbus.health: not ready: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
