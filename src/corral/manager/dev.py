"""`corral dev` (`--reload`): watch the app's source and roll a reload on each change.

The watcher runs in the manager, in a thread of its own, and only in this mode: `watchfiles` is imported
here, and this module only when `--reload` is on, so a production manager never carries it (see
docs/architecture.md, *Development mode*). Each batch of changes (watchfiles debounces them: 50 ms of quiet)
asks the supervisor for an ordinary rolling reload: the new code is imported in a new generation while the
old one serves, and a generation that fails to import or start is refused, its error printed once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from corral.discovery import Target
from corral.manager.watch_policy import change_counts
from corral.options import Options

log = logging.getLogger("corral")


def watched_directories(settings: Options, target: Target) -> list[Path]:
    """The APP's top package (or, for a module that is no package, its directory) and every --reload-dir."""
    base = Path(target.path)
    package = base / target.module.split(".")[0]
    roots = [package if (package / "__init__.py").is_file() else base]
    roots += [Path(directory).resolve() for directory in settings.reload_dir]
    unique: list[Path] = []
    for root in roots:
        if not any(root == other or root.is_relative_to(other) for other in unique):
            unique = [other for other in unique if not other.is_relative_to(root)] + [root]
    return unique


class SourceFilter:
    """Whether a changed path reloads: the globs and ignored directories (`watch_policy`), virtual
    environments whatever their name (a `pyvenv.cfg` above the file; the one running Corral is one) and the
    state directory."""

    def __init__(self, roots: Iterable[Path], settings: Options, skipped: Iterable[Path]) -> None:
        self.roots = list(roots)
        self.include = list(settings.reload_include)
        self.exclude = list(settings.reload_exclude)
        self.skipped = [path.resolve() for path in skipped]
        self._venvs: dict[Path, bool] = {}

    def __call__(self, _change: Any, text: str) -> bool:
        path = Path(text)
        root = next((root for root in self.roots if path.is_relative_to(root)), None)
        if root is None or any(path.is_relative_to(skipped) for skipped in self.skipped):
            return False
        parts = path.relative_to(root).parts
        if not change_counts(parts, self.include, self.exclude):
            return False
        return not any(self._is_venv(root.joinpath(*parts[:depth])) for depth in range(1, len(parts)))

    def _is_venv(self, directory: Path) -> bool:
        if directory not in self._venvs:
            self._venvs[directory] = (directory / "pyvenv.cfg").is_file()
        return self._venvs[directory]


class SourceWatcher:
    """A thread that waits on file changes and hands each batch to the manager's loop, which reloads."""

    def __init__(self, roots: list[Path], accept: Callable[[Any, str], bool], reload: Callable[[], Any]) -> None:
        self.roots = roots
        self.accept = accept
        self.reload = reload
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reloading: asyncio.Future[int] | None = None
        self._pending = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        shown = ", ".join(str(root) for root in self.roots)
        log.info("watching %s for changes", shown)
        threading.Thread(target=self._watch, name="corral-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        import watchfiles

        loop = self._loop
        assert loop is not None
        for changes in watchfiles.watch(
            *self.roots, watch_filter=self.accept, debounce=1600, step=50, stop_event=self._stop,
            rust_timeout=500, yield_on_timeout=False, raise_interrupt=False,
        ):
            if self._stop.is_set():
                return
            paths = sorted({path for _, path in changes})
            loop.call_soon_threadsafe(self.changed, paths)

    def changed(self, paths: list[str]) -> None:
        names = ", ".join(_short(path, self.roots) for path in paths[:3]) + (" ..." if len(paths) > 3 else "")
        if self._reloading is not None and not self._reloading.done():
            # the reload in progress imports the code as it was when it began: one more follows it
            log.info("changed: %s; reloading once the reload in progress ends", names)
            self._pending = True
            return
        log.info("changed: %s; reloading", names)
        self._start()

    def _start(self) -> None:
        self._reloading = self.reload()
        self._reloading.add_done_callback(self._reloaded)

    def _reloaded(self, future: asyncio.Future[int]) -> None:
        if not future.cancelled():
            future.exception()  # the supervisor logged the outcome (a refused reload with its traceback)
        if self._pending:
            self._pending = False
            self._start()


def start_watcher(
    settings: Options, target: Target, state_dir: Path | None, reload: Callable[[], Any]
) -> SourceWatcher:
    """Watch the app's source from now on (in the running loop); each change calls `reload`."""
    roots = watched_directories(settings, target)
    watcher = SourceWatcher(roots, SourceFilter(roots, settings, [state_dir] if state_dir else []), reload)
    watcher.start()
    return watcher


def _short(path: str, roots: list[Path]) -> str:
    for root in roots:
        if Path(path).is_relative_to(root):
            return str(Path(path).relative_to(root))
    return path
