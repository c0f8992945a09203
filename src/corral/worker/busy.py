"""How busy a worker's event loop is: the fraction of the time it was not waiting for something to do.

Read from the kernel's accounting of the loop's own thread (`/proc/thread-self/schedstat`: nanoseconds spent
running, and runnable but waiting for a CPU). A thread that is neither is asleep, which for an event loop's
thread means waiting in its poll (epoll) for the next event. This works the same for uvloop (uvicorn's default,
whose libuv poll has no Python-level selector to wrap) and for the asyncio loop, costs one small read per
heartbeat, and adds nothing to the request path.

Time waiting for a CPU counts as busy: a worker starved of CPU is saturated all the same, and the manager tells
that apart from a lack of workers with the instance's CPU use. A loop blocked in a blocking system call (a
`time.sleep` in an `async def`) looks idle here; the listeners' accept queue shows that case when connections
pile up. Where schedstat is missing (not Linux), the loop thread's CPU time stands in.
"""

from __future__ import annotations

import time
from pathlib import Path

SCHEDSTAT = Path("/proc/thread-self/schedstat")


def _thread_busy_ns() -> int:
    try:
        running, waiting = SCHEDSTAT.read_text().split()[:2]
        return int(running) + int(waiting)
    except (OSError, ValueError):
        return time.thread_time_ns()


class BusyMeter:
    """Call `sample()` from the event loop's thread: the busy fraction since the previous call."""

    def __init__(self) -> None:
        self._busy = _thread_busy_ns()
        self._at = time.monotonic_ns()

    def sample(self) -> float:
        busy, at = _thread_busy_ns(), time.monotonic_ns()
        elapsed = at - self._at
        if elapsed <= 0:
            return 0.0
        fraction = (busy - self._busy) / elapsed
        self._busy, self._at = busy, at
        return min(1.0, max(0.0, fraction))
