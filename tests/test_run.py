"""`corral run` end to end: real processes, real loopback sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from harness import LIFESPAN_APP, NEVER_IMPORTED_APP, Corral, process_tree, run_cli, wait_for, write_app

HELLO = LIFESPAN_APP

FASTAPI_APP = """
    import asyncio
    import os
    import time

    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/")
    async def index():
        return {"pid": os.getpid()}

    @app.get("/slow")
    async def slow(seconds: float = 2.0):
        await asyncio.sleep(seconds)
        return {"slept": seconds, "pid": os.getpid()}

    @app.get("/block")
    async def block():
        block_forever()
        return {}

    def block_forever():
        time.sleep(3600)
"""



def start(corrals: list[Corral], tmp_path: Path, source: str, *args: str, app: str = "app.py") -> Corral:
    write_app(tmp_path, source)
    corral = Corral(tmp_path, app, *args)
    corrals.append(corral)
    return corral


def test_serves_from_a_pool_with_banner_and_status(corrals: list[Corral], tmp_path: Path) -> None:
    corral = start(corrals, tmp_path, HELLO, "-w", "2")
    pids = corral.wait_ready(2)
    seen = {corral.get().text for _ in range(20)}
    assert all(text.startswith("hello from ") for text in seen)
    log = wait_for(lambda: corral.log if "control:" in corral.log else None, what="banner")
    assert f"http://127.0.0.1:{corral.port}" in log
    assert str(corral.control) in log
    assert all(str(pid) in log for pid in pids)

    status = corral.status()
    assert status["manager_pid"] == corral.process.pid
    assert status["generation"] == 1
    assert status["restarts"] == 0
    for worker in status["workers"]:
        assert {"id", "pid", "state", "generation", "requests", "cpu_percent", "memory_uss", "started_at"} <= set(
            worker
        )
        assert worker["state"] == "ready"
        assert worker["memory_uss"] > 0
    assert sorted(w["id"] for w in status["workers"]) == [1, 2]
    wait_for(lambda: sum(w["requests"] for w in corral.status()["workers"]) >= 20, what="request counts")
    assert oct(os.stat(corral.control).st_mode & 0o777) == "0o600"

    table = run_cli("status", "--control", str(corral.control))
    assert table.returncode == 0
    assert "ready" in table.stdout and str(pids[0]) in table.stdout


def test_killed_worker_is_replaced_and_its_cause_logged(corrals: list[Corral], tmp_path: Path) -> None:
    corral = start(corrals, tmp_path, HELLO, "-w", "2")
    first, second = corral.wait_ready(2)
    os.kill(first, signal.SIGKILL)
    pids = wait_for(lambda: (p := corral.ready_pids()) and len(p) == 2 and first not in p and p, what="replacement")
    assert second in pids
    log = corral.log
    assert f"pid {first}) killed by SIGKILL" in log
    assert "out-of-memory killer" in log
    assert corral.status()["restarts"] == 1
    assert corral.get().status_code == 200


@pytest.mark.parametrize(
    ("source", "cause"),
    [
        ("import not_a_module_anywhere\n", "No module named 'not_a_module_anywhere'"),
        ("def broken(:\n", "SyntaxError"),
        (
            """
            from contextlib import asynccontextmanager
            from fastapi import FastAPI

            @asynccontextmanager
            async def lifespan(app):
                raise RuntimeError("database unreachable")
                yield

            app = FastAPI(lifespan=lifespan)
            """,
            "RuntimeError: database unreachable",
        ),
    ],
    ids=["import-error", "syntax-error", "failing-lifespan"],
)
def test_app_that_cannot_start_stops_corral_with_the_cause_once(
    corrals: list[Corral], tmp_path: Path, source: str, cause: str
) -> None:
    corral = start(corrals, tmp_path, source, "-w", "3")
    assert corral.wait_exit() == 3
    log = corral.log
    headline = next(line for line in log.splitlines() if "the app failed to start:" in line)
    assert cause in headline, log
    assert log.count("the app failed to start") == 1, log
    assert log.count("Traceback (most recent call last)") <= 1, log  # the full traceback, once
    assert not process_tree(corral.process.pid)


def test_no_preload_import_error_is_reported_once(corrals: list[Corral], tmp_path: Path) -> None:
    corral = start(corrals, tmp_path, "import not_a_module_anywhere\n", "-w", "3", "--no-preload")
    assert corral.wait_exit() == 3
    headline = next(line for line in corral.log.splitlines() if "the app failed to start:" in line)
    assert "No module named 'not_a_module_anywhere'" in headline, corral.log
    assert corral.log.count("Traceback (most recent call last)") == 1, corral.log


def test_no_preload_import_longer_than_the_hang_timeout_is_not_a_hang(corrals: list[Corral], tmp_path: Path) -> None:
    """Without preload each worker imports before its event loop exists: --startup-timeout bounds that, not
    --timeout."""
    write_app(tmp_path, HELLO + "\n    import time\n    time.sleep(3)  # a slow import\n", name="slow.py")
    corral = Corral(tmp_path, "slow.py", "-w", "2", "--no-preload", "--timeout", "1")
    corrals.append(corral)
    pids = corral.wait_ready(2)
    assert corral.get().text.startswith("hello from ")
    assert "hung" not in corral.log and sorted(pids) == corral.ready_pids(), corral.log


def test_crash_loop_stops_corral_with_its_own_code(corrals: list[Corral], tmp_path: Path) -> None:
    source = HELLO.replace(
        'await send({"type": "lifespan.startup.complete"})',
        'await send({"type": "lifespan.startup.complete"})\n'
        '                    import asyncio; asyncio.get_running_loop().call_later(0.3, os._exit, 1)',
    )
    corral = start(corrals, tmp_path, source, "-w", "2", "--crash-limit", "3", "--crash-window", "60")
    assert corral.wait_exit() == 4
    log = corral.log
    assert log.count("crash loop") == 1
    assert "exited with code 1" in log
    assert not process_tree(corral.process.pid)


def test_blocked_event_loop_is_dumped_and_replaced(corrals: list[Corral], tmp_path: Path) -> None:
    corral = start(corrals, tmp_path, FASTAPI_APP, "-w", "1", "--timeout", "2")
    (pid,) = corral.wait_ready(1)

    def blocked_request() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(corral.url + "/block", timeout=30)

    threading.Thread(target=blocked_request, daemon=True).start()
    new = wait_for(lambda: (p := corral.ready_pids()) and p[0] != pid and p, what="replacement of the hung worker")
    assert new != [pid]
    log = corral.log
    assert "its event loop hung" in log
    assert "block_forever" in log  # the blocking function, from the stack dump
    assert "killed because its event loop hung" in log
    assert corral.get("/").json()["pid"] == new[0]


def test_worker_never_ready_stops_corral_at_the_startup_timeout(corrals: list[Corral], tmp_path: Path) -> None:
    source = """
        import asyncio

        async def wait_for_a_database_that_never_answers():
            await asyncio.Event().wait()

        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                await receive()
                await wait_for_a_database_that_never_answers()
    """
    corral = start(corrals, tmp_path, source, "-w", "2", "--startup-timeout", "2")
    assert corral.wait_exit() == 3
    log = corral.log
    assert log.count("not ready within --startup-timeout 2 s") == 2  # the stack dump notice, the cause
    assert "wait_for_a_database_that_never_answers" in log  # where it was stuck, from the stack dump
    assert not process_tree(corral.process.pid)


def test_import_that_never_ends_stops_corral_at_the_startup_timeout(corrals: list[Corral], tmp_path: Path) -> None:
    corral = start(corrals, tmp_path, NEVER_IMPORTED_APP, "-w", "2", "--startup-timeout", "2")
    assert corral.wait_exit() == 3
    log = corral.log
    assert log.count("importing the app took longer than --startup-timeout 2 s") == 2  # the dump notice, the cause
    assert "wait_for_a_database_that_never_answers" in log  # where the import was, from the stack dump


def test_slow_request_on_a_healthy_loop_is_not_a_hang(corrals: list[Corral], tmp_path: Path) -> None:
    corral = start(corrals, tmp_path, FASTAPI_APP, "-w", "1", "--timeout", "1")
    (pid,) = corral.wait_ready(1)
    assert corral.get("/slow?seconds=3").json() == {"slept": 3.0, "pid": pid}
    assert corral.ready_pids() == [pid]
    assert "blocked" not in corral.log


def test_killed_manager_leaves_no_process_and_a_free_port(corrals: list[Corral], tmp_path: Path) -> None:
    corral = start(corrals, tmp_path, HELLO, "-w", "2")
    corral.wait_ready(2)
    children = process_tree(corral.process.pid)
    assert len(children) == 3  # template and two workers
    corral.signal(signal.SIGKILL)
    corral.process.wait(10)

    def gone() -> bool:
        return not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in children)

    wait_for(gone, timeout=10, what="every corral process to exit")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", corral.port))


def test_scale_up_and_down(corrals: list[Corral], tmp_path: Path) -> None:
    corral = start(corrals, tmp_path, HELLO, "-w", "1")
    corral.wait_ready(1)
    result = run_cli("scale", "3", "--control", str(corral.control))
    assert result.returncode == 0, result.stderr
    corral.wait_ready(3)
    assert run_cli("scale", "-1", "--control", str(corral.control)).returncode == 0
    corral.wait_ready(2)
    corral.signal(signal.SIGTTIN)
    corral.wait_ready(3)
    corral.signal(signal.SIGTTOU)
    corral.wait_ready(2)  # signals of one kind do not queue: send the next once this one took effect
    corral.signal(signal.SIGTTOU)
    corral.wait_ready(1)
    refused = run_cli("scale", "-5", "--control", str(corral.control))
    assert refused.returncode != 0
    assert "at least one worker" in refused.stderr
    assert corral.get().status_code == 200


def test_graceful_stop_lets_the_request_in_flight_finish(corrals: list[Corral], tmp_path: Path) -> None:
    corral = start(corrals, tmp_path, FASTAPI_APP, "-w", "2")
    corral.wait_ready(2)
    results: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: results.append(corral.get("/slow?seconds=2", timeout=30)))
    thread.start()
    wait_for(lambda: sum(w["connections"] for w in corral.status()["workers"]) >= 1, what="request in flight")
    corral.signal(signal.SIGTERM)
    assert corral.wait_exit() == 0
    thread.join(30)
    assert results and results[0].status_code == 200
    assert results[0].json()["slept"] == 2.0
    with pytest.raises(httpx.ConnectError):
        corral.get("/")


def test_graceful_timeout_cuts_what_is_left(corrals: list[Corral], tmp_path: Path) -> None:
    corral = start(corrals, tmp_path, FASTAPI_APP, "-w", "1", "--graceful-timeout", "1")
    corral.wait_ready(1)
    errors: list[Exception] = []

    def long_request() -> None:
        try:
            corral.get("/slow?seconds=60", timeout=60)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=long_request)
    thread.start()
    wait_for(lambda: sum(w["connections"] for w in corral.status()["workers"]) >= 1, what="request in flight")
    result = run_cli("stop", "--control", str(corral.control))
    assert result.returncode == 0, result.stderr
    assert corral.wait_exit() == 0
    thread.join(30)
    assert errors
    assert "graceful-timeout" in corral.log


def test_stop_command_and_second_instance_refused(corrals: list[Corral], tmp_path: Path) -> None:
    corral = start(corrals, tmp_path, HELLO, "-w", "1")
    corral.wait_ready(1)
    other = run_cli("run", "app.py", "-b", "127.0.0.1:0", "--control", str(corral.control), cwd=tmp_path)
    assert other.returncode != 0
    assert "another corral instance" in other.stderr
    assert run_cli("stop", "--control", str(corral.control)).returncode == 0
    assert corral.wait_exit() == 0
    assert not corral.control.exists()
    gone = run_cli("status", "--control", str(corral.control))
    assert gone.returncode == 7
    assert gone.stderr.count("\n") == 1
