"""Turn the APP argument into an importable target, and import it (the import runs in a template or worker).

`resolve_target` only looks at the file system, so the manager can check APP without importing anything.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import CorralError, ExitCode

CANDIDATES = ("main.py", "app.py", "api.py", "app/main.py")


@dataclass(frozen=True)
class Target:
    module: str
    attr: str
    path: str  # the directory put first on sys.path

    def __str__(self) -> str:
        return f"{self.module}:{self.attr}"


class AppLoadError(CorralError):
    exit_code = ExitCode.APP_FAILED_TO_START


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
    except BaseException as exc:  # noqa: BLE001 - the app's import may raise anything, even SystemExit
        if isinstance(exc, ModuleNotFoundError) and exc.name == target.module:
            raise AppLoadError(f"cannot import {target}: no module named {target.module!r}") from None
        raise AppLoadError(f"cannot import {target}: {_cause(exc)}") from None
    obj: Any = module
    for part in target.attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"cannot import {target}: module {target.module!r} has no {target.attr!r}") from None
    if factory:
        try:
            obj = obj()
        except BaseException as exc:  # noqa: BLE001
            raise AppLoadError(f"factory {target} failed: {_cause(exc)}") from None
    if not callable(obj):
        raise AppLoadError(f"{target} is not an ASGI app (not callable); use --factory for a factory")
    return obj


def _cause(exc: BaseException) -> str:
    """'SyntaxError: invalid syntax (main.py, line 3)' — the exception and where in the user's code it happened."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    if isinstance(exc, SyntaxError):
        where = f" ({exc.filename}, line {exc.lineno})"
        return f"{type(exc).__name__}: {exc.msg}{where}"
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if "importlib" not in f.filename and f.filename != __file__]
    where = f" ({user[-1].filename}, line {user[-1].lineno})" if user else ""
    return f"{text[-1] if text else type(exc).__name__}{where}"
