"""Which config file applies (corral.toml, [tool.corral] of pyproject.toml, --config / CORRAL_CONFIG) and its
values. A name that exists but is not a readable regular file is refused, never skipped."""

from __future__ import annotations

import stat
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from corral.errors import ConfigError


def _kind(path: Path) -> str | None:
    """None for a regular file (through symlinks); else what `path` is instead, in words."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a dangling symlink" if path.is_symlink() else "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _usable(path: Path, what: str) -> bool:
    """True for a regular file, False when nothing is there; refuses anything else in one line."""
    kind = _kind(path)
    if kind == "missing":
        return False
    if kind is not None:
        raise ConfigError(f"{what} {path} is {kind}, not a file")
    return True


def find_config_file(explicit: str | None, cwd: Path) -> tuple[Path | None, bool]:
    """The file to read and whether it is a pyproject.toml (values under [tool.corral])."""
    if explicit:
        path = Path(explicit)
        if not _usable(path, "config file"):
            raise ConfigError(f"config file not found: {explicit}")
        return path, path.name == "pyproject.toml"
    if _usable(cwd / "corral.toml", "config file"):
        return cwd / "corral.toml", False
    pyproject = cwd / "pyproject.toml"
    if _usable(pyproject, "project file"):
        data = _read_toml(pyproject)
        tool = data.get("tool")
        if isinstance(tool, dict) and "corral" in tool:
            return pyproject, True
    return None, False


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from exc


def read_config_file(path: Path, is_pyproject: bool, known: Iterable[str]) -> dict[str, Any]:
    """The file's values by option name (`max-requests` and `max_requests` both work); unknown keys refused."""
    data = _read_toml(path)
    if is_pyproject:
        tool = data.get("tool", {})
        data = tool.get("corral", {}) if isinstance(tool, dict) else {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: [tool.corral] must be a table")
    names = set(known)
    values: dict[str, Any] = {}
    for key, value in data.items():
        field = key.replace("-", "_")
        if field not in names:
            raise ConfigError(f"{path}: unknown option {key!r}")
        values[field] = value
    return values
