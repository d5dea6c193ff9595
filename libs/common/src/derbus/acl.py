"""Broker security from the topic catalogue: per-service MQTT users, the Mosquitto ACL and password file.

Each service connects with its own user (named like the service). It may write only the topics
whose catalogue spec lists it as a publisher, and read only those listing it as a subscriber.
`"*"` in a spec's publishers means every service, each on its OWN device level only (its status
and dead letters, `{root}/platform/status/<service>/…`). The `scada` user is an external SCADA:
it reads everything under the root and writes the specs listing `"scada"` (setpoints, jobs). The
`healthcheck` user may only read `$SYS/broker/uptime` (the compose healthcheck). A spec marked
`own_device` (KPIs) is written by each publisher only on its own device level.

Edge devices at a site log in with per-site credentials: the user name is the site id, and the
`pattern` lines (Mosquitto substitutes `%u` with the user name) let it write only its own site's
telemetry, acknowledgements, device status and its own service status and dead letters (at its
site's level: `MQTT_STATUS_SITE=<site>`), and read only its own site's commands: what a
`meter_gateway` publishes and reads, narrowed to `{root}/<site>/…`. Adding a site is adding a
password (`MQTT_EDGE_SITES` in .env, then `derbus acl`); the ACL itself does not change. Pattern
lines apply to every user, so a site id may not be a service or broker user name (refused).

Mosquitto 2.0 ACL syntax: `user <name>` starts a block; `topic read|write|readwrite <filter>`
lines follow. With MQTT 3.1.1 a forbidden publish is dropped silently, and a forbidden
subscription is granted but nothing is delivered on it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from derbus import topics
from derbus.errors import ConfigError
from derbus.launcher import EMBEDDED_ORDER
from derbus.topics import PLATFORM_SITE, TopicSpec

Access = Literal["read", "write", "readwrite"]

PLATFORM_SERVICES: tuple[str, ...] = EMBEDDED_ORDER
"""The services of the platform; each gets a broker user even when the catalogue omits it."""

EVERY_SERVICE = "*"
SCADA_USER = "scada"
HEALTHCHECK_USER = "healthcheck"
HEALTHCHECK_TOPIC = "$SYS/broker/uptime"
EDGE_TEMPLATE = "meter_gateway"
"""An edge device gets what this service publishes and reads, on its own site only."""
EDGE_SITES_VAR = "MQTT_EDGE_SITES"
"""Comma-separated site ids that get per-site edge credentials (in .env)."""

#: Secrets of a deployment besides the MQTT passwords (the compose file requires them).
DEPLOYMENT_SECRETS: tuple[str, ...] = (
    "API_TOKEN",
    "INFLUXDB_TOKEN",
    "INFLUXDB_ADMIN_PASSWORD",
    "POSTGRES_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)


@dataclass(frozen=True)
class AclRule:
    """One `topic <access> <filter>` line of a user's block."""

    access: Access
    topic: str


# Namespaces outside the topic root, by user. The SCADA bridge is a Sparkplug B edge node
# (births, data and its death will under `spBv1.0/`; NCMD/DCMD and host STATE read there) and
# publishes Home Assistant discovery (retained configs under `homeassistant/`, HA's `status`
# read) with its number entities' command and state topics under `derbus_ha/` (the defaults of
# SCADA_BRIDGE_HA_DISCOVERY_PREFIX and SCADA_BRIDGE_HA_COMMAND_PREFIX). The SCADA user stands for the host
# side: a Sparkplug host application or Home Assistant reads those and writes the commands and
# HA's status, but cannot forge the edge node's births and data.
EXTERNAL_RULES: dict[str, tuple[AclRule, ...]] = {
    "scada_bridge": (
        AclRule("readwrite", "spBv1.0/#"),
        AclRule("readwrite", "homeassistant/#"),
        AclRule("readwrite", "derbus_ha/#"),
    ),
    SCADA_USER: (
        AclRule("read", "spBv1.0/#"),
        AclRule("write", "spBv1.0/+/NCMD/+"),
        AclRule("write", "spBv1.0/+/DCMD/+/+"),
        AclRule("write", "spBv1.0/STATE/+"),
        AclRule("read", "homeassistant/#"),
        AclRule("write", "homeassistant/status"),
        AclRule("read", "derbus_ha/#"),
        AclRule("write", "derbus_ha/+/+/setpoint/set"),
    ),
}


def password_env_var(user: str) -> str:
    """The environment variable holding a broker user's password, e.g. `MQTT_PASSWORD_SCADA`."""
    return f"MQTT_PASSWORD_{user.upper()}"


def broker_users(catalogue: Iterable[TopicSpec[Any]] = topics.CATALOGUE) -> list[str]:
    """Every broker user.

    The platform services, any other service named by the catalogue, the SCADA and the
    healthcheck user.
    """
    named: set[str] = set()
    for spec in catalogue:
        named.update(spec.publishers)
        named.update(spec.subscribers)
    named -= {EVERY_SERVICE, SCADA_USER}
    services = [*PLATFORM_SERVICES, *sorted(named - set(PLATFORM_SERVICES))]
    return [*services, SCADA_USER, HEALTHCHECK_USER]


def _merge(rules: dict[str, set[str]], topic: str, access: str) -> None:
    rules.setdefault(topic, set()).add(access)


def user_rules(
    user: str,
    root: str = topics.DEFAULT_ROOT,
    catalogue: Iterable[TopicSpec[Any]] = topics.CATALOGUE,
) -> list[AclRule]:
    """The ACL lines of one user under a topic root (sorted, read+write merged into readwrite).

    Args:
        user: a service name, `scada` or `healthcheck`.
        root: the topic root the deployment runs under (`MQTT_ROOT`).
        catalogue: the topic specs (the real catalogue by default).
    """
    if user == HEALTHCHECK_USER:
        return [AclRule("read", HEALTHCHECK_TOPIC)]
    wanted: dict[str, set[str]] = {}
    if user == SCADA_USER:
        _merge(wanted, topics.all_topics_filter(root), "read")
    for spec in catalogue:
        if user in spec.publishers and spec.own_device:
            _merge(wanted, spec.filter(None, user, root=root), "write")
        elif user in spec.publishers:
            _merge(wanted, spec.filter(root=root), "write")
        elif EVERY_SERVICE in spec.publishers and user != SCADA_USER:
            _merge(wanted, spec.filter(PLATFORM_SITE, user, root=root), "write")
        if user in spec.subscribers and user != SCADA_USER:
            _merge(wanted, spec.filter(root=root), "read")
    for rule in EXTERNAL_RULES.get(user, ()):
        for kind in ("read", "write"):
            if kind in rule.access:
                _merge(wanted, rule.topic, kind)
    out = []
    for topic, kinds in sorted(wanted.items()):
        access: Access = (
            "readwrite" if kinds == {"read", "write"} else ("read" if "read" in kinds else "write")
        )
        out.append(AclRule(access, topic))
    return out


def acl_text(
    root: str = topics.DEFAULT_ROOT,
    catalogue: Iterable[TopicSpec[Any]] = topics.CATALOGUE,
) -> str:
    """The whole Mosquitto ACL file for a topic root."""
    specs = tuple(catalogue)
    lines = [
        "# derbus broker ACL, generated from derbus.topics.CATALOGUE by `derbus acl` — do not edit.",
        f"# Topic root: {root}. Regenerate after a catalogue change or for another root:",
        f"#   derbus acl --root {root} --acl-only",
        "# Anonymous clients are refused by mosquitto.conf (allow_anonymous false).",
        "",
        "# Edge devices: user name = site id (MQTT_EDGE_SITES). %u is the user name, so a site",
        "# writes only its own telemetry and reads only its own commands.",
    ]
    lines += [f"pattern {r.access} {r.topic}" for r in edge_rules(root, specs)]
    for user in broker_users(specs):
        lines += ["", f"user {user}"]
        lines += [f"topic {r.access} {r.topic}" for r in user_rules(user, root, specs)]
    lines.append("")
    return "\n".join(lines)


def edge_rules(
    root: str = topics.DEFAULT_ROOT,
    catalogue: Iterable[TopicSpec[Any]] = topics.CATALOGUE,
) -> list[AclRule]:
    """The `pattern` lines of per-site edge credentials (`%u` = the site id).

    What the gateway may do on every site, narrowed to the site's own id; its own status, last
    will and dead letters (platform level for a platform service) move to the site's level too:
    an edge gateway sets `MQTT_STATUS_SITE` to its site id.
    """
    out = []
    for rule in user_rules(EDGE_TEMPLATE, root, catalogue):
        parts = rule.topic.split("/")
        site_level = len(root.split("/"))
        parts[site_level] = "%u"
        out.append(AclRule(rule.access, "/".join(parts)))
    return out


def edge_password_env_var(site_id: str) -> str:
    """The variable holding a site's edge password, e.g. `MQTT_PASSWORD_EDGE_SITE_1`."""
    return "MQTT_PASSWORD_EDGE_" + re.sub(r"[^A-Za-z0-9]", "_", site_id).upper()


def edge_sites(
    env: Mapping[str, str | None], catalogue: Iterable[TopicSpec[Any]] = topics.CATALOGUE
) -> list[str]:
    """The site ids listed in `MQTT_EDGE_SITES`, checked.

    Valid ids, no broker user names, no two sites sharing a password variable.
    """
    raw = env.get(EDGE_SITES_VAR) or ""
    sites = [s.strip() for s in raw.split(",") if s.strip()]
    reserved = {*broker_users(catalogue), topics.PLATFORM_SITE}
    seen: dict[str, str] = {}
    for site in sites:
        try:
            topics.validate_id("site_id", site)
        except ValueError as err:
            raise ConfigError(f"{EDGE_SITES_VAR}: {err}", (EDGE_SITES_VAR,)) from err
        if site in reserved:
            raise ConfigError(
                f"{EDGE_SITES_VAR}: site id {site!r} is a broker user name (reserved)",
                (EDGE_SITES_VAR,),
            )
        var = edge_password_env_var(site)
        if var in seen and seen[var] != site:
            raise ConfigError(
                f"{EDGE_SITES_VAR}: sites {seen[var]!r} and {site!r} share {var}",
                (EDGE_SITES_VAR,),
            )
        seen[var] = site
    return list(dict.fromkeys(sites))


def required_password_vars(catalogue: Iterable[TopicSpec[Any]] = topics.CATALOGUE) -> list[str]:
    """The environment variables holding every broker user's password."""
    return [password_env_var(u) for u in broker_users(catalogue)]


def collect_passwords(
    env: Mapping[str, str | None], users: Iterable[str]
) -> tuple[dict[str, str], list[str]]:
    """Passwords by user from an environment mapping, and the variables that are missing."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for user in users:
        value = env.get(password_env_var(user))
        if value:
            found[user] = value
        else:
            missing.append(password_env_var(user))
    return found, missing


def new_secret() -> str:
    """A fresh random secret (URL-safe, 32 characters)."""
    return secrets.token_urlsafe(24)


def fill_env_file(path: Path, names: Iterable[str], env: Mapping[str, str | None]) -> list[str]:
    """Give a generated value to every name neither `env` nor the file defines.

    An empty `NAME=` line (as in deploy/env/.env.example) is filled in place; absent names are
    appended. The file ends up mode 0600 whatever it was before (a copied .env.example is 0644):
    the new content is written to a private temporary file that replaces it. Returns the
    generated names.
    """
    from dotenv import dotenv_values

    existing = dotenv_values(path) if path.exists() else {}
    added = [n for n in names if not (env.get(n) or existing.get(n))]
    if not added:
        if path.exists():
            path.chmod(0o600)
        return []
    lines = path.read_text().splitlines() if path.exists() else []
    todo = set(added)
    for i, line in enumerate(lines):
        name, sep, value = line.partition("=")
        if sep and name.strip() in todo and not value.strip():
            lines[i] = f"{name.strip()}={new_secret()}"
            todo.discard(name.strip())
    rest = [n for n in added if n in todo]
    if rest:
        lines.append("# generated by `derbus acl --generate-missing`")
        lines += [f"{n}={new_secret()}" for n in rest]
    write_private(path, "\n".join(lines) + "\n")
    return added


def write_private(path: Path, text: str | bytes) -> None:
    """Write a secret file with mode 0600 (atomically: a private temporary file replaces it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # mode 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode() if isinstance(text, str) else text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load_env(path: Path | None) -> dict[str, str | None]:
    """The process environment overlaid on an optional .env file (the environment wins)."""
    from dotenv import dotenv_values

    merged: dict[str, str | None] = dict(dotenv_values(path)) if path and path.exists() else {}
    merged.update(os.environ)
    return merged


def write_password_file(path: Path, passwords: Mapping[str, str]) -> None:
    """Write a Mosquitto password file (PBKDF2-SHA512 hashes) with `mosquitto_passwd`.

    The plain `user:password` lines are written to a private temporary file and hashed in place
    with `mosquitto_passwd -U`, so no password appears on a command line. The result is mode
    0644: it holds only salted hashes, and the broker container reads it as its own user.
    """
    binary = shutil.which("mosquitto_passwd")
    if binary is None:
        raise ConfigError(
            "mosquitto_passwd not found: install mosquitto (apt-get install mosquitto)",
            ("mosquitto_passwd",),
        )
    for user, password in passwords.items():
        if ":" in user or "\n" in password or "\n" in user:
            raise ConfigError(f"broker user {user!r}: name has ':' or a line break", (user,))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".passwd-", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.writelines(f"{u}:{p}\n" for u, p in passwords.items())
        result = subprocess.run([binary, "-U", str(tmp)], capture_output=True, check=False)
        if result.returncode != 0:
            raise ConfigError(
                f"mosquitto_passwd failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()}",
                ("mosquitto_passwd",),
            )
        tmp.chmod(0o644)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
