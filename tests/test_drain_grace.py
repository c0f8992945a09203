"""A draining worker's idle keep-alive connection: a request that reached it before the grace ended is served,
even when the event loop was stalled past the grace and runs its timers before reading the socket."""

from __future__ import annotations

import http.client
import subprocess
from pathlib import Path

import pytest

from harness import DEADLINE, OK_APP, Corral, corral_command, served_then_closed, wait_for, write_app

# /hold waits (asynchronously) until its worker drains its connections, then stalls the event loop past the
# grace in two steps: a synchronous sleep, then a timer callback that lasts until the test has sent its request.
# That callback runs in the same pass over the due timers as the grace's own, just before it: the request
# arrived during a stall, after the loop last read its sockets, as on a starved CPU.
STALLING_APP = """
    import asyncio
    import gc
    import time
    from pathlib import Path

    import uvicorn

    HERE = Path(__file__).parent
    GRACE = 2.0  # min(2 s, --keep-alive)


    def hold():
        (HERE / "holding").touch()
        deadline = time.monotonic() + 60
        while not (HERE / "sent").exists() and time.monotonic() < deadline:
            time.sleep(0.01)


    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/hold":
            server = next(o for o in gc.get_objects() if isinstance(o, uvicorn.Server))
            (HERE / "waiting").touch()
            while not any(getattr(c, "draining", False) for c in server.server_state.connections):
                await asyncio.sleep(0.01)
            asyncio.get_running_loop().call_later(0.01, hold)
            time.sleep(GRACE + 0.5)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
"""


@pytest.mark.parametrize("protocol", ["auto", "h11", "httptools"])
def test_request_arriving_while_the_loop_is_stalled_past_the_grace_is_served(
    corrals: list[Corral], tmp_path: Path, protocol: str
) -> None:
    write_app(tmp_path, STALLING_APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--keep-alive", "60", "--http", protocol, "--no-access-log")
    corrals.append(corral)
    corral.wait_ready(1)
    idle = http.client.HTTPConnection("127.0.0.1", corral.port, timeout=DEADLINE)
    held = http.client.HTTPConnection("127.0.0.1", corral.port, timeout=DEADLINE)
    reload = None
    try:
        idle.request("GET", "/")
        first = idle.getresponse()
        assert first.read() == b"ok"
        assert first.getheader("connection") is None  # kept alive: now an idle connection of the old worker
        held.request("GET", "/hold")
        wait_for(lambda: (tmp_path / "waiting").exists(), what="/hold in the old worker")
        reload = subprocess.Popen(corral_command("reload", "--control", str(corral.control)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: (tmp_path / "holding").exists(), what="the old worker draining, stalled past the grace")
        idle.request("GET", "/")
        (tmp_path / "sent").touch()
        served_then_closed(idle, protocol)
        served_then_closed(held, protocol)
        _, stderr = reload.communicate(timeout=DEADLINE)
        assert reload.returncode == 0, stderr
    finally:
        idle.close()
        held.close()
        if reload is not None and reload.poll() is None:
            reload.kill()
            reload.wait()


def test_a_keep_alive_under_a_second_keeps_the_connection_then_closes_it(
    corrals: list[Corral], tmp_path: Path
) -> None:
    """`--keep-alive 0.5` is half a second, not zero: a request sent right after a response reuses the
    connection, and the idle connection is closed later by the server."""
    write_app(tmp_path, OK_APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--keep-alive", "0.5", "--no-access-log")
    corrals.append(corral)
    corral.wait_ready(1)
    connection = http.client.HTTPConnection("127.0.0.1", corral.port, timeout=DEADLINE)
    try:
        for _ in range(3):
            connection.request("GET", "/")
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, b"ok")
            assert response.getheader("connection") is None
        assert connection.sock is not None
        assert connection.sock.recv(1) == b""  # closed by the server once idle (the timeout bounds the wait)
    finally:
        connection.close()
