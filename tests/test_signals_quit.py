"""SIGQUIT and `corral stop --now` stop at once (docs/configuration.md, Signals): requests in flight are
abandoned, every worker is killed without waiting for --graceful-timeout, nothing of the pool is left, and the
instance ends as documented: exit code 0 (a stop that was asked for, not a failure a service manager would
restart), with the usual last log line."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from harness import Corral, process_tree, run_cli, wait_for, write_app

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


@pytest.mark.parametrize("how", ["SIGQUIT", "corral stop --now"])
def test_stop_now_abandons_requests_in_flight_and_exits_0(corrals: list[Corral], tmp_path: Path, how: str) -> None:
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
    if how == "SIGQUIT":
        corral.signal(signal.SIGQUIT)
    else:
        stopped = run_cli("stop", "--now", "--control", str(corral.control))
        assert stopped.returncode == 0 and stopped.stdout.startswith("stopped (manager pid "), stopped.stderr
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
    assert re.fullmatch(r".* INFO stopped after \S+ s, exit code 0", corral.log.strip().splitlines()[-1]), corral.log
