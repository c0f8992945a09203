"""Turn the APP argument into an importable target, and import it (the import runs in a template or worker).

`resolve_target` only looks at the file system, so the manager can check APP without importing anything.
"""

from __future__ import annotations

import importlib
import json
import os
import pwd
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import CorralError, ExitCode

CANDIDATES = ("main.py", "app.py", "api.py", "app/main.py")
_MACHINERY = {__file__, importlib.__file__}


@dataclass(frozen=True)
class Target:
    module: str
    attr: str
    path: str  # the directory put first on sys.path

    def __str__(self) -> str:
        return f"{self.module}:{self.attr}"


class AppLoadError(CorralError):
    """The one-line cause in the message; the full traceback (when there is one) in `details`."""

    exit_code = ExitCode.APP_FAILED_TO_START

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def clip(text: str, limit: int = 32_000) -> str:
    """The end of a long text (a traceback's innermost frames matter most), at most `limit` bytes once JSON
    encoded (escapes included), so that it fits in a channel datagram."""
    keep = len(text)
    while len(json.dumps(text[len(text) - keep :])) > limit:
        keep //= 2
    return text if keep == len(text) else "...\n" + text[len(text) - keep :]


def format_traceback(exc: BaseException) -> str:
    """The full traceback as Python prints it, without the import machinery's frames (ours, importlib's)."""
    report = traceback.TracebackException.from_exception(exc)
    report.stack = traceback.StackSummary.from_list(
        [f for f in report.stack if f.filename not in _MACHINERY and not f.filename.startswith("<frozen importlib")]
    )
    return "".join(report.format())


def resolve_target(app: str | None, app_dir: str | None, cwd: Path) -> Target:
    base = (cwd / app_dir).resolve() if app_dir else cwd.resolve()
    if app_dir and not base.is_dir():
        raise CorralError(f"--app-dir {app_dir}: no such directory", ExitCode.USAGE)
    if not app:
        return _discover(base)
    spec, _, attr = app.partition(":") if not app.endswith(".py") else (app, "", "")
    if app.count(":") > 1 or (":" in app and not attr) or not spec:
        raise CorralError(f"bad APP {app!r}: expected module:attr, path/to/file.py or file.py:attr", ExitCode.USAGE)
    if attr and not all(part.isidentifier() for part in attr.split(".")):
        raise CorralError(f"bad APP {app!r}: {attr!r} is not an attribute name", ExitCode.USAGE)
    if spec.endswith(".py") or "/" in spec:
        return _from_file(base / spec, attr or "app", app)
    if not all(part.isidentifier() for part in spec.split(".")):
        raise CorralError(f"bad APP {app!r}: {spec!r} is not a module name", ExitCode.USAGE)
    if not attr:
        raise CorralError(f"bad APP {app!r}: expected module:attr (for example main:app)", ExitCode.USAGE)
    return Target(spec, attr, str(base))


def _discover(base: Path) -> Target:
    for candidate in CANDIDATES:
        if (base / candidate).is_file():
            return _from_file(base / candidate, "app", candidate)
    names = ", ".join(CANDIDATES)
    raise CorralError(f"no APP given and none of {names} found in {base}", ExitCode.USAGE)


def _from_file(path: Path, attr: str, given: str) -> Target:
    """A file inside packages is imported as package.module, from the directory above the top package."""
    if not path.is_file():
        raise CorralError(f"APP {given!r}: no such file {path}", ExitCode.USAGE)
    if path.suffix != ".py":
        raise CorralError(f"APP {given!r}: {path.name} is not a .py file", ExitCode.USAGE)
    path = path.resolve()
    parts = [path.stem] if path.stem != "__init__" else []
    directory = path.parent
    while (directory / "__init__.py").is_file():
        parts.insert(0, directory.name)
        directory = directory.parent
    return Target(".".join(parts), attr, str(directory))


def import_app(target: Target, factory: bool = False) -> Any:
    """Import the ASGI app; any failure becomes an AppLoadError with a one-line cause."""
    if target.path not in sys.path:
        sys.path.insert(0, target.path)
    try:
        module = importlib.import_module(target.module)
    except BaseException as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == target.module:
            raise AppLoadError(f"cannot import {target}: {_why_not_found(target)}") from None
        if isinstance(exc, PermissionError) and exc.filename:
            raise AppLoadError(f"cannot import {target}: {exc.filename} is not readable by user {_user()!r}") from None
        raise AppLoadError(f"cannot import {target}: {_cause(exc, target.path)}", format_traceback(exc)) from None
    obj: Any = module
    for part in target.attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"cannot import {target}: module {target.module!r} has no {target.attr!r}") from None
    if factory:
        try:
            obj = obj()
        except BaseException as exc:
            raise AppLoadError(f"factory {target} failed: {_cause(exc, target.path)}", format_traceback(exc)) from None
    if not callable(obj):
        raise AppLoadError(f"{target} is not an ASGI app (not callable); use --factory for a factory")
    return obj


def _why_not_found(target: Target) -> str:
    """A module that exists but cannot be read (an app's files closed to the `--user` it runs as) is named as
    such rather than as missing."""
    base = Path(target.path)
    parts = target.module.split(".")
    candidates = [base.joinpath(*parts[:depth]) for depth in range(len(parts) + 1)]
    candidates.append(base.joinpath(*parts).with_suffix(".py"))
    for candidate in candidates:
        if _unreadable(candidate):
            return f"{candidate} is not readable by user {_user()!r}"
    return f"no module named {target.module!r}"


def _unreadable(path: Path) -> bool:
    """`path` exists, but this user may not read it (or, for a directory, list and enter it)."""
    try:
        is_directory = path.is_dir()
        if not is_directory and not path.exists():
            return False
    except PermissionError:  # the directory above cannot be entered
        return True
    return not os.access(path, os.R_OK | os.X_OK if is_directory else os.R_OK)


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _cause(exc: BaseException, app_path: str) -> str:
    """'SyntaxError: invalid syntax (main.py, line 3)': the exception's first line and where in the app it happened."""
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    lines = [line for line in traceback.format_exception_only(type(exc), exc) if line.strip()]
    first = lines[0].strip().splitlines()[0] if lines else type(exc).__name__
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    inside_app = [f for f in frames if f.filename.startswith(app_path + "/")]
    candidates = inside_app or frames
    where = f" ({candidates[-1].filename}, line {candidates[-1].lineno})" if candidates else ""
    return f"{first}{where}"
