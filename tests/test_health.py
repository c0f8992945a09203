"""--admin-bind: /livez and /readyz from the manager; --drain-delay keeps serving after /readyz fails."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import httpx

from harness import PLAIN_APP, Corral, free_port, wait_for, write_app

APP = PLAIN_APP % "served"



def test_livez_readyz_and_drain_delay(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    admin_port = free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    corral = Corral(tmp_path, "app.py", "-w", "2", "--admin-bind", f"127.0.0.1:{admin_port}", "--drain-delay", "3")
    corrals.append(corral)
    corral.wait_ready(2)
    live = httpx.get(admin + "/livez")
    assert live.status_code == 200 and live.json()["ok"] is True
    ready = httpx.get(admin + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready_workers"] == 2
    assert httpx.get(admin + "/nope").status_code == 404

    sent = time.monotonic()
    corral.signal(signal.SIGTERM)
    # documented: "graceful stop: /readyz fails, --drain-delay passes, workers drain, exit 0"
    wait_for(lambda: httpx.get(admin + "/readyz").status_code == 503, what="/readyz failing after SIGTERM")
    assert httpx.get(admin + "/livez").status_code == 200
    served: list[float] = []
    while True:  # every request of the delay is served, and no worker begins draining before it ends
        answer = corral.get().text
        log = corral.log
        elapsed = time.monotonic() - sent  # both were seen before this
        if elapsed >= 2.8:
            break
        assert answer == "served" and ") draining" not in log, (elapsed, log)
        served.append(elapsed)
        time.sleep(0.1)
    assert len(served) >= 5 and corral.process.poll() is None
    assert corral.wait_exit() == 0
    exited = time.monotonic() - sent
    assert 3.0 <= exited < 3.0 + 30, exited
    log = corral.log
    assert log.index("draining in 3 s (--drain-delay)") < log.index(") draining"), log


def test_livez_fails_while_a_worker_is_hung(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, """
        import time

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            if scope["path"] == "/block":
                time.sleep(3600)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"served"})
    """)
    admin_port = free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    corral = Corral(tmp_path, "app.py", "-w", "1", "--admin-bind", f"127.0.0.1:{admin_port}", "--timeout", "3")
    corrals.append(corral)
    (pid,) = corral.wait_ready(1)
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(corral.url + "/block", timeout=0.5)
    # between detection and the kill (the stack dump), /livez reports the stale worker
    stale = wait_for(lambda: (r := httpx.get(admin + "/livez", timeout=5)).status_code == 503 and r.json(),
                     what="/livez failing")
    assert stale["stale_workers"] == [1]
    wait_for(lambda: corral.ready_pids() and corral.ready_pids() != [pid], what="hung worker replaced")
    wait_for(lambda: httpx.get(admin + "/livez").status_code == 200, what="/livez healthy again")


def test_admin_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    from harness import run_cli

    write_app(tmp_path, APP)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("run", "app.py", "-b", f"127.0.0.1:{free_port()}", "--admin-bind", f"127.0.0.1:{port}",
                         "--control", str(tmp_path / "c.sock"), cwd=tmp_path)
    assert result.returncode == 5
    assert len(result.stderr.strip().splitlines()) == 1
    assert "address already in use" in result.stderr and str(port) in result.stderr, result.stderr


# A pre-start step that says it runs, then waits for the test's go-ahead (a file), as a long migration would.
WAITING_STEP = """
    import pathlib, sys, time
    started, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    started.write_text("running")
    while not go.exists():
        time.sleep(0.05)
"""


def test_admin_listener_answers_during_the_pre_start_steps(corrals: list[Corral], tmp_path: Path) -> None:
    """A platform's liveness probe passes during a long pre-start step; readiness waits for the workers."""
    import sys

    write_app(tmp_path, APP)
    write_app(tmp_path, WAITING_STEP, "step.py")
    started, go = tmp_path / "step-started", tmp_path / "go"
    admin_port = free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    corral = Corral(tmp_path, "app.py", "-w", "1", "--admin-bind", f"127.0.0.1:{admin_port}",
                    "--prestart", f"{sys.executable} {tmp_path / 'step.py'} {started} {go}")  # fmt: skip
    corrals.append(corral)
    wait_for(started.exists, what="the pre-start step to run")

    live = httpx.get(admin + "/livez")
    assert live.status_code == 200 and live.json() == {"ok": True, "phase": "prestart", "stale_workers": []}
    ready = httpx.get(admin + "/readyz")
    assert ready.status_code == 503 and ready.json()["ok"] is False and ready.json()["ready_workers"] == 0
    assert ready.json()["reason"].startswith("pre-start step 1 of 1 is running ("), ready.json()
    metrics = httpx.get(admin + "/metrics")
    assert metrics.status_code == 200, metrics.text
    assert 'corral_workers{state="ready"} 0.0' in metrics.text and "corral_generation 0.0" in metrics.text
    assert "corral_target_workers 1.0" in metrics.text and "corral_build_info{" in metrics.text
    status = httpx.get(admin + "/api/status").json()  # the dashboard: the startup's status
    assert status["phase"] == "prestart" and status["prestart"]["step"] == 1 and status["workers"] == []
    refused = httpx.post(admin + "/api/reload", json={})  # refused, with the reason, as `corral reload`
    assert refused.status_code == 409 and "pre-start step 1 of 1 is running" in refused.json()["error"]
    assert not go.exists() and corral.process.poll() is None  # still in the step

    go.write_text("")
    ready = wait_for(lambda: (r := httpx.get(admin + "/readyz")).status_code == 200 and r.json(), what="/readyz 200")
    assert ready == {"ok": True, "ready_workers": 1, "draining": False}
    assert httpx.get(admin + "/livez").json() == {"ok": True, "stale_workers": []}
    assert "corral_generation 1.0" in httpx.get(admin + "/metrics").text
    assert corral.get().text == "served"
    corral.signal(signal.SIGTERM)
    assert corral.wait_exit() == 0
