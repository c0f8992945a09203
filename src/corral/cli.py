"""The `corral` command line. Commands are thin: they resolve settings and call into the package."""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import psutil
import typer
from rich.console import Console
from rich.table import Table

from corral import __version__
from corral.config import FIELDS, Resolved, Settings, load_settings
from corral.control_client import check_default_dir, default_control_path, request
from corral.errors import ConfigError, CorralError, ExitCode
from corral.status_view import print_status

app = typer.Typer(
    name="corral",
    help="Run a Python ASGI web API in production with one command.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

Opt = typer.Option


def _show_version(value: bool) -> None:
    if value:
        print(f"corral {__version__} (Python {platform.python_version()}, {sys.executable})")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool | None,
        Opt("--version", callback=_show_version, is_eager=True, help="Show the version and the Python it runs on."),
    ] = None,
) -> None:
    """Run a Python ASGI web API in production with one command."""

RUN_HELP = "Serve APP from a supervised pool of worker processes."


def run_options(
    app_path: Annotated[
        str | None, typer.Argument(metavar="[APP]", help="module:attr, path/to/file.py[:attr]; default: discover")
    ] = None,
    factory: Annotated[bool | None, Opt("--factory", help="APP is a factory returning the ASGI app")] = None,
    app_dir: Annotated[str | None, Opt(help="Directory added to the import path.")] = None,
    name: Annotated[str | None, Opt(help="Instance name (names the default control socket).")] = None,
    bind: Annotated[
        list[str] | None, Opt("--bind", "-b", help="HOST:PORT, [::1]:PORT, unix:PATH, fd://N (repeatable).")
    ] = None,
    workers: Annotated[str | None, Opt("--workers", "-w", help="Number of workers, or auto.")] = None,
    control: Annotated[str | None, Opt(help="Control socket path.")] = None,
    preload: Annotated[bool | None, Opt("--preload/--no-preload", help="Import once, fork workers.")] = None,
    state_dir: Annotated[str | None, Opt(help="State directory.")] = None,
    timeout: Annotated[float | None, Opt(help="Seconds an event loop may stay blocked.")] = None,
    graceful_timeout: Annotated[float | None, Opt(help="Seconds a draining worker may take.")] = None,
    startup_timeout: Annotated[
        float | None, Opt(help="Seconds the app's import, then a new worker's start, may each take.")
    ] = None,
    crash_limit: Annotated[int | None, Opt(help="Crashes within --crash-window that stop corral.")] = None,
    crash_window: Annotated[float | None, Opt(help="Window of the crash budget, seconds.")] = None,
    backoff_max: Annotated[float | None, Opt(help="Longest restart delay, seconds.")] = None,
    max_requests: Annotated[int | None, Opt(help="Recycle a worker after N requests.")] = None,
    max_requests_jitter: Annotated[int | None, Opt(help="Random extra requests before recycling.")] = None,
    max_memory: Annotated[str | None, Opt(help="Recycle a worker whose private memory passes SIZE.")] = None,
    http: Annotated[str | None, Opt(help="HTTP implementation: auto, h11, httptools.")] = None,
    lifespan: Annotated[str | None, Opt(help="Lifespan: auto, on, off.")] = None,
    log_level: Annotated[str | None, Opt(help="critical, error, warning, info, debug.")] = None,
    access_log: Annotated[bool | None, Opt("--access-log/--no-access-log", help="Log each request.")] = None,
    keep_alive: Annotated[float | None, Opt(help="Idle keep-alive timeout, seconds.")] = None,
    header_timeout: Annotated[float | None, Opt(help="Seconds a request head may take to arrive.")] = None,
    max_request_line: Annotated[int | None, Opt(help="Longest request target, bytes (414 beyond).")] = None,
    max_request_head: Annotated[int | None, Opt(help="Largest request head, bytes (431 beyond).")] = None,
    max_headers: Annotated[int | None, Opt(help="Most request header fields (431 beyond).")] = None,
    https: Annotated[list[str] | None, Opt(help="Domain name to serve over HTTPS (repeatable).")] = None,
    http_bind: Annotated[list[str] | None, Opt(help="Plain-HTTP listener for challenges and redirects.")] = None,
    acme_directory: Annotated[str | None, Opt(help="ACME directory URL.")] = None,
    acme_email: Annotated[str | None, Opt(help="ACME account contact.")] = None,
    acme_ca_bundle: Annotated[str | None, Opt(help="CA bundle trusted for the ACME server.")] = None,
    acme_challenges: Annotated[list[str] | None, Opt(help="Allowed challenges, preferred first.")] = None,
    certfile: Annotated[str | None, Opt(help="Certificate chain (PEM) managed elsewhere.")] = None,
    keyfile: Annotated[str | None, Opt(help="Private key (PEM) for --certfile.")] = None,
    hsts: Annotated[bool | None, Opt("--hsts/--no-hsts", help="Send Strict-Transport-Security.")] = None,
    forwarded_allow_ips: Annotated[list[str] | None, Opt(help="CIDRs trusted for proxy headers.")] = None,
    proxy_protocol: Annotated[
        bool | None, Opt("--proxy-protocol/--no-proxy-protocol", help="Expect the PROXY protocol.")
    ] = None,
    user: Annotated[str | None, Opt(help="Drop privileges to this user.")] = None,
    group: Annotated[str | None, Opt(help="Drop privileges to this group.")] = None,
    prestart: Annotated[list[str] | None, Opt(help="Command to run once before serving (repeatable).")] = None,
    prestart_timeout: Annotated[float | None, Opt(help="Seconds a pre-start step may take.")] = None,
    prestart_on_reload: Annotated[
        bool | None, Opt("--prestart-on-reload/--no-prestart-on-reload", help="Rerun steps on reload.")
    ] = None,
    prestart_lock: Annotated[str | None, Opt(help="file:PATH or postgresql:// URL.")] = None,
    release: Annotated[str | None, Opt(help="Release id: run the pre-start steps once per release.")] = None,
    admin_bind: Annotated[str | None, Opt(help="Address of /livez, /readyz, the dashboard (:PORT: loopback).")] = None,
    drain_delay: Annotated[float | None, Opt(help="Seconds to keep serving after SIGTERM.")] = None,
    admin_token: Annotated[str | None, Opt(help="Token the admin listener requires off loopback.")] = None,
    admin_token_file: Annotated[str | None, Opt(help="File holding the admin token.")] = None,
    env_file: Annotated[list[str] | None, Opt(help="dotenv file loaded into the app's processes (repeatable).")] = None,
    log_format: Annotated[str | None, Opt(help="text or json.")] = None,
    metrics: Annotated[bool | None, Opt("--metrics/--no-metrics", help="Request metrics and the app's.")] = None,
    autoscale: Annotated[str | None, Opt(help="MIN:MAX: grow and shrink the pool within this range.")] = None,
    target_utilisation: Annotated[str | None, Opt(help="LOW:HIGH utilisation band, percent.")] = None,
    autoscale_cooldown: Annotated[float | None, Opt(help="Seconds of low use before the pool shrinks.")] = None,
    config: Annotated[str | None, Opt("--config", help="corral.toml or pyproject.toml to read.")] = None,
) -> Resolved:
    """Serve APP from a supervised pool of worker processes (all options also via CORRAL_* or corral.toml)."""
    given = dict(locals())
    config_file = given.pop("config")
    given["app"] = given.pop("app_path")
    cli_values: dict[str, Any] = {key: value for key, value in given.items() if key in FIELDS}
    return _with_env_files(load_settings(cli_values, config=config_file), cli_values, config_file)


def _with_env_files(resolved: Resolved, cli_values: dict[str, Any], config_file: str | None) -> Resolved:
    """Check the --env-file files now (one line, exit 2), and apply their CORRAL_* variables as the
    environment's (the real environment wins)."""
    from corral.envfile import corral_variables, read_env_files

    if not resolved.settings.env_file:
        return resolved
    own = corral_variables(read_env_files(resolved.settings.env_file))
    # The real environment wins; a file cannot name other files (they are read already).
    own = {key: value for key, value in own.items() if key not in os.environ and key.upper() != "CORRAL_ENV_FILE"}
    if not own:
        return resolved
    again = load_settings(cli_values, config=config_file, environ={**own, **os.environ})
    for key, source in again.sources.items():
        if source.removeprefix("env ") in own:
            again.sources[key] = f"{source} (--env-file)"
    return again


SECONDS = "SECONDS"
METAVARS = {
    "app_dir": "PATH", "name": "NAME", "bind": "HOST:PORT", "workers": "N|auto", "control": "PATH",
    "state_dir": "PATH", "timeout": SECONDS, "graceful_timeout": SECONDS, "startup_timeout": SECONDS,
    "crash_limit": "N", "crash_window": SECONDS, "backoff_max": SECONDS, "max_requests": "N",
    "max_requests_jitter": "N", "max_memory": "SIZE", "http": "auto|h11|httptools", "lifespan": "auto|on|off",
    "log_level": "LEVEL", "keep_alive": SECONDS, "header_timeout": SECONDS,
    "max_request_line": "BYTES", "max_request_head": "BYTES", "max_headers": "N", "https": "DOMAIN",
    "http_bind": "HOST:PORT",
    "acme_directory": "URL", "acme_email": "EMAIL", "acme_ca_bundle": "PATH", "acme_challenges": "CHALLENGE",
    "certfile": "PATH", "keyfile": "PATH", "forwarded_allow_ips": "CIDR", "user": "USER", "group": "GROUP",
    "prestart": "COMMAND", "prestart_timeout": SECONDS, "prestart_lock": "file:PATH|postgresql://URL",
    "release": "ID", "admin_bind": "HOST:PORT", "drain_delay": SECONDS, "admin_token": "TOKEN",
    "admin_token_file": "PATH", "env_file": "PATH", "log_format": "text|json", "autoscale": "MIN:MAX",
    "target_utilisation": "LOW:HIGH", "config": "PATH",
}
OTHER_METAVARS = {
    "out": "DIR", "working_directory": "DIR", "root": "DIR", "wait": SECONDS, "import_timeout": SECONDS,
    "image": "IMAGE", "base_image": "IMAGE", "build_image": "IMAGE", "postgres_image": "IMAGE",
    "namespace": "NAMESPACE", "replicas": "N", "min_replicas": "N", "max_replicas": "N", "cpu_target": "PERCENT",
    "ingress_class": "CLASS", "gateway": "[NAMESPACE/]NAME", "cluster_issuer": "ISSUER", "memory": "SIZE",
    "cpu": "CPU",
}
DEFAULT_TEXT = {"acme_directory": "Let's Encrypt", "workers": "auto: from the CPUs or CPU quota"}


def _readable(command: Any) -> Any:
    """Help that reads like the docs: HOST:PORT, SECONDS, SIZE instead of Python types, and each default
    (the parameters themselves default to None, so that the environment and the config file can apply)."""
    defaults = {name: field.get_default(call_default_factory=True) for name, field in Settings.model_fields.items()}
    for param in command.params:
        name = param.name or ""
        if param.param_type_name == "argument":
            param.metavar = "APP"
            param.display_type_rich = lambda ctx: None  # the help already says what APP is, no "<str>"
            continue
        if param.param_type_name != "option":
            continue
        default = DEFAULT_TEXT.get(name, defaults.get(name))
        if param.is_flag:
            if param.secondary_opts and isinstance(default, bool):
                default = f"--{'' if default else 'no-'}{name.replace('_', '-')}"
            else:
                continue
        else:
            param.metavar = METAVARS.get(name, name.upper())
        if default not in (None, []):
            param.help = f"{param.help or ''}  [default: {_default_text(default)}]".strip()
    return command


def _readable_tree(command: Any) -> Any:
    """Readable metavars for the options of every other command (`corral run`'s are set when it parses)."""
    for param in command.params:
        if param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None  # its metavar and help say what it is, no "<str>"
        if param.param_type_name == "option" and not param.is_flag and param.metavar is None:
            name = param.name or ""
            param.metavar = OTHER_METAVARS.get(name) or METAVARS.get(name) or name.upper()
    for sub in getattr(command, "commands", {}).values():
        _readable_tree(sub)
    return command


def _default_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def run_command_parser() -> Any:
    return _readable(typer.main.get_command(_run_parser))


def parse_run_arguments(args: list[str]) -> Resolved:
    """Parse `corral run` arguments (for commands that take the same options, like the exports)."""
    command = run_command_parser()
    with command.make_context("corral run", list(args)) as ctx:
        result: Resolved = ctx.invoke(command.callback or (lambda **_: None), **ctx.params)
    return result


_run_parser = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
_run_parser.command()(run_options)


@app.command(
    "run",
    help=RUN_HELP,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def run_command(ctx: typer.Context) -> None:
    resolved = parse_run_arguments(ctx.args)
    from corral.manager.entry import exec_manager

    exec_manager(resolved.settings.options(), ctx.args)


@app.command("config", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def config_command(
    ctx: typer.Context,
    json_output: Annotated[bool, Opt("--json", help="Print JSON.")] = False,
) -> None:
    """Print the effective configuration of `corral run [options]` and where each value came from."""
    from corral.redact import redact_values

    resolved = parse_run_arguments(ctx.args)
    values = redact_values(resolved.settings.model_dump())
    if json_output:
        rows = {key: {"value": values[key], "source": resolved.sources[key]} for key in values}
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"corral configuration (file: {resolved.config_file or 'none'})")
    for column in ("option", "value", "source"):
        table.add_column(column)
    for key, value in values.items():
        table.add_row(option_label(key), json.dumps(value), resolved.sources[key])
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def option_label(field: str) -> str:
    """How `corral run` takes a setting: APP is its argument, every other one an option."""
    return "APP" if field == "app" else "--" + field.replace("_", "-")


@app.command("prestart", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def prestart_command(ctx: typer.Context) -> None:
    """Run only the pre-start steps, under --prestart-lock, and exit: 0, or 6 if a step failed.

    Takes the options of `corral run` (see `corral run --help`). For a Kubernetes Job or a
    systemd oneshot unit that runs the migrations before the servers start.
    """
    from corral.errors import ConfigError
    from corral.manager.main import setup_logging
    from corral.prestart import run_prestart

    settings = parse_run_arguments(ctx.args).settings.options()
    if not settings.prestart:
        raise ConfigError("no pre-start steps: give --prestart CMD, or prestart = [...] in corral.toml")
    setup_logging(settings.log_level, settings.log_format)
    run_prestart(settings)


ControlOpt = Annotated[str | None, Opt("--control", help="Control socket of the instance.")]
NameOpt = Annotated[str | None, Opt("--name", help="Instance name (default socket per name).")]


def _control_path(control: str | None, name: str | None) -> Path:
    """--control, else CORRAL_CONTROL / the config file, else the default socket of --name."""
    if control:
        return Path(control)
    resolved = load_settings({"name": name})
    if resolved.settings.control:
        return Path(resolved.settings.control)
    path = default_control_path(resolved.settings.name)
    check_default_dir(path)
    return path


def _ask(
    control: str | None, name: str | None, message: dict[str, Any], timeout: float | None = 30.0
) -> dict[str, Any]:
    answer = request(_control_path(control, name), message, timeout)
    if not answer.get("ok"):
        raise CorralError(str(answer.get("error", "the request failed")))
    return answer


@app.command("status")
def status_command(
    control: ControlOpt = None,
    name: NameOpt = None,
    json_output: Annotated[bool, Opt("--json", help="Print JSON.")] = False,
) -> None:
    """Show the workers of a running instance."""
    answer = _ask(control, name, {"cmd": "status"})
    answer.pop("ok", None)
    if json_output:
        print(json.dumps(answer, indent=2))
        return
    print_status(answer, Console(width=None if sys.stdout.isatty() else 160))  # piped: no truncated cells


@app.command("events")
def events_command(
    control: ControlOpt = None,
    name: NameOpt = None,
    follow: Annotated[bool, Opt("--follow", "-f", help="Keep printing new events.")] = False,
    json_output: Annotated[bool, Opt("--json", help="One JSON object per line.")] = False,
    limit: Annotated[int, Opt(min=1, max=500, help="How many of the latest events to print first.")] = 50,
) -> None:
    """Print what happened to the pool: starts, exits and their cause, hangs, recycles, reloads, scaling."""
    from corral.top_view import event_line, follow_events

    path = _control_path(control, name)
    console = Console(highlight=False, soft_wrap=True)

    def emit(event: dict[str, Any]) -> None:
        if json_output:
            print(json.dumps(event), flush=True)
        else:
            console.print(event_line(event))

    follow_events(lambda message: _ask_path(path, message), limit, follow, emit)


@app.command("top")
def top_command(
    control: ControlOpt = None,
    name: NameOpt = None,
    interval: Annotated[float, Opt(min=0.2, max=60, help="Seconds between refreshes.")] = 1.0,
) -> None:
    """A live view of the pool (keys: r reload, + / - scale, q quit)."""
    from corral.top_view import run_top

    path = _control_path(control, name)

    def ask(message: dict[str, Any]) -> dict[str, Any]:
        if message["cmd"] in ("status", "events"):
            return _ask_path(path, message)
        return request(path, message, timeout=None)  # an action's refusal is shown, not raised

    run_top(ask, interval)


def _ask_path(path: Path, message: dict[str, Any]) -> dict[str, Any]:
    answer = request(path, message, 30.0)
    if not answer.get("ok"):
        raise CorralError(str(answer.get("error", "the request failed")))
    return answer


@app.command("scale", context_settings={"ignore_unknown_options": True})
def scale_command(
    to: Annotated[str, typer.Argument(metavar="N|+K|-K", help="Worker count, or a change of it.")],
    control: ControlOpt = None,
    name: NameOpt = None,
) -> None:
    """Change the number of workers of a running instance."""
    if not re.fullmatch(r"\s*[+-]?\d{1,9}\s*", to):
        raise ConfigError(f"expected N, +K or -K workers, got {to!r}")
    print(_ask(control, name, {"cmd": "scale", "to": to})["message"])


@app.command("reload")
def reload_command(
    control: ControlOpt = None,
    name: NameOpt = None,
    timeout: Annotated[
        float, Opt(help="Seconds to wait for the reload's answer (it goes on in the instance after that).")
    ] = 600.0,
) -> None:
    """Roll out the current code: new workers first, then the old ones drain. Waits until done."""
    if not 0 < timeout <= 86400:
        raise ConfigError(f"--timeout must be from 0 to 86,400 seconds, got {timeout:g}")
    print(_ask(control, name, {"cmd": "reload"}, timeout=timeout)["message"])


@app.command("stop")
def stop_command(
    control: ControlOpt = None,
    name: NameOpt = None,
    now: Annotated[bool, Opt("--now", help="Stop at once instead of draining.")] = False,
    wait: Annotated[float, Opt(help="Seconds to wait for the instance to exit.")] = 120.0,
) -> None:
    """Stop a running instance gracefully (in-flight requests finish) and wait for it to exit."""
    answer = _ask(control, name, {"cmd": "stop", "now": now})
    pid = int(answer["manager_pid"])
    deadline = time.monotonic() + wait
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() > deadline:
            raise CorralError(f"the instance (pid {pid}) is still stopping after {wait:g} s")
        time.sleep(0.1)
    print(f"stopped (manager pid {pid})")


EXPORT_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
OutOpt = Annotated[Path | None, Opt("--out", help="Write the files into DIR instead of printing them.")]
SocketOpt = Annotated[bool, Opt("--socket", help="Also a socket unit: systemd opens the --bind addresses.")]
WorkdirOpt = Annotated[
    Path | None, Opt("--working-directory", help="Directory the service runs in (default: this one).")
]

export_app = typer.Typer(
    help="Write what runs `corral run` on startup: systemd units, a Dockerfile, Compose, Kubernetes.",
    no_args_is_help=True,
)
app.add_typer(export_app, name="export")


def _systemd_units(ctx: typer.Context, socket: bool, working_directory: Path | None) -> Any:
    from corral.export import systemd

    settings = parse_run_arguments(ctx.args).settings
    options = systemd.SystemdOptions(
        working_directory=working_directory or Path.cwd(),
        executable=systemd.corral_executable(),
        socket=socket,
    )
    return systemd.render(settings, options)


@export_app.command("systemd", context_settings=EXPORT_CONTEXT)
def export_systemd_command(
    ctx: typer.Context, out: OutOpt = None, socket: SocketOpt = False, working_directory: WorkdirOpt = None
) -> None:
    """A systemd service unit running `corral run [APP] [options]` (takes every option of `corral run`).

    Type=notify with a watchdog, restarts on failure, hardened; --user sets User= (default: you).
    """
    from corral.export.common import emit

    units = _systemd_units(ctx, socket, working_directory)
    emit(units.files, out)
    if units.env_file:
        hint = f"put {', '.join(f'{key}=...' for key in units.secrets)} in {units.env_file} (mode 0600)"
        print(f"corral: secrets are not in the unit: {hint}", file=sys.stderr)


@export_app.command("docker", context_settings=EXPORT_CONTEXT)
def export_docker_command(
    ctx: typer.Context,
    out: OutOpt = None,
    base_image: Annotated[
        str | None, Opt(help="Final stage image (default: python:X.Y-slim, X.Y from requires-python).")
    ] = None,
    build_image: Annotated[str | None, Opt(help="Build stage image (default: python:X.Y), the same Python.")] = None,
) -> None:
    """A Dockerfile and .dockerignore running `corral run [APP] [options]`.

    Takes every option of `corral run`; loopback addresses become all interfaces in the container.
    Corral installs from a wheel of this installation written beside the Dockerfile, the versions
    from the project's lock file; the --env-file files stay out of the image (docker run --env-file).
    """
    from corral.export import common, docker

    settings = parse_run_arguments(ctx.args).settings
    plan = common.container_plan(settings, Path.cwd(), common.app_environment(settings, Path.cwd()))
    options = docker.DockerOptions(Path.cwd(), base_image, build_image, out)
    common.emit(docker.render(plan, options), out)


@export_app.command("compose", context_settings=EXPORT_CONTEXT)
def export_compose_command(
    ctx: typer.Context,
    out: OutOpt = None,
    image: Annotated[str | None, Opt(help="Tag of the image built (default: NAME:latest).")] = None,
    postgres_image: Annotated[str, Opt(help="Image of the PostgreSQL service.")] = "postgres:17",
) -> None:
    """A Compose file: the app, its pre-start steps as a one-shot service, PostgreSQL for a local lock.

    Takes every option of `corral run`. Uses the Dockerfile of `corral export docker`.
    """
    from corral.export import common, compose

    settings = parse_run_arguments(ctx.args).settings
    plan = common.container_plan(settings, Path.cwd(), common.app_environment(settings, Path.cwd()))
    common.emit(compose.render(plan, compose.ComposeOptions(image, postgres_image, Path.cwd(), out)), out)


@export_app.command("kubernetes", context_settings=EXPORT_CONTEXT)
def export_kubernetes_command(
    ctx: typer.Context,
    out: OutOpt = None,
    image: Annotated[str | None, Opt(help="Container image (default: NAME:latest).")] = None,
    namespace: Annotated[str | None, Opt(help="Namespace of every resource.")] = None,
    replicas: Annotated[int | None, Opt(help="A fixed number of pods instead of the autoscaler.")] = None,
    min_replicas: Annotated[int, Opt(help="Fewest pods the autoscaler keeps.")] = 2,
    max_replicas: Annotated[int, Opt(help="Most pods the autoscaler starts.")] = 10,
    cpu_target: Annotated[int, Opt(help="Autoscaler target: average CPU use, % of the request.")] = 70,
    ingress_class: Annotated[str | None, Opt(help="ingressClassName of the Ingress.")] = None,
    host: Annotated[
        list[str] | None, Opt("--host", help="Host name of the Ingress or HTTPRoute (repeatable; default: --https).")
    ] = None,
    secret_values: Annotated[
        bool, Opt("--secret-values", help="Write the env file's secret values into secret.yaml (default: keys).")
    ] = False,
    secret_key: Annotated[
        list[str] | None, Opt("--secret-key", help="A variable of --env-file to keep in the Secret (repeatable).")
    ] = None,
    gateway: Annotated[str | None, Opt(help="An HTTPRoute to this Gateway (NAME or NAMESPACE/NAME).")] = None,
    cluster_issuer: Annotated[str | None, Opt(help="cert-manager ClusterIssuer for --https hosts.")] = None,
    memory: Annotated[str | None, Opt(help="Memory request and limit of a pod (default: measured).")] = None,
    cpu: Annotated[str | None, Opt(help="CPU request of a pod (default: 500m per worker).")] = None,
    import_timeout: Annotated[float, Opt(help="Seconds the measuring import may take.")] = 300.0,
) -> None:
    """Deployment, Service, autoscaler, disruption budget, Ingress or HTTPRoute, and a pre-start Job.

    Takes every option of `corral run`; one worker per pod unless --workers is given. The memory
    comes from `corral check` (the app is imported here) unless --memory is given.
    """
    import dataclasses

    from corral.check import FALLBACK, estimate_memory, measure
    from corral.config import parse_size
    from corral.errors import ConfigError
    from corral.export import common, kubernetes

    settings = parse_run_arguments(ctx.args).settings
    environment = common.app_environment(settings, Path.cwd(), tuple(secret_key or ()))
    plan = common.container_plan(settings, Path.cwd(), environment)
    options = kubernetes.KubernetesOptions(
        image=image or f"{common.resource_name(settings.name)}:latest",
        memory=0,
        memory_source="",
        cpu=cpu,
        namespace=namespace,
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu_target=cpu_target,
        ingress_class=ingress_class,
        gateway=gateway,
        cluster_issuer=cluster_issuer,
        hosts=tuple(host or ()),
        secret_values=secret_values,
    )
    kubernetes.validate(plan, options)
    common.refuse_loopback(plan.settings, plan.environment, "kubernetes")
    if memory:
        try:
            pod_memory, source = parse_size(memory), "from --memory"
        except ValueError as exc:
            raise ConfigError(f"invalid --memory: {exc}") from None
    else:
        try:
            footprint, source = measure(settings.options(), Path.cwd(), import_timeout), "measured by corral check"
        except CorralError as exc:
            footprint, source = FALLBACK, f"a fallback guess (corral check failed: {exc})"
            print(f"corral: memory not measured, using {source}; --memory sets it", file=sys.stderr)
        workers = kubernetes.pod_workers(settings)
        pod_memory = estimate_memory(footprint, workers, settings.preload, settings.max_memory)
    options = dataclasses.replace(options, memory=pod_memory, memory_source=source)
    common.emit(kubernetes.render(plan, options), out)


@app.command("install", context_settings=EXPORT_CONTEXT)
def install_command(
    ctx: typer.Context,
    socket: SocketOpt = False,
    working_directory: WorkdirOpt = None,
    root: Annotated[Path | None, Opt("--root", help="Install into this root directory (an image).")] = None,
    now: Annotated[bool, Opt("--now/--no-now", help="Start the service now.")] = True,
) -> None:
    """Install `corral run [APP] [options]` as a systemd service and enable it.

    Takes every option of `corral run`, and those of `corral export systemd`.
    """
    from corral.export.install import install

    units = _systemd_units(ctx, socket, working_directory)
    for line in install(units, root=root, now=now):
        print(line)


@app.command("check", context_settings=EXPORT_CONTEXT)
def check_command(
    ctx: typer.Context,
    json_output: Annotated[bool, Opt("--json", help="Print JSON.")] = False,
    import_timeout: Annotated[float, Opt(help="Seconds the import may take.")] = 300.0,
) -> None:
    """Import APP in a fresh interpreter and measure it: memory (RSS, USS, PSS) and import time.

    Takes the options of `corral run`; the estimate is for its --workers.
    """
    from corral.check import estimate_memory, expected_memory, measure, report
    from corral.manager.main import worker_count

    settings = parse_run_arguments(ctx.args).settings.options()
    footprint = measure(settings, Path.cwd(), import_timeout)
    workers = worker_count(settings)[0]
    if json_output:
        need = expected_memory(footprint, workers, settings.preload, settings.max_memory)
        budget = estimate_memory(footprint, workers, settings.preload, settings.max_memory)
        print(json.dumps({**footprint.to_json(), "workers": workers, "estimated_memory": need,
                          "memory_budget": budget}, indent=2))
        return
    Console().print(report(footprint, workers, settings))


@app.command("trust", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def trust_command(
    ctx: typer.Context,
    install: Annotated[bool, Opt("--install", help="Install the root into the system trust store.")] = False,
) -> None:
    """Show where the local CA's root certificate is and how to trust it.

    Finds the CA of a running instance or the only one on this machine; --name or --state-dir choose.
    """
    from corral.tls.trust import find_ca, instructions
    from corral.tls.trust import install as install_root

    resolved = parse_run_arguments(ctx.args)
    settings = resolved.settings
    state_dir = Path(settings.state_dir) if settings.state_dir else None
    name = settings.name if resolved.sources["name"] != "default" else None
    ca = find_ca(state_dir, name)
    print(install_root(ca.root, f"corral-{ca.name}") if install else instructions(ca.root))


def main(argv: list[str] | None = None) -> None:
    """Entry point: errors become one line on stderr and a documented exit code."""
    command = _readable_tree(typer.main.get_command(app))
    try:
        code = command.main(args=argv, prog_name="corral", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        code = ExitCode.ERROR
    except CorralError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        code = exc.exit_code
    except typer.TyperException as exc:
        code = _usage_error(exc)
    except KeyboardInterrupt:
        code = 130
    sys.exit(int(code or 0))


def _usage_error(exc: typer.TyperException) -> int:
    """Typer's parsing errors (unknown option, bad value) as one line; a bare group prints its help."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        print(ctx.get_help())
        return int(ExitCode.USAGE)
    format_message = getattr(exc, "format_message", None)
    message = format_message() if callable(format_message) else str(exc)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    print(f"corral: {message}{hint}", file=sys.stderr)
    return int(getattr(exc, "exit_code", ExitCode.USAGE))
