"""A spare worker, parked: forked ahead of need, its event loop and server built, the app not yet started.

While workers die on requests (an app that crashes its worker now and then), the manager keeps such spares (one,
more during a burst of crashes) and gives its template a standing order: when a worker that has answered a
request dies, the template wakes a spare at once in its place (`worker/template.py`), instead of a round trip to
the manager, a fork and the setup of a new worker, each waiting for a CPU on a busy host. The spare then runs the
app's lifespan startup and starts accepting, like any worker. Until then it accepts nothing and its app has not
started: its ASGI lifespan (database pools, caches) runs only in a worker that is about to serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable


async def wait_for_promotion(fd: int, on_sigterm: Callable[[], object]) -> int | None:
    """Wait on the template's pipe: the slot to serve in (the template writes it in one write), or None on a stop
    (SIGTERM: the manager no longer wants a spare; the pipe's end: the template is gone). The pipe is closed either
    way. Once promoted, SIGTERM calls `on_sigterm` (the server's drain): the handler is replaced, never reset, so no
    SIGTERM is lost."""
    loop = asyncio.get_running_loop()
    decided: asyncio.Future[int | None] = loop.create_future()

    def decide(slot: int | None) -> None:
        if not decided.done():
            decided.set_result(slot)

    def readable() -> None:
        try:
            data = os.read(fd, 32)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        decide(int(data) if data.strip().isdigit() else None)

    loop.add_reader(fd, readable)
    loop.add_signal_handler(signal.SIGTERM, decide, None)
    try:
        slot = await decided
    finally:
        loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
    if slot is not None:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    return slot
