"""How busy a worker is: the utilisation it publishes in its scoreboard cell for the autoscaler.

Three signals, each a fraction of the time since the previous heartbeat stamp; the worker publishes the largest,
since any one of them at its top means another request has to wait:

- **The event loop** (`BusyMeter`): the loop's own thread's running time plus its time runnable but waiting for a
  CPU, from the kernel's accounting (`/proc/thread-self/schedstat`). A thread that is neither is asleep, which for
  an event loop's thread means waiting in its poll (epoll) for the next event. This works the same for uvloop
  (whose libuv poll has no Python-level selector to wrap) and for the asyncio loop, costs one small read per
  heartbeat, and adds nothing to the request path. Time waiting for a CPU counts as busy: a worker starved of CPU
  is saturated all the same, and the manager tells that apart from a lack of workers with the instance's CPU use.
  Where schedstat is missing (not Linux), the loop thread's CPU time stands in.
- **The threadpool** (`ThreadpoolMeter`): the share of AnyIO's default thread limiter's tokens in use (Starlette
  and FastAPI run `def` endpoints through `anyio.to_thread.run_sync`, 40 tokens by default), or for a WSGI app
  the share of its `--threads` running a request (`worker/wsgi.py`), sampled on the loop
  every `ThreadpoolMeter.EVERY` seconds and averaged over the stamp. A look that finds requests waiting for a token
  counts as 1.0. While `def` endpoints wait (a slow database, a `time.sleep`), the loop sleeps and reads idle, yet
  every thread is taken and new requests queue: this is the signal that sees it.
- **The process's CPU time** (`ProcessMeter`), all its threads together. A worker's Python code runs on one CPU at a
  time (the GIL), so a worker near one CPU of use is saturated even when its loop reads idle: the loop's thread
  then sleeps waiting for the GIL, held by the threadpool's threads.

Limits: a loop blocked in a blocking system call (a `time.sleep` in an `async def`) reads idle on all three; the
listeners' accept queue shows that case when connections pile up. asyncio's default executor
(`loop.run_in_executor(None, ...)`) and thread pools the app makes itself are not measured: their queues are
private to them, and uvloop does not expose its executor at all (the process's CPU time still sees their work
when it uses CPU). Limiters other than AnyIO's default (an app's own `CapacityLimiter`) are not seen either.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEDSTAT = Path("/proc/thread-self/schedstat")


def _thread_busy_ns() -> int:
    try:
        running, waiting = SCHEDSTAT.read_text().split()[:2]
        return int(running) + int(waiting)
    except (OSError, ValueError):
        return time.thread_time_ns()


class _Rate:
    """The growth of a nanosecond counter over the elapsed time since the previous call, within 0..1."""

    def __init__(self, counter: Callable[[], int]) -> None:
        self._counter = counter
        self._value = counter()
        self._at = time.monotonic_ns()

    def sample(self) -> float:
        value, at = self._counter(), time.monotonic_ns()
        elapsed = at - self._at
        if elapsed <= 0:
            return 0.0
        fraction = (value - self._value) / elapsed
        self._value, self._at = value, at
        return min(1.0, max(0.0, fraction))


class BusyMeter(_Rate):
    """Make it in, and call `sample()` from, the event loop's thread: the loop's busy fraction since the last call."""

    def __init__(self) -> None:
        super().__init__(_thread_busy_ns)


class ProcessMeter(_Rate):
    """The process's CPU use (all threads) since the previous call, in CPUs, capped at one."""

    def __init__(self) -> None:
        super().__init__(time.process_time_ns)


class ThreadpoolMeter:
    """The time-averaged occupancy of AnyIO's default thread limiter on the running loop.

    `start()` must run inside a task on the worker's loop (the limiter is per loop); it does nothing unless the app
    loaded `anyio.to_thread` (Starlette and FastAPI do), so an app that does not use it does not load it.
    `sample()` returns the mean since its previous call, 0.0 without a limiter or before the first look.
    """

    EVERY = 0.05

    def __init__(self) -> None:
        self._source: Callable[[], float] | None = None
        self._total = 0.0
        self._looks = 0

    def start(self, source: Callable[[], float] | None = None) -> None:
        """`source`: the occupancy of another pool to watch instead (a WSGI app's threads)."""
        if self._source is not None:
            return
        if source is None:
            to_thread = sys.modules.get("anyio.to_thread")
            if to_thread is None:
                return
            limiter = to_thread.current_default_thread_limiter()
            source = lambda: occupancy(limiter)  # noqa: E731
        self._source = source
        self._look(asyncio.get_running_loop())

    def _look(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._source is not None
        self._total += self._source()
        self._looks += 1
        loop.call_later(self.EVERY, self._look, loop)

    def sample(self) -> float:
        if not self._looks:
            return 0.0
        mean = self._total / self._looks
        self._total, self._looks = 0.0, 0
        return mean


def occupancy(limiter: Any) -> float:
    """Tokens in use over tokens there are; 1.0 when every token is taken or a task waits for one."""
    total, borrowed = limiter.total_tokens, limiter.borrowed_tokens
    if borrowed >= total or limiter.statistics().tasks_waiting:
        return 1.0
    return float(borrowed / total)


class WorkerLoad:
    """The utilisation a worker publishes at each stamp: the largest of its loop's, its threadpool's and its CPU's."""

    def __init__(self) -> None:
        self.loop = BusyMeter()
        self.threadpool = ThreadpoolMeter()
        self.process = ProcessMeter()

    def sample(self) -> float:
        return max(self.loop.sample(), self.threadpool.sample(), self.process.sample())
