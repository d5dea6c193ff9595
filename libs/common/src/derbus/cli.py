"""The `derbus` command: topic catalogue, broker ACL, live watch, and `up` (the platform, no Docker)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from derbus import topics
from derbus.bus.mqtt import MqttBus
from derbus.settings import MqttSettings

if TYPE_CHECKING:
    from derbus.launcher import Platform

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
    try:
        sites = acl.edge_sites(acl.load_env(env_file))
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    edge_vars = {acl.edge_password_env_var(site): site for site in sites}
    if generate_missing:
        names = [*acl.required_password_vars(), *edge_vars, *acl.DEPLOYMENT_SECRETS]
        added = acl.fill_env_file(env_file, names, acl.load_env(None))
        if added:
            typer.echo(f"generated {len(added)} secrets in {env_file}: {', '.join(added)}")
    env = acl.load_env(env_file)
    passwords, missing = acl.collect_passwords(env, acl.broker_users())
    for var, site in edge_vars.items():
        if env.get(var):
            passwords[site] = str(env[var])
        else:
            missing.append(var)
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


@app.command("certs")
def certs_cmd(
    out_dir: Annotated[Path, typer.Option(help="where to write the CA, keys and certificates")] = (
        Path("deploy/mosquitto/certs")
    ),
    host: Annotated[
        list[str] | None,
        typer.Option(
            help="server name or address (repeat); default localhost, 127.0.0.1, mosquitto"
        ),
    ] = None,
    client: Annotated[
        list[str] | None, typer.Option(help="also a client certificate with this name (repeat)")
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="validity in days")] = 825,
) -> None:
    """Write a private CA, the server certificate (broker and REST APIs) and client certificates."""
    from derbus.certs import DEFAULT_HOSTS, make_certs

    files = make_certs(out_dir, host or DEFAULT_HOSTS, client or (), days)
    typer.echo(f"wrote {files.ca} (trust it), {files.server_cert} and {files.server_key}")
    for name, (crt, key) in files.clients.items():
        typer.echo(f"wrote client certificate {crt} and {key} for {name}")


@app.command()
def watch(
    host: Annotated[str, typer.Option(envvar="MQTT_HOST")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(envvar="MQTT_PORT", help="default: broker-url, else 1883")
    ] = None,
    root: Annotated[str, typer.Option(envvar="MQTT_ROOT")] = topics.DEFAULT_ROOT,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    plain: Annotated[
        bool | None, typer.Option("--plain/--live", help="text summaries (default under a pipe)")
    ] = None,
    interval: Annotated[float, typer.Option(help="seconds between plain summaries")] = 5.0,
    run_root: Annotated[Path, typer.Option(help="where `derbus up` wrote broker-url")] = Path(
        "run"
    ),
) -> None:
    """Live table of every site's chain (telemetry, forecasts, plan, setpoints) and the services."""
    from derbus.launcher import DEFAULT_MQTT_PORT, read_broker_url, url_port
    from derbus.watch import watch as run_watch

    if port is None:
        url = read_broker_url(run_root)
        port = (url_port(url) if url else None) or DEFAULT_MQTT_PORT
    settings = MqttSettings(host=host, port=port, root=root)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run_watch(MqttBus(settings), root, duration, plain=plain, summary_every_s=interval)
        )


@app.command("broker-url")
def broker_url_cmd(
    run_root: Annotated[Path, typer.Option(help="run folder of `derbus up`")] = Path("run"),
) -> None:
    """Print the URL of the broker `make run` / `derbus up` started (exit 1 when none answers)."""
    from derbus.launcher import read_broker_url, url_port
    from derbus.testing.servers import port_open

    url = read_broker_url(run_root)
    if url is None:
        typer.echo(
            f"no broker: `make run` is not running ({run_root / 'broker-url'} missing)", err=True
        )
        raise typer.Exit(1)
    port = url_port(url)
    if port is None or not port_open("127.0.0.1", port):
        typer.echo(f"{url} does not answer (the platform that wrote it has stopped)", err=True)
        raise typer.Exit(1)
    typer.echo(url)


@app.command()
def up(
    repo: Annotated[Path, typer.Option(help="repository root")] = Path(),
    mqtt_port: Annotated[
        int | None,
        typer.Option(help="broker port (default 1883, or a free one when 1883 is taken)"),
    ] = None,
    only: Annotated[list[str] | None, typer.Option(help="start only these services")] = None,
    watch_after: Annotated[
        bool, typer.Option("--watch/--no-watch", help="show derbus watch")
    ] = True,
    plain: Annotated[
        bool | None, typer.Option("--plain/--live", help="watch as text (default under a pipe)")
    ] = None,
    interval: Annotated[float, typer.Option(help="seconds between plain summaries")] = 5.0,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    free_ports: Annotated[
        bool, typer.Option(help="give every API a free port instead of 8101…8108")
    ] = False,
    run_root: Annotated[
        Path | None, typer.Option(help="run folders and broker-url here (default <repo>/run)")
    ] = None,
    check: Annotated[
        bool, typer.Option(help="exit once every API answers /readyz (status 1 if not within 30 s)")
    ] = False,
) -> None:
    """Start a broker and every service as its own process; Ctrl-C (or SIGTERM) stops them all.

    A service that exits is reported and restarted with a backoff (1 s doubling to 30 s).
    """
    import signal

    from derbus.errors import ConfigError
    from derbus.launcher import up as start

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # explicitly: a shell without job control starts background jobs with SIGINT ignored,
    # and Python then installs no handler of its own
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    platform: Platform | None = None
    code = 0
    try:
        platform = start(
            repo.resolve(), mqtt_port, only, free_ports, run_root, say=lambda line: typer.echo(line)
        )
        code = asyncio.run(_run_platform(platform, check, watch_after, plain, interval, duration))
    except KeyboardInterrupt:
        typer.echo("stopping…")
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        code = 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if platform is not None:
            platform.stop()
            typer.echo(f"stopped; logs in {platform.run_dir}")
    raise typer.Exit(code)


async def _run_platform(
    platform: Platform,
    check: bool,
    watch_after: bool,
    plain: bool | None,
    interval: float,
    duration: float | None,
) -> int:
    """Supervise the children, report readiness, then watch until a signal or `duration`."""
    import signal

    from derbus.launcher import readiness
    from derbus.watch import watch as run_watch

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def supervise() -> None:
        while not stop.is_set():
            for line in platform.supervise():
                typer.echo(line)
            await asyncio.sleep(0.5)

    supervisor = asyncio.create_task(supervise(), name="derbus-up:supervise")
    deadline = loop.time() + 30.0
    status = readiness(platform)
    while not all(status.values()) and loop.time() < deadline and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
        status = await asyncio.to_thread(readiness, platform)
    if stop.is_set():
        supervisor.cancel()
        return 0
    for name, ok in status.items():
        mark = "ready" if ok else "NOT READY (see log)"
        page = "/" if name == "console" else "/docs"  # the console's pages, the others' API
        typer.echo(f"  {name:32s} http://127.0.0.1:{platform.api_ports[name]}{page}  {mark}")
        if name == "console":
            token = platform.run_dir / "console" / "api_token"
            typer.echo(f"  {'':32s} (setpoint token in {token})")
    if not all(status.values()):
        typer.echo(f"some services are not ready; logs in {platform.run_dir}", err=True)
    if check:
        supervisor.cancel()
        if not status or not all(status.values()):
            return 1
        typer.echo(f"all {len(status)} services ready")
        return 0
    watcher: asyncio.Task[object] | None = None
    if watch_after:
        settings = MqttSettings(host="127.0.0.1", port=platform.mqtt_port)
        watcher = asyncio.create_task(
            run_watch(
                MqttBus(settings), settings.root, None, plain=plain, summary_every_s=interval
            ),
            name="derbus-up:watch",
        )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration)
    typer.echo("stopping…")
    for task in (watcher, supervisor):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return 0


if __name__ == "__main__":
    app()
