"""Backoff never leaves the pool empty, seen from outside (issue 19, item 8).

One worker serves, then every start of its replacement fails (the app's startup fails once a marker file
exists): the slot backs off, yet a worker is always scheduled (starting) instead of none for seconds.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from corral.control_client import request
from harness import Corral, wait_for, write_app

APP = """
    import os

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if os.path.exists("fail-startup"):
                        os._exit(1)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""


def test_one_worker_whose_restarts_fail_is_always_rescheduled(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    # a crash budget that never ends the run, a backoff that would leave the slot idle for up to 30 s
    corral = Corral(tmp_path, "app.py", "-w", "1", "--crash-limit", "100000", "--backoff-max", "30")
    try:
        (pid,) = corral.wait_ready(1)
        assert corral.get().text == str(pid)
        wait_for(lambda: request(corral.control, {"cmd": "status"}, timeout=5)["workers"][0]["ready_for"] > 1.5,
                 what="a proven worker")
        (tmp_path / "fail-startup").touch()
        os.kill(pid, signal.SIGKILL)

        def backing_off() -> bool:
            backoff = request(corral.control, {"cmd": "status"}, timeout=5)["backoff"]
            return bool(backoff) and backoff[0]["failures"] >= 7  # its own delay is 6.4 s by now
        wait_for(backing_off, what="a slot with 7 failed starts in a row")
        # For 3 s, ~100 samples: every one shows the slot waiting and a worker scheduled for it anyway.
        samples = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            status = request(corral.control, {"cmd": "status"}, timeout=5)
            assert [slot["id"] for slot in status["backoff"]] == [1], status["backoff"]
            scheduled = [w for w in status["workers"] if w["state"] != "draining"]
            assert scheduled, f"no worker scheduled while slot 1 waits {status['backoff'][0]['seconds']} s"
            samples += 1
            time.sleep(0.03)
        assert samples >= 10 and corral.process.poll() is None
        assert "starting before its backoff ends: no worker is ready" in corral.log
        (tmp_path / "fail-startup").unlink()
        (new,) = corral.wait_ready(1, timeout=20)  # the next start succeeds: no 30 s wait
        assert corral.get().text == str(new)
    finally:
        corral.stop()
