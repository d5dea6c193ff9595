"""The `derbus` command: topic catalogue, broker ACL, live watch, and `up` (the platform, no Docker)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated

import typer

from derbus import topics
from derbus.bus.mqtt import MqttBus
from derbus.settings import MqttSettings

app = typer.Typer(help="derbus: distributed energy resources on a bus.", no_args_is_help=True)


@app.command("topics")
def topics_cmd(
    markdown: Annotated[bool, typer.Option(help="print the Markdown catalogue")] = False,
    output: Annotated[Path | None, typer.Option(help="write the Markdown catalogue here")] = None,
    root: Annotated[str, typer.Option(help="topic root")] = topics.DEFAULT_ROOT,
) -> None:
    """List the topic catalogue (or write it as Markdown)."""
    text = topics.catalogue_markdown(root)
    if output is not None:
        output.write_text(text)
        typer.echo(f"wrote {output}")
        return
    if markdown:
        typer.echo(text, nl=False)
        return
    for spec in topics.CATALOGUE:
        flags = f"qos{spec.qos}{' retained' if spec.retain else ''}"
        typer.echo(f"{spec.filter(root=root):55s} {spec.model.__name__:18s} {flags}")


@app.command("asyncapi")
def asyncapi_cmd(
    output: Annotated[Path | None, typer.Option(help="write the YAML document here")] = None,
    root: Annotated[str, typer.Option(help="topic root")] = topics.DEFAULT_ROOT,
) -> None:
    """Print (or write) the AsyncAPI 3.0 document of the bus, generated from the catalogue."""
    from derbus.asyncapi import document_yaml

    text = document_yaml(root)
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text)
    typer.echo(f"wrote {output}")


@app.command("acl")
def acl_cmd(
    root: Annotated[str, typer.Option(envvar="MQTT_ROOT", help="topic root")] = topics.DEFAULT_ROOT,
    out_dir: Annotated[Path, typer.Option(help="where to write acl and passwd")] = Path(
        "deploy/mosquitto"
    ),
    env_file: Annotated[
        Path, typer.Option(help="passwords: this file, overlaid by the environment")
    ] = Path(".env"),
    generate_missing: Annotated[
        bool, typer.Option(help="append a random value to env-file for every missing secret")
    ] = False,
    acl_only: Annotated[
        bool, typer.Option(help="write only the ACL (no passwords needed)")
    ] = False,
) -> None:
    """Write the broker ACL and password file (per-service users) from the topic catalogue."""
    from derbus import acl
    from derbus.errors import ConfigError

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "acl").write_text(acl.acl_text(root))
    typer.echo(f"wrote {out_dir / 'acl'} (root {root})")
    if acl_only:
        return
    if generate_missing:
        names = [*acl.required_password_vars(), *acl.DEPLOYMENT_SECRETS]
        added = acl.fill_env_file(env_file, names, acl.load_env(None))
        if added:
            typer.echo(f"generated {len(added)} secrets in {env_file}: {', '.join(added)}")
    passwords, missing = acl.collect_passwords(acl.load_env(env_file), acl.broker_users())
    if missing:
        typer.echo(
            f"error: missing broker passwords {', '.join(missing)} (set them in {env_file} or the"
            " environment, or pass --generate-missing)",
            err=True,
        )
        raise typer.Exit(2)
    try:
        acl.write_password_file(out_dir / "passwd", passwords)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(f"wrote {out_dir / 'passwd'} ({len(passwords)} users)")


@app.command()
def watch(
    host: Annotated[str, typer.Option(envvar="MQTT_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="MQTT_PORT")] = 1883,
    root: Annotated[str, typer.Option(envvar="MQTT_ROOT")] = topics.DEFAULT_ROOT,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
) -> None:
    """Live table of every site's PCC power, PV, battery SoC and the service statuses."""
    from derbus.watch import watch as run_watch

    settings = MqttSettings(host=host, port=port, root=root)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_watch(MqttBus(settings), root, duration))


@app.command()
def up(
    repo: Annotated[Path, typer.Option(help="repository root")] = Path(),
    mqtt_port: Annotated[
        int | None, typer.Option(help="broker port (default 1883 or a free one)")
    ] = None,
    only: Annotated[list[str] | None, typer.Option(help="start only these services")] = None,
    watch_after: Annotated[
        bool, typer.Option("--watch/--no-watch", help="show derbus watch")
    ] = True,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    free_ports: Annotated[
        bool, typer.Option(help="give every API a free port instead of 8101…8108")
    ] = False,
    check: Annotated[
        bool, typer.Option(help="exit once every API answers /readyz (status 1 if not within 30 s)")
    ] = False,
) -> None:
    """Start a broker and every service as its own process; Ctrl-C stops them all."""
    import time

    from derbus.launcher import up as start
    from derbus.launcher import wait_ready
    from derbus.watch import watch as run_watch

    platform = start(repo.resolve(), mqtt_port, only, free_ports)
    try:
        status = wait_ready(platform, 30.0)
        ports = platform.api_ports
        for name, ok in status.items():
            mark = "ready" if ok else "NOT READY (see log)"
            page = "/" if name == "console" else "/docs"  # the console's pages, the others' API
            typer.echo(f"  {name:32s} http://127.0.0.1:{ports[name]}{page}  {mark}")
            if name == "console":
                token = platform.run_dir / "console" / "api_token"
                typer.echo(f"  {'':32s} (setpoint token in {token})")
        if not all(status.values()):
            typer.echo(f"some services are not ready; logs in {platform.run_dir}", err=True)
        if check:
            if not status or not all(status.values()):
                raise typer.Exit(1)
            typer.echo(f"all {len(status)} services ready")
        elif watch_after:
            settings = MqttSettings(host="127.0.0.1", port=platform.mqtt_port)
            asyncio.run(run_watch(MqttBus(settings), settings.root, duration))
        elif duration is not None:
            time.sleep(duration)
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopping…")
    finally:
        platform.stop()
        typer.echo(f"\nstopped; logs in {platform.run_dir}")


if __name__ == "__main__":
    app()
