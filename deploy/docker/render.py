"""Render every `services/<name>/Dockerfile` from one template, `service.Dockerfile.in`.

The service's name, package, environment prefix and API port come from its `pyproject.toml`
(`[project] name`, `[tool.derbus]`); what differs between images beyond that is the table
`EXTRAS` below. `make dockerfiles` writes the files; `--check` (run by the test suite) exits 1
naming every Dockerfile that differs from its rendering.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TEMPLATE = HERE / "service.Dockerfile.in"


@dataclass(frozen=True)
class Extras:
    """What one image adds to the template (each a whole line or a line's tail)."""

    build_check: str = ""  # RUN lines after the sources are copied, before the install
    copy_data: bool = True  # the SimBench profiles in data/ (the services that read them)
    copy_runtime: str = ""  # further COPY lines of the run stage
    env_extra: str = ""  # appended to the ENV line
    expose_note: str = ""  # a comment line above EXPOSE
    ports_extra: str = ""  # further ports on the EXPOSE line


EXTRAS: dict[str, Extras] = {
    "cloud_sync": Extras(
        copy_runtime="# the cloud database migrations, applied by `cloud-sync migrate` and at start-up\n"
        "COPY deploy/postgres /app/deploy/postgres\n",
        env_extra=" \\\n    CLOUD_SYNC_MIGRATIONS_DIR=/app/deploy/postgres",
    ),
    "console": Extras(
        build_check="# the browser assets are vendored from npm by `make console-assets` (no CDN)\n"
        "RUN test -f services/console/src/console/static/vendor/htmx.min.js \\\n"
        '  || (echo "services/console/src/console/static/vendor is empty: run make console-assets"'
        " && exit 1)\n",
        copy_data=False,
    ),
    "ev_charging": Extras(
        copy_data=False,
        env_extra=" EV_CHARGING_OCPP_HOST=0.0.0.0",
        expose_note="# 8110: API, 9000: OCPP-J WebSocket\n",
        ports_extra=" 9000",
    ),
    "scada_bridge": Extras(copy_data=False),
}


def services() -> list[str]:
    """Every service folder that has a `pyproject.toml`, by name."""
    return sorted(p.parent.name for p in (REPO / "services").glob("*/pyproject.toml"))


def render(name: str) -> str:
    """The Dockerfile of service `name`."""
    project = tomllib.loads((REPO / "services" / name / "pyproject.toml").read_text())
    meta = project["tool"]["derbus"]
    extras = EXTRAS.get(name, Extras())
    runtime = ("COPY data /app/data\n" if extras.copy_data else "") + extras.copy_runtime
    slots = {
        "@SERVICE@": name,
        "@PACKAGE@": project["project"]["name"],
        "@PREFIX@": meta["env_prefix"],
        "@API_PORT@": str(meta["api_port"]),
        "@BUILD_CHECK@": extras.build_check,
        "@COPY_RUNTIME@": runtime,
        "@ENV_EXTRA@": extras.env_extra,
        "@EXPOSE_NOTE@": extras.expose_note,
        "@PORTS_EXTRA@": extras.ports_extra,
    }
    text = TEMPLATE.read_text()
    for slot, value in slots.items():
        text = text.replace(slot, value)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args(argv)
    stale = []
    for name in services():
        path = REPO / "services" / name / "Dockerfile"
        text = render(name)
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path.relative_to(REPO))
        if not args.check:
            path.write_text(text)
            print(f"wrote {stale[-1]}")
    if args.check and stale:
        print("not rendered from deploy/docker/service.Dockerfile.in (run make dockerfiles):")
        print("\n".join(f"  {p}" for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
