"""A bounded background load for the live views' tests: a few threads of plain GETs, each on a new
connection (so the shared accept queue spreads them over the workers), stopped by count, time or the test."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx


@contextlib.contextmanager
def bounded_load(url: str, threads: int = 2, seconds: float = 90.0, max_requests: int = 200_000) -> Iterator[list[int]]:
    """Yields a one-item list holding the number of requests answered so far."""
    stop = threading.Event()
    done = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def run() -> None:
        with httpx.Client(headers={"connection": "close"}, timeout=5) as client:
            while not stop.is_set() and time.monotonic() < deadline and done[0] < max_requests:
                with contextlib.suppress(httpx.HTTPError):
                    client.get(url)
                    with lock:
                        done[0] += 1

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        yield done
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
