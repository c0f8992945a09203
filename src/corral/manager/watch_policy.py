"""Which changes to the source reload the app in `corral dev` (`--reload`): pure functions, unit tested."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatch

# Directories whose files are never the app's source: tools' caches, version control, installed packages.
IGNORED_DIRS = frozenset({
    "__pycache__", ".git", ".hg", ".svn", ".venv", "venv", "site-packages", "node_modules", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", ".tox", ".nox",
})  # fmt: skip


def change_counts(parts: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> bool:
    """A changed path, as its parts below the watched directory: does it reload? Its name must match an
    `include` glob and no `exclude` glob; no directory on the way may be ignored or match an `exclude` glob."""
    if not parts:
        return False
    *directories, name = parts
    for directory in directories:
        if directory in IGNORED_DIRS or any(fnmatch(directory, pattern) for pattern in exclude):
            return False
    if name in IGNORED_DIRS or any(fnmatch(name, pattern) for pattern in exclude):
        return False
    return any(fnmatch(name, pattern) for pattern in include)

