"""Steps that run before serving (migrations, seeding), once across instances.

Runs in the manager before any worker exists. Each step is a shell command (`/bin/sh -c`, so
`alembic upgrade head && python seed.py` works), run in its own process group under a small
guard process; its output is logged line by line as `prestart[N] | ...`. A lock serialises the
steps across instances (`prestart_locks.py`). With a release id, the first instance to hold the lock
runs the steps and records the release as done; the others find the record and skip.

Run as `python -m corral.prestart PARENT_PID COMMAND` this module is the guard: it runs COMMAND
in its own process group and kills that group when the manager dies, so no step outlives it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from corral.errors import ConfigError, CorralError, ExitCode
from corral.prestart_locks import open_lock
from corral.redact import mask_url

if TYPE_CHECKING:
    from corral.options import Options

log = logging.getLogger("corral.prestart")

# How long to wait for a step's output to end once its process group is gone.
OUTPUT_GRACE = 5.0


LAST_RUN: dict[str, float | bool] = {}  # the latest run in this process: seconds, ok (for /metrics)


class PrestartStopped(CorralError):
    """The steps were stopped on request (`corral stop`, SIGTERM): not a failure."""

    exit_code = ExitCode.OK


class Progress:
    """Where the steps are, for `corral status` while they run (read from another thread), and `stop()`, which
    kills the running step's process group from that thread and runs no further step."""

    def __init__(self, steps: int, on_change: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.steps = steps
        self.step = 0  # the step running or last run, from 1
        self.command = ""  # as shown: URL passwords masked
        self.since = time.monotonic()  # when the step (or the wait for the lock) began
        self.waiting_for: str | None = None  # the lock another instance holds, while we wait for it
        self.stopped = False
        self.on_change = on_change  # (message, fields) of each change, for the event log
        self._group: int | None = None
        self._mutex = threading.Lock()

    def stop(self) -> None:
        with self._mutex:
            self.stopped = True
            group = self._group
        if group is not None:
            _kill_group(group)

    def snapshot(self) -> dict[str, Any]:
        with self._mutex:
            return {"step": self.step, "steps": self.steps, "command": self.command or None,
                    "waiting_for": self.waiting_for, "seconds": round(time.monotonic() - self.since, 1)}

    def note(self, message: str, **fields: Any) -> None:
        if self.on_change is not None:
            self.on_change(message, fields)

    def wait_for_lock(self, lock: str) -> None:
        with self._mutex:
            self.waiting_for, self.since = lock, time.monotonic()
        self.note(f"pre-start: waiting for the {lock} (another instance holds it)", lock=lock)

    def begin_step(self, index: int, shown: str, group: int) -> bool:
        """Note the step started in process group `group`; False if a stop came first (then kill it)."""
        with self._mutex:
            self.step, self.command, self.waiting_for, self.since = index, shown, None, time.monotonic()
            stopped = self.stopped
            self._group = None if stopped else group
        if stopped:
            _kill_group(group)
            return False
        self.note(f"pre-start step {index} of {self.steps} running: {shown}", step=index, command=shown)
        return True

    def end_step(self) -> None:
        with self._mutex:
            self._group = None


def run_prestart(settings: Options, *, reload: bool = False, progress: Progress | None = None) -> None:
    """Run the pre-start steps of `settings` under its lock; raise CorralError if one fails, PrestartStopped if
    `progress` was stopped.

    Nothing to do without steps, or on a reload unless `prestart_on_reload` is set.
    """
    if not settings.prestart or (reload and not settings.prestart_on_reload):
        return
    started = time.monotonic()
    ok = False
    try:
        _run_prestart(settings, progress)
        ok = True
    finally:
        LAST_RUN.update(seconds=time.monotonic() - started, ok=ok)


async def run_prestart_for_reload(settings: Options) -> None:
    """`run_prestart(settings, reload=True)` in a daemon thread, awaited.

    A manager that stops meanwhile exits without waiting for the steps or for the lock: the steps' guard kills
    them as the manager exits, and the lock goes with the manager's descriptor or session. (`asyncio.to_thread`
    would hold the manager's exit until the step ended, up to --prestart-timeout.)"""
    outcome: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        try:
            run_prestart(settings, reload=True)
        except BaseException as exc:  # handed to the awaiting task, which raises it
            outcome.set_exception(exc)
        else:
            outcome.set_result(None)

    threading.Thread(target=run, name="prestart-on-reload", daemon=True).start()
    await asyncio.wrap_future(outcome)  # ignored once the awaiting task is cancelled and the loop closed


def _run_prestart(settings: Options, progress: Progress | None) -> None:
    from corral.envfile import app_environment

    env = app_environment(settings.env_file, os.environ) if settings.env_file else None
    lock = open_lock(settings.prestart_lock)
    if lock is None:
        if settings.release:
            raise ConfigError("--release needs --prestart-lock (file:PATH or a postgresql:// URL)")
        run_steps(settings.prestart, settings.prestart_timeout, env, progress)
        return
    if progress is not None:
        lock.on_wait = progress.wait_for_lock
    with lock:
        if settings.release and lock.is_done(settings.release):
            log.info("prestart: release %s already done (%s); skipping the steps", settings.release, lock)
            if progress is not None:
                progress.note(f"pre-start: release {settings.release} already done; steps skipped")
            return
        run_steps(settings.prestart, settings.prestart_timeout, env, progress)
        if settings.release:
            lock.record(settings.release)
            log.info("prestart: release %s recorded as done (%s)", settings.release, lock)


def run_steps(
    commands: list[str], timeout: float, env: dict[str, str] | None = None, progress: Progress | None = None
) -> None:
    """Run each command in turn (in `env`, default the manager's); the first failure raises."""
    for index, command in enumerate(commands, start=1):
        run_step(index, command, timeout, env, progress)


def run_step(
    index: int, command: str, timeout: float, env: dict[str, str] | None = None, progress: Progress | None = None
) -> None:
    """Run one step under the guard, log its output, kill its process group when it ends."""
    name = f"prestart[{index}]"
    shown = mask_url(command)
    if progress is not None and progress.stopped:
        raise PrestartStopped(f"pre-start step {index} not run: stopping")
    log.info("%s: running: %s", name, shown)
    started = time.monotonic()
    try:
        guard = subprocess.Popen(
            [sys.executable, "-P", "-m", "corral.prestart", str(os.getpid()), command],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:  # no process or descriptor left (EAGAIN, EMFILE, ENOMEM)
        raise CorralError(f"pre-start step {index} could not start: {exc.strerror}: {shown}",
                          ExitCode.PRESTART_FAILED) from exc
    assert guard.stdout is not None
    reader = threading.Thread(target=_log_lines, args=(guard.stdout, name), daemon=True)
    reader.start()
    status: int | None = None
    try:
        if progress is None or progress.begin_step(index, shown, guard.pid):
            status = guard.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        # A timed-out or stopped step, an interrupted manager, or processes a finished step left behind.
        _kill_group(guard.pid)
        guard.wait()
        reader.join(OUTPUT_GRACE)
        if progress is not None:
            progress.end_step()
    seconds = time.monotonic() - started
    if progress is not None and progress.stopped:
        log.info("%s: killed after %.1f s: stopping", name, seconds)
        raise PrestartStopped(f"pre-start step {index} killed after {seconds:.1f} s: stopping")
    if status is None:
        raise CorralError(
            f"pre-start step {index} timed out after {timeout:g} s and was killed: {shown}",
            ExitCode.PRESTART_FAILED,
        )
    if status != 0:
        # The guard reports the shell's status; a negative one means the guard itself was killed.
        how = f"exit code {status}" if status > 0 else f"signal {-status}"
        raise CorralError(f"pre-start step {index} failed with {how}: {shown}", ExitCode.PRESTART_FAILED)
    log.info("%s: done in %.1f s", name, seconds)
    if progress is not None:
        progress.note(f"pre-start step {index} done in {seconds:.1f} s", step=index, seconds=round(seconds, 1))


def _log_lines(pipe: IO[bytes], name: str) -> None:
    with pipe:
        for line in pipe:
            log.info("%s | %s", name, line.decode(errors="replace").rstrip("\r\n"))


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _guard(parent: int, command: str) -> int:
    """Run `command` with `sh -c` in this process group; if the manager dies, kill the group."""
    from corral.process import die_with_parent

    signal.signal(signal.SIGTERM, _kill_own_group)
    die_with_parent(parent, signal.SIGTERM)
    status = subprocess.call(["/bin/sh", "-c", command])
    return 128 - status if status < 0 else status


def _kill_own_group(signum: int, frame: FrameType | None) -> None:
    os.killpg(0, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(_guard(int(sys.argv[1]), sys.argv[2]))
