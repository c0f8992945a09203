"""What a project tells an image: the Python it needs (`requires-python`) and its lock file.

The lock file may sit in the project or in a parent up to the repository root (a backend in a
monorepo, with `uv.lock` at the top). Its pinned versions become pip constraints: the image
installs what the project depends on, at the locked versions, and nothing the lock lists for
other platforms or groups.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from corral.errors import ConfigError

# Versions with official python:X.Y images that Corral runs on, newest first.
PYTHONS = ("3.14", "3.13", "3.12", "3.11")
LOCK_FILES = ("uv.lock", "poetry.lock", "pdm.lock")


def project_table(pyproject: Path) -> dict[str, object] | None:
    if not pyproject.is_file():
        return None
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{pyproject}: cannot read: {exc}") from None
    table = data.get("project")
    return table if isinstance(table, dict) else None


def choose_python(project: Path) -> tuple[str, str]:
    """(X.Y, why): the running Python if `requires-python` allows it, else the newest image that fits."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    table = project_table(project / "pyproject.toml") or {}
    spec_text = table.get("requires-python")
    if not isinstance(spec_text, str):
        return running, "the Python running this export (no requires-python)"
    try:
        spec = SpecifierSet(spec_text)
    except InvalidSpecifier:
        raise ConfigError(f"requires-python {spec_text!r} in pyproject.toml is not a version specifier") from None
    if f"{running}.0" in spec or running in spec:
        return running, f"requires-python {spec_text}"
    for version in PYTHONS:
        if spec.contains(f"{version}.0") or spec.contains(f"{version}.99"):
            return version, f"requires-python {spec_text}"
    raise ConfigError(
        f"requires-python {spec_text!r} allows none of Python {', '.join(reversed(PYTHONS))}, "
        "which Corral and the official images offer: give --base-image and --build-image"
    )


def repository_root(project: Path) -> Path:
    """The nearest directory at or above `project` holding .git; the project itself if none."""
    for directory in [project, *project.parents]:
        if (directory / ".git").exists():
            return directory
    return project


def find_lock(project: Path) -> Path | None:
    """The lock file of the project, looked for in it and then its parents up to the repository root."""
    project = project.resolve()
    root = repository_root(project)
    directory = project
    while True:
        for name in LOCK_FILES:
            if (directory / name).is_file():
                return directory / name
        requirements = sorted(directory.glob("requirements*.txt"), key=lambda p: (p.name != "requirements.txt", p.name))
        if requirements:
            return requirements[0]
        if directory == root or directory.parent == directory:
            return None
        directory = directory.parent


@dataclass(frozen=True)
class Pins:
    source: Path
    lines: list[str]  # name==version, one per locked package from an index


def read_pins(lock: Path, leave_out: set[str]) -> Pins:
    """The pinned versions of `lock` as constraint lines; `leave_out` names (normalised) are dropped."""
    if lock.suffix == ".txt":
        lines = [line.strip() for line in lock.read_text().splitlines()]
        kept = [line.split(" #")[0].split(";")[0].strip() for line in lines]
        pins = [line for line in kept if "==" in line and not line.startswith(("#", "-"))]
        pins = [line.split("\\")[0].strip() for line in pins]
    else:
        try:
            data = tomllib.loads(lock.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{lock}: cannot read the lock file: {exc}") from None
        packages = data.get("package", [])
        pins = [
            f"{package['name']}=={package['version']}"
            for package in packages
            if isinstance(package, dict) and "name" in package and "version" in package and _from_index(package)
        ]
    return Pins(lock, sorted({pin for pin in pins if normalise(pin.split("==")[0]) not in leave_out}))


def _from_index(package: dict[str, object]) -> bool:
    """uv: source = {registry = ...}; poetry: no source or a legacy index; pdm: no path/git/editable."""
    source = package.get("source")
    if isinstance(source, dict):
        return "registry" in source or source.get("type") == "legacy"
    return not any(key in package for key in ("path", "git", "editable", "url"))


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def requirement_names(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if match and not line.lstrip().startswith(("#", "-")):
            names.add(normalise(match.group(1)))
    return names
