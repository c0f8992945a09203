"""The `corral` command line as a typer app: every command, its help, and the one-line usage errors.

`corral run`'s options come from their declaration (`cli_run.py`); the commands that talk to a running
instance from theirs (`cli_control.COMMANDS`); the exports are in `cli_export.py`. `corral.cli.main` runs the
usual invocations of the client commands without this module (typer costs more than the rest of them).
"""

from __future__ import annotations

import inspect
import json
import platform
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from corral import __version__, cli_control
from corral.cli_export import EXPORT_CONTEXT, SocketOpt, WorkdirOpt, export_app, systemd_units
from corral.cli_run import option_label, parse_run_arguments, run_command_parser
from corral.errors import ConfigError, CorralError, ExitCode

__all__ = ["app", "main", "option_label", "parse_run_arguments", "run_command_parser"]

app = typer.Typer(
    name="corral",
    help="Run a Python ASGI web API in production with one command.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(export_app, name="export")
Opt = typer.Option


def _client_command(func: Any, params: tuple[cli_control.Param, ...]) -> Any:
    """A typer command with the parameters `params` declare, calling `func`."""

    def command(**values: Any) -> None:
        func(**values)

    signature = []
    for param in params:
        if not param.flags:
            info: Any = typer.Argument(metavar=param.metavar, help=param.help)
            kind: Any = param.kind
        else:
            kind = param.kind if param.default is not None else param.kind | None
            info = typer.Option(*param.flags, help=param.help, metavar=param.metavar or None)
        default = inspect.Parameter.empty if param.default is ... else param.default
        signature.append(inspect.Parameter(param.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                           annotation=Annotated[kind, info]))  # fmt: skip
    command.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    command.__annotations__ = {param.name: param.annotation for param in signature}
    command.__doc__ = func.__doc__
    return command


for _name, (_func, _params) in cli_control.COMMANDS.items():
    app.command(_name, context_settings={"ignore_unknown_options": True} if _name == "scale" else None)(
        _client_command(_func, _params)
    )
RUN_HELP = "Serve APP from a supervised pool of worker processes."
OTHER_METAVARS = {
    "out": "DIR", "working_directory": "DIR", "root": "DIR", "wait": "SECONDS", "import_timeout": "SECONDS",
    "image": "IMAGE", "base_image": "IMAGE", "build_image": "IMAGE", "postgres_image": "IMAGE",
    "namespace": "NAMESPACE", "replicas": "N", "min_replicas": "N", "max_replicas": "N", "cpu_target": "PERCENT",
    "ingress_class": "CLASS", "gateway": "[NAMESPACE/]NAME", "cluster_issuer": "ISSUER", "memory": "SIZE",
    "cpu": "CPU", "control": "PATH", "name": "NAME", "timeout": "SECONDS", "interval": "SECONDS", "limit": "N",
    "host": "HOST", "secret_key": "KEY",
}


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


def _readable_tree(command: Any) -> Any:
    """Readable metavars for the options of every other command (`corral run`'s are set when it parses)."""
    for param in command.params:
        if param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None  # its metavar and help say what it is, no "<str>"
        if param.param_type_name == "option" and not param.is_flag and param.metavar is None:
            name = param.name or ""
            param.metavar = OTHER_METAVARS.get(name) or name.upper()
    for sub in getattr(command, "commands", {}).values():
        _readable_tree(sub)
    return command


@app.command(
    "run",
    help=RUN_HELP,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def run_command(ctx: typer.Context) -> None:
    resolved = parse_run_arguments(ctx.args)
    from corral.manager.entry import exec_manager

    exec_manager(resolved.settings.options(), ctx.args)


@app.command(
    "dev",
    help="Serve APP for development: reload on each change to its source, the old code serving until the new "
    "code answers. Takes every option of `corral run` (see `corral run --help`); defaults: one worker, "
    "loopback, access log, --local-ca for --https (on 127.0.0.1:8443).",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def dev_command(ctx: typer.Context) -> None:
    from corral.cli_run import dev_options
    from corral.manager.entry import exec_manager

    resolved = parse_run_arguments(ctx.args, dev=True)
    exec_manager(dev_options(resolved), ctx.args, command="dev")


@app.command("config", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def config_command(
    ctx: typer.Context,
    json_output: Annotated[bool, Opt("--json", help="Print JSON.")] = False,
) -> None:
    """Print the effective configuration of `corral run [options]` and where each value came from."""
    from rich.console import Console
    from rich.table import Table

    from corral.redact import redact_values
    from corral.tls.plan import http_binds

    resolved = parse_run_arguments(ctx.args)
    values = redact_values(resolved.settings.model_dump())
    # The listeners `corral run` opens, defaults included (--https alone: 443, and 80 for HTTP-01).
    run = resolved.settings.options()
    values |= {"bind": run.bind, "http_bind": http_binds(run)}
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


@app.command("prestart", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def prestart_command(ctx: typer.Context) -> None:
    """Run only the pre-start steps, under --prestart-lock, and exit: 0, or 6 if a step failed.

    Takes the options of `corral run` (see `corral run --help`). For a Kubernetes Job or a
    systemd oneshot unit that runs the migrations before the servers start.
    """
    from corral.manager.main import setup_logging
    from corral.prestart import run_prestart

    settings = parse_run_arguments(ctx.args).settings.options()
    if not settings.prestart:
        raise ConfigError("no pre-start steps: give --prestart CMD, or prestart = [...] in corral.toml")
    setup_logging(settings.log_level, settings.log_format)
    run_prestart(settings)


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

    units = systemd_units(ctx, socket, working_directory)
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
    from rich.console import Console

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
