"""The `corral` command: the usual invocations of the client commands (`status`, `scale`, `reload`, `stop`,
`events`, `top`) run from their declared parameters without importing typer; everything else, their `--help`
and any argument this parser does not take as given, goes to the typer app (`cli_app.py`), whose messages
are the reference."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any

from corral.errors import CorralError

_LAZY = {"app": "corral.cli_app", "option_label": "corral.cli_run", "parse_run_arguments": "corral.cli_run",
         "run_command_parser": "corral.cli_run"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


def client_call(args: list[str]) -> Callable[[], None] | None:
    """The client command `args` asks for, ready to run; None when the typer app should parse them."""
    from corral.cli_control import COMMANDS

    if not args or args[0] not in COMMANDS:
        return None
    func, params = COMMANDS[args[0]]
    by_flag = {flag: param for param in params for flag in param.flags}
    arguments = [param for param in params if not param.flags]
    values: dict[str, Any] = {param.name: param.default for param in params if param.flags}
    given: list[str] = []
    rest = iter(args[1:])
    options_done = False
    for arg in rest:
        if arg == "--" and not options_done:
            options_done = True
            continue
        if options_done or not arg.startswith("-") or (arguments and re.fullmatch(r"[+-]\d+", arg)):
            given.append(arg)
            continue
        flag, eq, value = arg.partition("=")
        param = by_flag.get(flag)
        if param is None or (param.kind is bool and eq):
            return None
        if param.kind is bool:
            values[param.name] = True
            continue
        if not eq:
            value = next(rest, None)  # type: ignore[assignment]
            if value is None:
                return None
        try:
            values[param.name] = param.kind(value)
        except ValueError:
            return None
    if len(given) != len(arguments):
        return None
    values.update({param.name: text for param, text in zip(arguments, given, strict=True)})
    return lambda: func(**values)


def main(argv: list[str] | None = None) -> None:
    """Entry point: errors become one line on stderr and a documented exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    call = client_call(args)
    if call is None:
        from corral.cli_app import main as typer_main

        typer_main(args)
        return
    try:
        call()
        code = 0
    except CorralError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        code = int(exc.exit_code)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `corral events --follow | head -1`: the reader is gone, and that is no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush goes nowhere
        code = 1
    sys.exit(code)
