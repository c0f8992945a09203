"""Issue 9, observations 8 and 10: exit codes and answers of the commands that talk to an instance.

`corral scale abc` is a usage error before any instance is asked; a second Ctrl-C that abandons requests
exits 130; `corral stop` during a reload answers the reload "corral is stopping" (no traceback in the
manager); `corral reload --timeout` bounds the wait; a reload held by a slow client ends within
--graceful-timeout."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx

from harness import Corral, corral_command, run_cli, wait_for, write_app

APP = """
    import asyncio
    import pathlib
    import time

    HERE = pathlib.Path(__file__).parent
    if (HERE / "slow-import").exists():
        time.sleep(float((HERE / "slow-import").read_text()))

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            (HERE / "slow-started").write_text("1")
            await asyncio.sleep(60)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


def test_scale_with_a_bad_count_is_a_usage_error_before_any_instance_is_asked(tmp_path: Path) -> None:
    for value in ("abc", "1.5", "+", "--", "99999999999999"):
        result = run_cli("scale", "--control", str(tmp_path / "nothing-here.sock"), "--", value)
        # exit 2: "a bad `corral scale` count (checked before the instance is asked)", docs/configuration.md
        assert (result.returncode, result.stderr) == (2, f"corral: expected N, +K or -K workers, got {value!r}\n")


def test_reload_timeout_is_validated(tmp_path: Path) -> None:
    for value, shown in (("0", "0"), ("-1", "-1"), ("inf", "inf"), ("nan", "nan"), ("86401", "86401")):
        result = run_cli("reload", "--control", str(tmp_path / "c.sock"), "--timeout", value)
        expected = f"corral: --timeout must be more than 0 and at most 86,400 seconds, got {shown}\n"
        assert (result.returncode, result.stderr) == (2, expected), value
    # a good value passes the check: the instance is asked, and there is none
    result = run_cli("reload", "--control", str(tmp_path / "c.sock"), "--timeout", "86400")
    assert result.returncode == 7 and "no corral instance" in result.stderr, result.stderr


def test_a_second_ctrl_c_that_abandons_requests_exits_130(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--graceful-timeout", "60")
    corrals.append(corral)
    corral.wait_ready(1)
    outcome: list[object] = []

    def slow_request() -> None:
        try:
            outcome.append(httpx.get(corral.url + "/slow", timeout=90).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(lambda: (tmp_path / "slow-started").exists(), 30, "the slow request")
    corral.signal(signal.SIGINT)
    wait_for(lambda: "draining" in corral.log or "stopping" in corral.log, 30, "the graceful stop")
    assert corral.process.poll() is None, "the first Ctrl-C waits for the request"
    corral.signal(signal.SIGINT)
    assert corral.wait_exit(30) == 130
    thread.join(30)
    assert outcome and isinstance(outcome[0], httpx.HTTPError), outcome
    assert "Traceback" not in corral.log, corral.log


def test_stop_during_a_reload_and_the_reload_timeout(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--startup-timeout", "600", "--graceful-timeout", "120")
    corrals.append(corral)
    corral.wait_ready(1)
    (tmp_path / "slow-import").write_text("600")  # the next generation's import takes 10 minutes

    started = time.monotonic()
    timed_out = run_cli("reload", "--control", str(corral.control), "--timeout", "2")
    assert timed_out.returncode == 1 and "did not answer within 2 s" in timed_out.stderr, timed_out.stderr
    assert time.monotonic() - started < 20

    waiting = subprocess.Popen(corral_command("reload", "--control", str(corral.control)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: corral.log.count("reload: generation") >= 2, 30, "the second reload request")
    stop = run_cli("stop", "--control", str(corral.control))
    assert stop.returncode == 0, stop.stderr
    _, stderr = waiting.communicate(timeout=30)
    assert waiting.returncode == 1 and "corral is stopping" in stderr, stderr
    assert corral.wait_exit(60) == 0  # the importing template is killed: the stop does not wait for the import
    assert "Traceback" not in corral.log and "CancelledError" not in corral.log, corral.log


def test_a_slow_client_holds_a_reload_no_longer_than_the_graceful_timeout(
    corrals: list[Corral], tmp_path: Path
) -> None:
    """A client trickling its request body keeps an old worker busy; the reload still ends once
    --graceful-timeout has passed (the old worker is then killed)."""
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--graceful-timeout", "3")
    corrals.append(corral)
    corral.wait_ready(1)
    slow = socket.create_connection(("127.0.0.1", corral.port), timeout=10)
    slow.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n" + b"a" * 10)
    stop_trickle = threading.Event()

    def trickle() -> None:
        while not stop_trickle.wait(0.5):
            try:
                slow.send(b"a")
            except OSError:
                return

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        started = time.monotonic()
        result = run_cli("reload", "--control", str(corral.control), timeout=90)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert elapsed < 3 + 30, elapsed  # the graceful timeout, plus a new generation's start on a busy machine
        assert corral.get().text == "ok"
    finally:
        stop_trickle.set()
        thread.join(10)
        slow.close()
