"""Rolling reloads, recycling, preload and the memory budget, with real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from harness import NEVER_IMPORTED_APP, Corral, run_cli, wait_for, write_app

VERSIONED = """
    import os

    VERSION = "{version}"

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({{"type": "lifespan.startup.complete"}})
                elif message["type"] == "lifespan.shutdown":
                    await send({{"type": "lifespan.shutdown.complete"}})
                    return
        await receive()
        body = f"{{VERSION}} {{os.getpid()}}".encode()
        await send({{"type": "http.response.start", "status": 200, "headers": []}})
        await send({{"type": "http.response.body", "body": body}})
"""



def versioned(tmp_path: Path, version: str) -> None:
    write_app(tmp_path, VERSIONED.format(version=version))


def test_reload_serves_new_code(corrals: list[Corral], tmp_path: Path) -> None:
    versioned(tmp_path, "v1")
    corral = Corral(tmp_path, "app.py", "-w", "2")
    corrals.append(corral)
    old = corral.wait_ready(2)
    assert corral.get().text.startswith("v1 ")
    versioned(tmp_path, "v2")
    result = run_cli("reload", "--control", str(corral.control))
    assert result.returncode == 0, result.stderr
    assert "generation 2" in result.stdout
    # when `corral reload` returns, only the new generation serves
    status = corral.status()
    assert status["generation"] == 2
    assert {w["generation"] for w in status["workers"]} == {2}
    assert not set(corral.ready_pids()) & set(old)
    assert {corral.get().text.split()[0] for _ in range(10)} == {"v2"}

    versioned(tmp_path, "v3")
    corral.signal(signal.SIGHUP)
    wait_for(lambda: corral.get().text.startswith("v3") and corral.status()["generation"] == 3, what="v3")


def test_sighup_to_every_process_of_the_instance_is_one_reload(corrals: list[Corral], tmp_path: Path) -> None:
    """`pkill -HUP corral` reaches the template and the workers too: they keep serving, the manager reloads."""
    versioned(tmp_path, "v1")
    corral = Corral(tmp_path, "app.py", "-w", "2")
    corrals.append(corral)
    old = corral.wait_ready(2)
    template = corral.status()["templates"][0]["pid"]
    versioned(tmp_path, "v2")
    for pid in [*old, template, corral.process.pid]:
        os.kill(pid, signal.SIGHUP)
    wait_for(lambda: corral.get().text.startswith("v2") and corral.status()["generation"] == 2, what="v2")
    wait_for(lambda: not any(psutil.pid_exists(pid) for pid in [*old, template]), what="generation 1 to end")
    assert "killed by" not in corral.log
    assert corral.status()["generation"] == 2


@pytest.mark.parametrize(
    ("broken", "cause"),
    [
        ("def broken(:\n", "SyntaxError"),
        (VERSIONED.format(version="v2").replace("lifespan.startup.complete", "lifespan.startup.failed"),
         "failed to start"),
        (NEVER_IMPORTED_APP, "importing the app took longer than --startup-timeout 10 s"),
    ],
    ids=["syntax-error", "failing-lifespan", "import-never-ends"],
)
def test_reload_to_broken_code_is_refused(corrals: list[Corral], tmp_path: Path, broken: str, cause: str) -> None:
    versioned(tmp_path, "v1")
    corral = Corral(tmp_path, "app.py", "-w", "2", "--startup-timeout", "10")
    corrals.append(corral)
    old = corral.wait_ready(2)
    write_app(tmp_path, broken)
    result = run_cli("reload", "--control", str(corral.control))
    assert result.returncode != 0
    assert cause in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert corral.ready_pids() == old
    assert corral.status()["generation"] == 1
    assert corral.get().text.startswith("v1 ")
    assert "keeps serving" in corral.log
    assert corral.process.poll() is None


def test_no_failed_request_across_reloads_under_keep_alive_load(corrals: list[Corral], tmp_path: Path) -> None:
    versioned(tmp_path, "v1")
    corral = Corral(tmp_path, "app.py", "-w", "2", "--no-access-log")
    corrals.append(corral)
    corral.wait_ready(2)
    stop = threading.Event()
    failures: list[str] = []
    served: dict[str, int] = {}
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=corral.url, timeout=30) as session:  # one keep-alive connection per client
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    response = session.get("/")
                    version = response.text.split()[0] if response.status_code == 200 else "error"
                except httpx.HTTPError as exc:
                    version = f"failed: {exc!r}"
                with lock:
                    if version.startswith(("failed", "error")):
                        failures.append(version)
                    served[version] = served.get(version, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: served.get("v1", 0) > 200, what="load on v1")
        for version in ("v2", "v3"):
            versioned(tmp_path, version)
            result = run_cli("reload", "--control", str(corral.control))
            assert result.returncode == 0, result.stderr
            wait_for(lambda v=version: served.get(v, 0) > 200, what=f"load on {version}")  # type: ignore[misc]
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert failures == []
    assert served["v1"] and served["v2"] and served["v3"]


def test_max_requests_recycles_with_the_replacement_ready_first(corrals: list[Corral], tmp_path: Path) -> None:
    versioned(tmp_path, "v1")
    corral = Corral(tmp_path, "app.py", "-w", "1", "--max-requests", "30", "--max-requests-jitter", "5")
    corrals.append(corral)
    (first,) = corral.wait_ready(1)
    pids = set()
    with httpx.Client(base_url=corral.url, timeout=30) as session:
        deadline = time.monotonic() + 60
        while len(pids) < 3 and time.monotonic() < deadline:
            response = session.get("/")
            assert response.status_code == 200
            pids.add(int(response.text.split()[1]))
    assert len(pids) >= 3, pids
    log = corral.log
    recycled = log.index(f"pid {first}) recycled: served")
    replacement = re.search(r"worker 1 \(pid (\d+), generation 1\) ready", log[recycled:])
    assert replacement is not None
    drained = log.index(f"worker 1 (pid {first}) draining", recycled)
    assert recycled < recycled + replacement.start() < drained  # the replacement was ready before the drain


def test_max_memory_recycles(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, """
        import os

        HELD = []

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            if scope["path"] == "/grow":
                HELD.append(os.urandom(40 * 1024 * 1024))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
    """)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--max-memory", "100MiB")
    corrals.append(corral)
    (pid,) = corral.wait_ready(1)
    for _ in range(3):
        assert corral.get("/grow").status_code == 200
    (new,) = wait_for(lambda: (p := corral.ready_pids()) and p != [pid] and p, what="memory recycle")
    assert corral.get().text == str(new)

    def events() -> list[tuple[str, int]]:
        result = run_cli("events", "--json", "--control", str(corral.control))
        return [(e["kind"], e.get("pid")) for e in map(json.loads, result.stdout.splitlines())]

    kinds = wait_for(lambda: (k := events()) and ("exit", pid) in k and k, what="the old worker's exit event")
    # The replacement was ready before the old worker began draining: in `corral events` and in the log.
    assert kinds.index(("recycle", pid)) < kinds.index(("start", new)) < kinds.index(("exit", pid)), kinds
    log = corral.log
    recycled = log.index(f"worker 1 (pid {pid}) recycled: private memory")
    ready = log.index(f"worker 1 (pid {new}, generation 1) ready", recycled)
    draining = log.index(f"worker 1 (pid {pid}) draining: private memory", recycled)
    assert recycled < ready < draining, log[recycled:]


MEMORY_HOG = """
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            global BLOCK
            await receive()
            BLOCK = bytearray(b"x" * (300 * 1024 * 1024))  # private: allocated after the fork
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


def test_memory_budget_refuses_workers_that_do_not_fit(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, MEMORY_HOG)
    corral = Corral(tmp_path, "app.py", "-w", "200")
    corrals.append(corral)
    assert corral.wait_exit() == 8
    log = corral.log
    assert re.search(r"200 workers × [\d.]+ MiB private \+ [\d.]+ MiB shared > [\d.]+ GiB available", log), log


def test_memory_budget_refuses_a_scale_that_does_not_fit(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, MEMORY_HOG)
    corral = Corral(tmp_path, "app.py", "-w", "1")
    corrals.append(corral)
    corral.wait_ready(1)
    result = run_cli("scale", "200", "--control", str(corral.control))
    assert result.returncode != 0
    assert "not enough memory" in result.stderr and "200 workers ×" in result.stderr
    assert corral.status()["target_workers"] == 1


IMPORT_RECORDER = """
    import os
    from pathlib import Path

    with open(Path(__file__).parent / "imports.log", "a") as log:
        log.write(f"{os.getpid()}\\n")
    IMPORTED_IN = os.getpid()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = f"{IMPORTED_IN} {os.getpid()}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
"""


def test_preload_imports_once_and_respawns_from_the_template(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, IMPORT_RECORDER)
    corral = Corral(tmp_path, "app.py", "-w", "2")
    corrals.append(corral)
    pids = corral.wait_ready(2)
    template = corral.status()["templates"][0]["pid"]
    imported_in, served_by = map(int, corral.get().text.split())
    assert imported_in == template and served_by in pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (p := corral.ready_pids()) and len(p) == 2 and not set(p) & set(pids), what="respawn")
    assert (tmp_path / "imports.log").read_text().split() == [str(template)]
    assert corral.status()["templates"][0]["pid"] == template
    status = corral.status()
    assert all(w["memory_pss"] and w["memory_uss"] <= w["memory_pss"] for w in status["workers"])


def test_no_preload_imports_in_each_worker(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, IMPORT_RECORDER)
    corral = Corral(tmp_path, "app.py", "-w", "2", "--no-preload")
    corrals.append(corral)
    pids = corral.wait_ready(2)
    imported_in, served_by = map(int, corral.get().text.split())
    assert imported_in == served_by
    assert sorted(map(int, (tmp_path / "imports.log").read_text().split())) == pids


MODULE_REPORTER = """
    import sys

    CLI_LIBRARIES = ("pydantic", "pydantic_core", "pydantic_settings", "typer", "rich")

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = " ".join(name for name in CLI_LIBRARIES if name in sys.modules) or "none"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body.encode()})
"""


def test_manager_and_workers_leave_the_command_line_libraries_out(corrals: list[Corral], tmp_path: Path) -> None:
    """Less memory: an app without pydantic runs in processes without it (the CLI's libraries stay in the CLI)."""
    write_app(tmp_path, MODULE_REPORTER)
    corral = Corral(tmp_path, "app.py", "-w", "2")
    corrals.append(corral)
    corral.wait_ready(2)
    assert corral.get().text == "none"
    manager = psutil.Process(corral.process.pid)  # `corral run` became the manager: same pid, its command shown
    assert "corral.manager.entry" in manager.cmdline() and "app.py" in manager.cmdline()
    assert manager.name() == "corral"
    template = corral.status()["templates"][0]["pid"]
    for pid in (manager.pid, template):
        libraries = {Path(m.path).name for m in psutil.Process(pid).memory_maps()}
        assert not [name for name in libraries if "pydantic" in name], pid


WEBSOCKET_APP = """
    from fastapi import FastAPI, WebSocket

    app = FastAPI()

    @app.websocket("/ws")
    async def echo(websocket: WebSocket):
        await websocket.accept()
        while True:
            await websocket.send_text(await websocket.receive_text())
"""


def test_open_websocket_gets_1012_when_its_worker_drains(corrals: list[Corral], tmp_path: Path) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    write_app(tmp_path, WEBSOCKET_APP)
    corral = Corral(tmp_path, "app.py", "-w", "1")
    corrals.append(corral)
    corral.wait_ready(1)
    with connect(f"ws://127.0.0.1:{corral.port}/ws", open_timeout=10) as websocket:
        websocket.send("ping")
        assert websocket.recv(timeout=10) == "ping"
        result = run_cli("reload", "--control", str(corral.control))
        assert result.returncode == 0, result.stderr
        with pytest.raises(ConnectionClosed) as closed:
            websocket.recv(timeout=30)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1012
