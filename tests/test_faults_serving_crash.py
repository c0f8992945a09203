"""Fault suite: an app whose requests crash their worker never stops the service (issue 19).

1 request in 50 calls `os._exit(1)`; 4 workers under a bounded keep-alive load for 20 s. Replacements answer
requests and die within their first second, again and again: each is a worker that has proven the app starts, so
each death is a crash while serving (replaced at once, never backed off, never counted toward --crash-limit),
and `corral run` is alive and serving at the end. Real processes on loopback; the crashes are real.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from corral.control_client import request
from harness import Corral, write_app

ONE_IN_FIFTY_APP = """
    import os
    import random

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/" and random.random() < 1 / 50:
            os._exit(1)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
"""

LOAD_SECONDS = 20.0
CLIENTS = 8


def test_one_request_in_fifty_crashing_its_worker_never_stops_the_service(
    corrals: list[Corral], tmp_path: Path
) -> None:
    write_app(tmp_path, ONE_IN_FIFTY_APP)
    corral = Corral(tmp_path, "app.py", "-w", "4")
    corrals.append(corral)
    corral.wait_ready(4)
    stop = threading.Event()
    answered = [0] * CLIENTS
    ready_counts: list[int] = []

    def client(index: int) -> None:
        with httpx.Client(timeout=5) as http:  # keep-alive: a crash cuts the connection, the next one reconnects
            while not stop.is_set():
                try:
                    if http.get(corral.url + "/").status_code == 200:
                        answered[index] += 1
                except httpx.HTTPError:
                    pass

    def sampler() -> None:
        while not stop.is_set() and corral.process.poll() is None:
            try:
                workers = request(corral.control, {"cmd": "status"}, timeout=5)["workers"]
            except Exception:  # the manager is gone: the main thread's checks say so
                return
            ready_counts.append(sum(1 for w in workers if w["state"] == "ready"))
            time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    threads.append(threading.Thread(target=sampler))
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + LOAD_SECONDS
    try:
        while time.monotonic() < deadline and corral.process.poll() is None:
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert corral.process.poll() is None, f"corral run ended with {corral.process.returncode}:\n{corral.log}"
    status = corral.status()
    assert status["crashes"] >= 20, status  # the load did crash workers, again and again
    assert status["backoff"] == [] and "crash loop" not in corral.log
    assert sum(answered) > 20 * status["crashes"], (sum(answered), status["crashes"])
    assert len(ready_counts) >= 20, ready_counts  # a look every 0.1 s (slower on a loaded machine)
    assert ready_counts.count(0) <= len(ready_counts) // 10, ready_counts  # measured: never 0 ready
    corral.wait_ready(4)
    assert httpx.get(corral.url + "/ok", timeout=10).status_code == 200
