"""The options of `corral run` on the command line, made from their declaration (`corral.options`).

Every option is taken as text (a list for a repeatable one, a flag for a bool) and checked by `Settings`, so
that a value is judged the same way from the command line, `CORRAL_*` and the config file, with one message.
The parameters default to None, so that the environment and the config file can apply.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from contextvars import ContextVar
from typing import Annotated, Any

import typer

from corral.config import FIELDS, SPECS, TYPES, Resolved, default_of, load_settings
from corral.options import Options
from corral.tls.plan import https_enabled

CONFIG_HELP = "corral.toml or pyproject.toml to read."


def option_label(field: str) -> str:
    """How `corral run` takes a setting: APP is its argument, every other one an option."""
    return "APP" if field == "app" else "--" + field.replace("_", "-")


def _parameter(name: str) -> inspect.Parameter:
    spec, kind = SPECS[name], TYPES[name]
    flag = option_label(name)
    names = (flag, *spec.aliases, spec.short) if spec.short else (flag, *spec.aliases)
    info: Any
    if name == "app":
        kind, info = str | None, typer.Argument(metavar="[APP]", help=spec.help)
    elif kind in (bool, bool | None):
        negative = f"{flag}/--no-{flag[2:]}" if spec.negatable else flag
        kind, info = bool | None, typer.Option(negative, help=spec.help)
    elif typing_origin_is_list(kind):
        kind, info = list[str] | None, typer.Option(*names, help=spec.help)
    else:
        kind, info = str | None, typer.Option(*names, help=spec.help)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind, info])


def typing_origin_is_list(kind: Any) -> bool:
    return getattr(kind, "__origin__", None) is list


def run_options(**given: Any) -> Resolved:
    """Serve APP from a supervised pool of worker processes (all options also via CORRAL_* or corral.toml)."""
    config_file = given.pop("config", None)
    defaults = _DEFAULTS.get()
    cli_values = {key: value for key, value in given.items() if key in FIELDS}
    resolved = load_settings(cli_values, config=config_file, defaults=defaults)
    return _with_env_files(resolved, cli_values, config_file, defaults)


_config = inspect.Parameter(
    "config", inspect.Parameter.KEYWORD_ONLY, default=None,
    annotation=Annotated[str | None, typer.Option("--config", help=CONFIG_HELP)],
)  # fmt: skip
run_options.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [*(_parameter(name) for name in FIELDS), _config], return_annotation=Resolved
)
run_options.__annotations__ = {param.name: param.annotation for param in run_options.__signature__.parameters.values()}  # type: ignore[attr-defined]


def _with_env_files(
    resolved: Resolved, cli_values: dict[str, Any], config_file: str | None, defaults: dict[str, Any] | None
) -> Resolved:
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
    again = load_settings(cli_values, config=config_file, environ={**own, **os.environ}, defaults=defaults)
    for key, source in again.sources.items():
        if source.removeprefix("env ") in own:
            again.sources[key] = f"{source} (--env-file)"
    return again


def default_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _readable(command: Any) -> Any:
    """Help that reads like the docs: each option's placeholder (HOST:PORT, SECONDS, SIZE) and default."""
    for param in command.params:
        name = param.name or ""
        if param.param_type_name == "argument":
            param.metavar = "APP"
            param.display_type_rich = lambda ctx: None  # the help already says what APP is, no "<str>"
            continue
        if param.param_type_name != "option":
            continue
        if name == "config":
            param.metavar = "PATH"
            continue
        spec = SPECS[name]
        default = spec.default_text or default_of(name)
        if param.is_flag:
            if not spec.negatable:
                continue
            if not spec.default_text:
                default = f"--{'' if default else 'no-'}{name.replace('_', '-')}"
        else:
            param.metavar = spec.metavar or name.upper()
        if default not in (None, []):
            param.help = f"{param.help or ''}  [default: {default_text(default)}]".strip()
    return command


_run_parser = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
_run_parser.command()(run_options)


def run_command_parser() -> Any:
    return _readable(typer.main.get_command(_run_parser))


# `corral dev`: where an option is not given (command line, CORRAL_*, config file), these replace its default.
DEV_DEFAULTS: dict[str, Any] = {"workers": "1", "reload": True, "local_ca": True, "access_log": True}
DEV_HTTPS_BIND = "127.0.0.1:8443"
_DEFAULTS: ContextVar[dict[str, Any] | None] = ContextVar("defaults", default=None)


def parse_run_arguments(args: list[str], dev: bool = False) -> Resolved:
    """Parse `corral run` arguments (for commands that take the same options, like the exports); `dev`:
    with `corral dev`'s defaults."""
    command = run_command_parser()
    with command.make_context("corral dev" if dev else "corral run", list(args)) as ctx:
        token = _DEFAULTS.set(DEV_DEFAULTS if dev else None)
        try:
            result: Resolved = ctx.invoke(command.callback or (lambda **_: None), **ctx.params)
        finally:
            _DEFAULTS.reset(token)
    return result


def dev_options(resolved: Resolved) -> Options:
    """`corral dev`'s options: HTTPS on loopback (port 8443) unless a listener was given."""
    options = resolved.settings.options()
    named = ("bind", "host", "port", "uds", "fd")
    if https_enabled(options) and all(resolved.sources[name] == "default" for name in named):
        options = dataclasses.replace(options, bind=[DEV_HTTPS_BIND])
    return options
