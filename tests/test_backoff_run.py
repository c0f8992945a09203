"""Backoff never leaves the pool empty, seen from outside (issue 19, item 8).

One worker serves, then every start of its replacement fails (the app's startup fails once a marker file
exists): the slot backs off, yet a worker is always scheduled (starting) instead of none for seconds.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from corral.control_client import request
from corral.errors import CorralError
from harness import Corral, wait_for, write_app
from test_faults_restart import CRASHING_APP


def status(corral: Corral) -> dict[str, Any] | None:
    """The manager's status over the control socket; None when it is too busy to answer in time."""
    try:
        return request(corral.control, {"cmd": "status"}, timeout=10)
    except (CorralError, OSError):
        return None


def test_one_worker_whose_restarts_fail_is_always_rescheduled(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, CRASHING_APP)  # its lifespan startup fails once `fail-startup` exists
    # a crash budget that never ends the run, a backoff that would leave the slot idle for up to 30 s
    corral = Corral(tmp_path, "app.py", "-w", "1", "--crash-limit", "100000", "--backoff-max", "30")
    try:
        (pid,) = corral.wait_ready(1)
        assert corral.get().text == str(pid)
        wait_for(lambda: (s := status(corral)) and s["workers"][0]["ready_for"] > 1.5, what="a proven worker")
        (tmp_path / "fail-startup").touch()
        os.kill(pid, signal.SIGKILL)

        def backing_off() -> bool:
            backoff = (status(corral) or {}).get("backoff")
            return bool(backoff) and backoff[0]["failures"] >= 7  # its own delay is 6.4 s by now

        wait_for(backing_off, what="a slot with 7 failed starts in a row")
        # For 3 s and at least 10 answers, every one shows the slot waiting; a worker is scheduled for it anyway.
        # Between a death and the manager's next tick (50 ms) the pool may be seen empty; never for long (the
        # slot's own delay is 6.4 s and more).
        samples, empty_since, longest_empty = 0, None, 0.0
        started = time.monotonic()
        while (samples < 10 or time.monotonic() - started < 3.0) and time.monotonic() - started < 60:
            now = status(corral)
            if now is not None:
                at = time.monotonic()
                assert [slot["id"] for slot in now["backoff"]] == [1], now["backoff"]
                if [w for w in now["workers"] if w["state"] != "draining"]:
                    empty_since = None
                else:
                    empty_since = at if empty_since is None else empty_since
                    longest_empty = max(longest_empty, at - empty_since)
                samples += 1
            time.sleep(0.03)
        assert samples >= 10 and corral.process.poll() is None
        assert longest_empty < 1.0, f"no worker scheduled for {longest_empty:.2f} s while slot 1 waited"
        assert "starting before its backoff ends: no worker is ready" in corral.log
        (tmp_path / "fail-startup").unlink()
        (new,) = corral.wait_ready(1, timeout=20)  # the next start succeeds: no 30 s wait
        assert corral.get().text == str(new)
    finally:
        corral.stop()
