"""Turn the APP argument into an importable target, and import it (the import runs in a template or worker).

`resolve_target` only looks at the file system, so the manager can check APP without importing anything.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import pwd
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from corral.errors import CorralError, ExitCode

CANDIDATES = ("main.py", "app.py", "api.py", "app/main.py")
_MACHINERY = {__file__, importlib.__file__}


@dataclass(frozen=True)
class Target:
    module: str
    attr: str
    path: str  # the directory put first on sys.path
    note: str = ""  # how discovery chose it, for the banner

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
    django = _django_project(base)
    if django is not None:
        return django
    for candidate in CANDIDATES:
        if (base / candidate).is_file():
            return _from_file(base / candidate, "app", candidate)
    names = ", ".join(CANDIDATES)
    raise CorralError(f"no APP given and none of {names} found in {base}", ExitCode.USAGE)


def _django_project(base: Path) -> Target | None:
    """`manage.py` beside a package with `asgi.py` or `wsgi.py` (the settings package `startproject` makes):
    its `application`, ASGI when both exist."""
    if not (base / "manage.py").is_file():
        return None
    found = [p.parent for name in ("asgi.py", "wsgi.py") for p in base.glob(f"*/{name}")]
    packages = sorted(p for p in found if (p / "__init__.py").is_file())
    for package in dict.fromkeys(packages):
        asgi, wsgi = (package / "asgi.py").is_file(), (package / "wsgi.py").is_file()
        chosen = "asgi" if asgi else "wsgi"
        note = f"Django project: {package.name}/{chosen}.py"
        if asgi and wsgi:
            note += f" picked over wsgi.py (ASGI preferred; APP {package.name}.wsgi:application for WSGI)"
        return Target(f"{package.name}.{chosen}", "application", str(base), note)
    return None


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
        raise AppLoadError(f"{target} is not an ASGI or WSGI app (not callable); use --factory for a factory")
    return obj


Interface = Literal["asgi", "wsgi"]


def app_interface(app: Any, forced: str, target: Target) -> Interface:
    """ASGI or WSGI, from how the callable is declared; `forced` (--interface) wins unless it is "auto".

    ASGI: a coroutine function or an object whose `__call__` is one (ASGI 3), a class (uvicorn's ASGI 2 or an
    awaitable ASGI 3 class), a plain callable of three arguments (scope, receive, send) or one (ASGI 2).
    WSGI: a plain callable of two (environ, start_response): Django's WSGIHandler, Flask, WhiteNoise.
    """
    if forced in ("asgi", "wsgi"):
        return "asgi" if forced == "asgi" else "wsgi"
    if inspect.isclass(app):
        return "asgi"
    call = app if inspect.isroutine(app) or isinstance(app, functools.partial) else type(app).__call__
    if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(app):
        return "asgi"
    try:
        parameters = list(inspect.signature(app).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: what uvicorn would assume
        return "asgi"
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return "asgi"
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(required) <= 2 <= len(positional):
        return "wsgi"
    if len(required) <= 3 <= len(positional) or len(required) <= 1 <= len(positional):
        return "asgi"
    raise AppLoadError(
        f"{target} is neither an ASGI app (scope, receive, send) nor a WSGI app (environ, start_response): "
        f"it takes {_arguments(len(required))}; use --interface to say which it is"
    )


def _arguments(count: int) -> str:
    return "no arguments" if count == 0 else "1 argument" if count == 1 else f"{count} arguments"


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
