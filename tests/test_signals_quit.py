"""SIGQUIT stops at once (docs/configuration.md, Signals): requests in flight are abandoned, every worker is
killed without waiting for --graceful-timeout, nothing of the pool is left."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import psutil

from harness import Corral, process_tree, wait_for, write_app

APP = """
    import asyncio
    import pathlib

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            pathlib.Path("slow-started").touch()
            await asyncio.sleep(600)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


def test_sigquit_stops_now_abandoning_requests_in_flight(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app.py", "-w", "2", "--graceful-timeout", "300")
    corrals.append(corral)
    corral.wait_ready(2)
    tree = [psutil.Process(pid) for pid in process_tree(corral.process.pid)]
    assert len(tree) >= 3  # a template and two workers
    outcome: list[object] = []

    def slow_request() -> None:
        try:
            outcome.append(httpx.get(corral.url + "/slow", timeout=120).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(lambda: (tmp_path / "slow-started").exists(), what="the slow request")
    sent = time.monotonic()
    corral.signal(signal.SIGQUIT)
    code = corral.wait_exit(60)
    took = time.monotonic() - sent
    thread.join(30)
    # a graceful stop would wait up to 300 s for the slow request; this one does not wait for it at all
    assert took < 15, took
    assert outcome and isinstance(outcome[0], httpx.HTTPError), outcome
    assert code == 0, (code, corral.log)
    gone = psutil.wait_procs(tree, timeout=10)[1]
    assert not gone, f"left running: {gone}"
    assert "Traceback" not in corral.log, corral.log
