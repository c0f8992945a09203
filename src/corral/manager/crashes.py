"""Deaths the manager did not ask for, judged: a crash while serving or a failed start (the restart book decides,
by `policy.proved`), logged with its cause and recorded as an event; too many failed starts end the instance.
"""

from __future__ import annotations

import logging
import signal
import time

from corral.errors import ExitCode
from corral.manager.events import EventLog
from corral.manager.pool import Pool, Worker
from corral.manager.restarts import Restarts
from corral.options import Options
from corral.process import killed_by

log = logging.getLogger("corral")


class Fatal(Exception):
    """Raised inside the supervisor's loop: the instance stops with this message and exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


class Crashes:
    def __init__(self, book: Restarts, pool: Pool, events: EventLog, settings: Options) -> None:
        self.book = book
        self.pool = pool
        self.events = events
        self.settings = settings

    def worker_died(self, worker: Worker, status: int, what: str, answered: int) -> None:
        """A worker that was not asked to stop died (`what`: its exit status in words); raises Fatal on a crash
        loop. `answered`: the requests its scoreboard cell counted."""
        hint = ""
        if killed_by(status) == signal.SIGKILL and worker.fault is None:
            hint = " (SIGKILL usually comes from the kernel's out-of-memory killer: check `dmesg`)"
        cause = f"killed because {worker.fault}" if worker.fault else what
        log.warning("worker %d (pid %s) %s%s", worker.slot, worker.pid, cause, hint)
        now = time.monotonic()
        ready_for = None if worker.ready_at is None else now - worker.ready_at
        verdict = self.book.worker_died(worker.slot, ready_for, answered, now)
        fields = {"worker": worker.slot, "pid": worker.pid, "cause": cause, "ready_for": ready_for,
                  "requests": answered}
        if verdict.crash:
            self.events.record("crash", f"worker {worker.slot} {cause}; replaced at once", **fields)
            return
        self.events.record("crash", f"worker {worker.slot} {cause} before proving itself", failed_start=True, **fields)
        if verdict.delay > 0:
            log.warning("worker %d: %d failed starts in a row; next start in %.1f s", worker.slot, verdict.failures,
                        verdict.delay)
            self.events.record("backoff", f"worker {worker.slot} waits {verdict.delay:.1f} s", worker=worker.slot,
                               seconds=verdict.delay, failures=verdict.failures)
        self.check_crash_loop(now, f"worker {worker.slot} {cause}")

    def template_died(self, code: int) -> None:
        """The serving generation's template died: a failed start, since its replacement must import again."""
        now = time.monotonic()
        self.book.template_died(now)
        self.check_crash_loop(now, f"the template {describe_status_code(code)}")

    def check_crash_loop(self, now: float, last: str) -> None:
        """Exit 4 once more than --crash-limit starts failed in --crash-window with no worker proving itself."""
        ready = [w for w in self.pool.workers.values() if w.ready_at and w.state == "ready"]
        self.book.saw_ready([(w.ready_at or now, self.pool.answered(w)) for w in ready], now)
        if self.book.crash_loop(now):
            raise Fatal(
                f"crash loop: {self.book.recent_failed_starts(now)} workers failed to start within "
                f"{self.settings.crash_window:g} s and none answered a request or stayed ready "
                f"{self.book.backoff.proving_time:g} s "
                f"(--crash-limit {self.settings.crash_limit}; last: {last}); stopping",
                ExitCode.CRASH_LOOP,
            )


def describe_status_code(code: int) -> str:
    """Popen.returncode in words (negative: killed by that signal)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
