"""Which control socket a client command talks to, resolved like `corral run` resolves it but without
validating every other option (pydantic would cost a status call more than the rest of it).

--control, else `control` from CORRAL_CONTROL or the config file, else the default socket of the name
(--name, CORRAL_NAME, the config file, `corral`), whose directory must be private.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.errors import ConfigError

_DEFAULT_NAME = "corral"


def _layered(
    field: str, given: str | None, environ: Mapping[str, str], file_values: dict[str, Any]
) -> tuple[Any, str]:
    if given is not None:
        return given, "command line"
    variable = f"CORRAL_{field.upper()}"
    for key, value in environ.items():
        if key.upper() == variable:
            return value, f"env {variable}"
    if field in file_values:
        return file_values[field], "config file"
    return None, "default"


def control_path(control: str | None, name: str | None, environ: Mapping[str, str] | None = None) -> Path:
    if control:
        return Path(control)
    from corral.config_file import find_config_file, read_config_file
    from corral.control_client import check_default_dir, default_control_path
    from corral.options import specs
    from corral.validators import check_name

    environ = os.environ if environ is None else environ
    path, is_pyproject = find_config_file(environ.get("CORRAL_CONFIG"), Path.cwd())
    file_values = read_config_file(path, is_pyproject, specs()) if path else {}
    chosen, source = _layered("control", None, environ, file_values)
    if chosen:
        if not isinstance(chosen, str):
            raise ConfigError(f"invalid --control ({path if source == 'config file' else source}): expected a path")
        return Path(chosen)
    value, source = _layered("name", name, environ, file_values)
    value = _DEFAULT_NAME if value is None else value
    try:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        check_name(value)
    except ValueError as exc:
        raise ConfigError(f"invalid --name ({path if source == 'config file' else source}): {exc}") from None
    socket_path = default_control_path(value)
    check_default_dir(socket_path)
    return socket_path
