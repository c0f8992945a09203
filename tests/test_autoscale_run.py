"""`--autoscale` end to end: a bounded load through the real server grows the pool, which shrinks once the load
stops, without a failed request; `corral scale` and `corral status` while autoscaling."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness import Corral, run_cli, wait_for, write_app

# Each request holds its worker's event loop for 50 ms without using CPU (a blocking call in an async endpoint):
# a few clients saturate one worker, connections wait in the accept queue, and the test does not depend on how
# much CPU the machine has to spare.
BLOCKING_APP = """
    import os
    import time

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        time.sleep(0.05)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""

LOAD_SECONDS = 40  # wrk's bound; it is stopped sooner, once the pool has grown


class Load:
    """wrk asking for `Connection: close`, so every request is a new connection (as from many clients) and a new
    worker gets its share; bounded in time, stopped early with SIGINT (wrk then prints its totals)."""

    def __init__(self, url: str, connections: int) -> None:
        wrk = shutil.which("wrk")
        if wrk is None:
            pytest.skip("wrk is not installed (scripts/apt-packages.txt)")
        self.process = subprocess.Popen(
            [wrk, "-t1", f"-c{connections}", f"-d{LOAD_SECONDS}s", "--timeout", "20s", "-H", "Connection: close",
             url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.output = ""

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *_: Any) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        self.output, _ = self.process.communicate(timeout=LOAD_SECONDS + 30)

    @property
    def requests(self) -> int:
        found = re.search(r"(\d+) requests in", self.output)
        assert found, self.output
        return int(found.group(1))


def pool(corral: Corral) -> tuple[int, int, dict[str, Any]]:
    """(workers wanted, workers serving, the autoscaler's status)."""
    status = corral.status()
    serving = [w for w in status["workers"] if w["state"] == "ready"]
    return status["target_workers"], len(serving), status["autoscaler"]


def test_load_grows_the_pool_and_idle_shrinks_it_without_a_failed_request(
    corrals: list[Corral], tmp_path: Path
) -> None:
    write_app(tmp_path, BLOCKING_APP)
    corral = Corral(tmp_path, "app:app", "--autoscale", "1:3", "--autoscale-cooldown", "3", "--no-access-log")
    corrals.append(corral)
    corral.wait_ready(1)
    assert pool(corral)[2]["range"] == [1, 3]

    with Load(corral.url, connections=8) as load:
        wait_for(lambda: pool(corral)[1] >= 2, 40, "the autoscaler to grow the pool under load")
        grown = corral.status()
    assert load.requests > 0
    assert "Socket errors" not in load.output, load.output  # connect, read, write errors or timeouts
    assert "Non-2xx" not in load.output, load.output
    decision = grown["autoscaler"]["last_change"]
    assert decision["action"] == "grow" and decision["to"] == decision["from"] + 1 >= 2  # one step at a time
    assert "connections waiting" in decision["reason"]

    wait_for(lambda: pool(corral)[:2] == (1, 1), 40, "the pool to shrink back to one worker once idle")
    # the workers that left drained politely: none was killed at --graceful-timeout, none counted as a crash
    assert corral.status()["restarts"] == 0
    assert "killed" not in corral.log
    shrunk = pool(corral)[2]["last_change"]
    assert shrunk["action"] == "shrink" and shrunk["to"] == 1
    assert "autoscale: grow 1 → 2" in corral.log
    assert "autoscale: shrink 2 → 1" in corral.log
    assert "draining: scaled down" in corral.log
    assert corral.process.poll() is None


def test_scale_while_autoscaling_holds_inside_the_range_and_is_refused_outside(
    corrals: list[Corral], tmp_path: Path
) -> None:
    write_app(tmp_path, BLOCKING_APP)
    corral = Corral(tmp_path, "app:app", "--autoscale", "1:3", "--autoscale-cooldown", "8", "-w", "9")
    corrals.append(corral)
    # --workers is the starting size, clamped to the range (the banner shows once the pool is ready)
    wait_for(lambda: "workers:   3 (preload)" in corral.log, 60, "three workers at start")

    refused = run_cli("scale", "5", "--control", str(corral.control))
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        "corral: autoscaling keeps 1 to 3 workers (--autoscale): 5 is outside that range"
    ]
    assert "Traceback" not in refused.stderr

    table = run_cli("status", "--control", str(corral.control))
    assert "autoscale 1-3 · band 50-90 %" in table.stdout

    # Idle: the pool steps in after the cool-down, one worker at a time.
    wait_for(lambda: pool(corral)[:2] == (1, 1), 40, "the idle pool to shrink to its minimum")
    accepted = run_cli("scale", "2", "--control", str(corral.control))
    assert accepted.returncode == 0, accepted.stderr
    wait_for(lambda: pool(corral)[:2] == (2, 2), 20, "the size set by corral scale")
    assert pool(corral)[2]["last_change"]["action"] == "manual"
    # ... until the next decision: still idle, so the autoscaler steps in again after its cool-down.
    wait_for(lambda: pool(corral)[:2] == (1, 1), 40, "the autoscaler to decide again")
