"""`--autoscale` for an app whose `def` endpoints wait in the threadpool: the loop sleeps, every thread is taken,
requests wait for a thread, and the pool grows on the threadpool's occupancy; idle, it shrinks back."""

from __future__ import annotations

import re
from pathlib import Path

from harness import Corral, wait_for, write_app
from test_autoscale_run import Load, pool

# A Starlette `def` endpoint runs in AnyIO's threadpool. Four threads a worker (set at startup, from 40) keep the
# load small: eight clients take one worker's threads twice over, and each request waits 50 ms without using CPU.
THREADPOOL_APP = """
    import contextlib
    import os
    import time

    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(app):
        anyio.to_thread.current_default_thread_limiter().total_tokens = 4
        yield

    def query(request):
        time.sleep(0.05)
        return PlainTextResponse(str(os.getpid()))

    app = Starlette(routes=[Route("/", query)], lifespan=lifespan)
"""


def test_a_full_threadpool_grows_the_pool_and_idle_shrinks_it_without_a_failed_request(
    corrals: list[Corral], tmp_path: Path
) -> None:
    write_app(tmp_path, THREADPOOL_APP)
    corral = Corral(tmp_path, "app:app", "--autoscale", "1:4", "--autoscale-cooldown", "3", "--no-access-log")
    corrals.append(corral)
    corral.wait_ready(1)
    assert corral.get().status_code == 200

    with Load(corral.url, connections=8) as load:
        wait_for(lambda: pool(corral)[1] >= 2, 40, "the autoscaler to grow the pool under load")
        grown = corral.status()
    assert load.requests > 0
    assert "Socket errors" not in load.output, load.output  # connect, read, write errors or timeouts
    assert "Non-2xx" not in load.output, load.output
    decision = grown["autoscaler"]["last_change"]
    assert decision["action"] == "grow" and decision["to"] == decision["from"] + 1 >= 2
    # The first step out: the workers read busy from their threadpools, not from their loops or from the accept
    # queue. (The status may already show a second step: eight requests fill two workers' eight threads too.)
    first = re.search(r"autoscale: grow 1 → 2: (.*)", corral.log)
    assert first is not None, corral.log
    assert "connections waiting" not in first.group(1), first.group(1)
    busy = int(first.group(1).split("workers ")[1].split(" %")[0])
    assert busy >= 90, first.group(1)

    wait_for(lambda: pool(corral)[:2] == (1, 1), 60, "the pool to shrink back to one worker once idle")
    status = corral.status()
    assert status["restarts"] == 0
    assert status["workers"][0]["busy"] < 0.5
    assert "killed" not in corral.log
    assert status["autoscaler"]["last_change"]["action"] == "shrink"
    assert "autoscale: grow 1 → 2" in corral.log
    assert corral.process.poll() is None
