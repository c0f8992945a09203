"""`--env-file`: dotenv files whose variables go into the app's processes (templates, workers, pre-start steps).

Parsed with python-dotenv, imported only when a file is given. A variable already in the process
environment wins over the files (as python-dotenv and uvicorn do); a later file wins over an earlier
one. Variables named `CORRAL_*` configure Corral itself, like the same variables in the environment,
and are not passed to the app. Shared by the command line (checks the files, reads `CORRAL_*`), the
manager (the template's environment) and the exports (which keys to carry).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from corral.errors import ConfigError

CORRAL_PREFIX = "CORRAL_"

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
        merged.update(read_env_file(path))
    return merged


def corral_variables(values: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in values.items() if key.upper().startswith(CORRAL_PREFIX)}


def app_variables(values: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in values.items() if not key.upper().startswith(CORRAL_PREFIX)}


def app_environment(paths: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with the app's variables of `paths` added (the environment wins).

    Read again for every generation, so a reload picks up a changed file; if the file became
    unreadable or malformed since the last read, the last good values are kept and the cause logged.
    """
    env = dict(environ)
    if not paths:
        return env
    key = tuple(paths)
    try:
        values = app_variables(read_env_files(paths))
        _last_good[key] = values
    except ConfigError as exc:
        if key not in _last_good:
            raise
        log.error("%s; keeping the values read before", exc)
        values = _last_good[key]
    for name, value in values.items():
        env.setdefault(name, value)
    return env
