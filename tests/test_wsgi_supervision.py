"""What the manager does for an ASGI app, for a WSGI one: a thread stuck in a request is reported with its stack
and the worker replaced (its loop stays free), and the autoscaler sees the thread pool's occupancy."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import httpx

from harness import Corral, wait_for, write_app
from test_autoscale_run import Load, pool
from test_events import kinds

STUCK_APP = """
    import os, time

    def stuck_here():
        time.sleep(3600)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/stuck":
            stuck_here()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
"""


def test_a_thread_stuck_in_a_request_is_reported_and_its_worker_replaced(
    corrals: list[Corral], tmp_path: Path
) -> None:
    write_app(tmp_path, STUCK_APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--threads", "2", "--timeout", "2")
    corrals.append(corral)
    [pid] = corral.wait_ready(1)

    def stuck() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(corral.url + "/stuck", timeout=60)

    thread = threading.Thread(target=stuck)
    thread.start()
    assert corral.get().text == str(pid)  # the other thread still serves while one is stuck
    hang = wait_for(lambda: kinds(corral, "hang"), what="a hang event")[0]
    assert hang["pid"] == pid
    assert hang["frame"] == f"{tmp_path / 'app.py'}:5 in stuck_here", hang
    assert f"(pid {pid}): a request thread stuck for " in hang["message"], hang
    assert "event loop" not in hang["message"], "the loop stays free: a thread is stuck"
    wait_for(lambda: "a request thread stuck for" in corral.log, what="the manager's log line of the hang")
    assert "event loop hung" not in corral.log
    assert "a request has sent nothing for" in corral.log and "more than --timeout 2 s" in corral.log
    assert 'app.py", line 5, in stuck_here' in corral.log  # the stuck thread's stack, as a traceback
    [replacement] = corral.wait_ready(1)
    assert replacement != pid
    assert corral.get().text == str(replacement)
    thread.join(60)


SLOW_APP = """
    import os, time

    def app(environ, start_response):
        time.sleep(0.05)  # a database query: the thread waits, no CPU, the loop sleeps
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
"""


def test_a_full_thread_pool_grows_the_pool(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, SLOW_APP)
    corral = Corral(tmp_path, "app:app", "--threads", "4", "--autoscale", "1:3", "--autoscale-cooldown", "3",
                    "--no-access-log")
    corrals.append(corral)
    corral.wait_ready(1)
    with Load(corral.url, connections=8) as load:
        wait_for(lambda: pool(corral)[1] >= 2, 40, "the autoscaler to grow the pool under load")
        grown = corral.status()
    assert load.requests > 0
    assert "Socket errors" not in load.output and "Non-2xx" not in load.output, load.output
    decision = grown["autoscaler"]["last_change"]
    assert decision["action"] == "grow", decision
    assert "connections waiting" not in decision["reason"], decision
    busy = int(decision["reason"].split("workers ")[1].split(" %")[0])
    assert busy >= 90, decision
    wait_for(lambda: pool(corral)[:2] == (1, 1), 60, "the pool to shrink back to one worker once idle")


SCHEME_APP = """
    import os

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{environ['wsgi.url_scheme']} {os.getpid()}".encode()]
"""


def test_https_recycling_and_access_log(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, SCHEME_APP)
    corral = Corral(tmp_path, "app:app", "-w", "1", "--https", "localhost", "--state-dir", str(tmp_path / "state"),
                    "--max-requests", "5")
    corrals.append(corral)
    corral.wait_ready(1)
    url = f"https://127.0.0.1:{corral.port}/"
    pids: set[str] = set()

    def served() -> bool:
        with httpx.Client(verify=False, timeout=10) as client:  # the local CA: the scheme is what is checked
            scheme, pid = client.get(url, headers={"connection": "close"}).text.split()
        assert scheme == "https"
        pids.add(pid)
        return len(pids) >= 2

    wait_for(served, what="a recycled worker's replacement serving")  # --max-requests 5
    assert '"GET / HTTP/1.1" 200' in corral.log  # the access log
    recycled = kinds(corral, "recycle")
    assert recycled and "requests" in recycled[0]["cause"], recycled
