"""`--env-file`: dotenv files whose variables go into the app's processes (templates, workers, pre-start steps).

Parsed with python-dotenv, imported only when a file is given. A variable already in the process
environment wins over the files (as python-dotenv and uvicorn do); a later file wins over an earlier
one. Variables named `CORRAL_*` configure Corral itself, like the same variables in the environment,
and are not passed to the app. Shared by the command line (checks the files, reads `CORRAL_*`), the
manager (the template's environment) and the exports (which keys to carry).

The kernel refuses to start a process whose one environment string (`KEY=VALUE`) is over MAX_ARG_STRLEN, or
whose environment and command line together are over ARG_MAX: both are checked here, before a start, so that
such a file is one line naming it (exit 2 at start, a refused reload later), never `Argument list too long`.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from corral.errors import ConfigError

CORRAL_PREFIX = "CORRAL_"
MAX_ARG_STRLEN = 32 * os.sysconf("SC_PAGE_SIZE")  # the kernel's limit on one string, its NUL included
STACK_CAP = 6 * 1024 * 1024  # the kernel never gives argv and envp more than 3/4 of its 8 MiB stack cap
POINTER = 8  # each string also costs the kernel one pointer on the new stack


class EnvLimitError(ConfigError):
    """An environment the kernel would refuse to start a process with."""

log = logging.getLogger("corral.envfile")

_last_good: dict[tuple[str, ...], dict[str, str]] = {}


def read_env_file(path: str | Path) -> dict[str, str]:
    """The variables of one dotenv file, in order; ConfigError (one line) if unreadable or malformed."""
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--env-file {path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--env-file {path}: not UTF-8 text") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            first = binding.original.string.strip().splitlines()[0] if binding.original.string.strip() else ""
            raise ConfigError(
                f"--env-file {path}: line {binding.original.line}: not KEY=VALUE: {first[:60]!r}"
            )
    values = dotenv_values(stream=io.StringIO(text), interpolate=True)
    return {key: "" if value is None else value for key, value in values.items()}


def read_env_files(paths: Sequence[str | Path]) -> dict[str, str]:
    """Every file's variables; a later file wins."""
    merged: dict[str, str] = {}
    for path in paths:
        values = read_env_file(path)
        check_value_sizes(path, values)
        merged.update(values)
    return merged


def check_value_sizes(path: str | Path, values: Mapping[str, str]) -> None:
    """Each `KEY=VALUE` within MAX_ARG_STRLEN, or EnvLimitError naming the file and the key."""
    for key, value in values.items():
        size = len(key.encode()) + len(value.encode()) + 2  # '=' and the NUL
        if size > MAX_ARG_STRLEN:
            raise EnvLimitError(
                f"--env-file {path}: {key} takes {size} bytes, over the kernel's limit of {MAX_ARG_STRLEN} bytes "
                "for one environment variable (MAX_ARG_STRLEN)"
            )


def arg_max() -> int:
    """The kernel's room for a new process's command line and environment (ARG_MAX: a quarter of the stack)."""
    limit = os.sysconf("SC_ARG_MAX")
    return STACK_CAP if limit <= 0 else min(limit, STACK_CAP)


def check_exec_size(argv: Sequence[str], env: Mapping[str, str], paths: Sequence[str]) -> None:
    """The command line and environment of a process to start fit in ARG_MAX, or EnvLimitError."""
    strings = [*argv, *(f"{key}={value}" for key, value in env.items())]
    size = sum(len(text.encode()) + 1 for text in strings) + POINTER * (len(strings) + 2)
    limit = arg_max()
    if size > limit:
        files = f"--env-file {', '.join(map(str, paths))}: " if paths else ""
        raise EnvLimitError(
            f"{files}the app's environment and command line take {size} bytes, over the kernel's limit of "
            f"{limit} bytes (ARG_MAX)"
        )


def corral_variables(values: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in values.items() if key.upper().startswith(CORRAL_PREFIX)}


def app_variables(values: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in values.items() if not key.upper().startswith(CORRAL_PREFIX)}


def app_environment(paths: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with the app's variables of `paths` added (the environment wins).

    Read again for every generation, so a reload picks up a changed file; if the file became
    unreadable or malformed since the last read, the last good values are kept and the cause logged; one
    over the kernel's limits raises EnvLimitError (those values cannot start a process).
    """
    env = dict(environ)
    if not paths:
        return env
    key = tuple(paths)
    try:
        values = app_variables(read_env_files(paths))
        _last_good[key] = values
    except EnvLimitError:
        raise  # the last good values would hide that the file as it is now cannot be used
    except ConfigError as exc:
        if key not in _last_good:
            raise
        log.error("%s; keeping the values read before", exc)
        values = _last_good[key]
    for name, value in values.items():
        env.setdefault(name, value)
    return env
