"""Processes the app starts (subprocess, fork, a double-forked daemon) die with their worker and with Corral,
and the port is free afterwards (a forked child inherits the listener)."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from harness import Corral, run_cli, wait_for, write_app

SPAWNING_APP = """
    import os
    import subprocess
    import sys
    import time

    PIDS = {pids!r}
    STARTED_AT_IMPORT = subprocess.Popen(["sleep", "3600"])  # in the template (preload): dies with the instance

    def record(pid):
        with open(PIDS, "a") as file:
            file.write(f"{{pid}}\\n")

    def forked(body):
        pid = os.fork()
        if pid == 0:
            try:
                body()
            finally:
                os._exit(0)
        return pid

    def sleep_forever():
        time.sleep(3600)  # holds every fd of the worker, the listener included

    def daemon():
        os.setsid()  # out of the worker's process group and session
        if os.fork() == 0:
            record(os.getpid())
            sleep_forever()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/spawn":
            record(subprocess.Popen(["sleep", "3600"]).pid)
            record(forked(sleep_forever))
            os.waitpid(forked(daemon), 0)  # the intermediate exits: its child is an orphan
        await send({{"type": "http.response.start", "status": 200, "headers": []}})
        await send({{"type": "http.response.body", "body": str(os.getpid()).encode()}})
"""


def start(tmp_path: Path, marker: str, port: int | None = None) -> tuple[Corral, Path]:
    pids = tmp_path / f"pids-{uuid.uuid4().hex}"
    write_app(tmp_path, SPAWNING_APP.format(pids=str(pids)))
    corral = Corral(tmp_path, "app.py", "-w", "1", "--graceful-timeout", "5", env={"CONTAIN_MARK": marker},
                    port=port)
    corral.wait_ready(1)
    return corral, pids


def spawn(corral: Corral, pids: Path) -> tuple[int, list[psutil.Process]]:
    """Ask a worker to start its processes; their Process objects (pinned to their start time)."""
    worker = int(corral.get("/spawn").text)
    recorded: list[int] = wait_for(lambda: [int(p) for p in pids.read_text().split()] if
                                   len(pids.read_text().split()) == 3 else None, what="3 spawned processes")
    processes = [psutil.Process(pid) for pid in recorded]
    assert all(p.is_running() for p in processes)
    return worker, processes


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except psutil.NoSuchProcess:
            continue
    return left


def marked(marker: str) -> list[int]:
    """Every process whose environment carries the test's marker (Corral's and the app's)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("CONTAIN_MARK") == marker and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture
def marker() -> Iterator[str]:
    """A mark in the environment of every process of the test's instances; whatever is left is killed."""
    mark = uuid.uuid4().hex
    yield mark
    for pid in marked(mark):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_worker(corral: Corral, worker: int) -> None:
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: corral.ready_pids() and worker not in corral.ready_pids(), what="a replacement worker")


def reload(corral: Corral, worker: int) -> None:
    result = run_cli("reload", "--control", str(corral.control))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: not psutil.pid_exists(worker), what="the old worker to end")


def kill_template(corral: Corral, worker: int) -> None:
    """A template killed from outside: its workers die with it, their processes are re-parented to the manager."""
    os.kill(psutil.Process(worker).ppid(), signal.SIGKILL)
    wait_for(lambda: corral.ready_pids() and worker not in corral.ready_pids(), what="a new generation")


@pytest.mark.parametrize(
    "end", [kill_worker, reload, kill_template], ids=["worker-sigkill", "reload", "template-sigkill"]
)
def test_the_app_processes_of_an_ended_worker_die_with_it(
    corrals: list[Corral], tmp_path: Path, marker: str, end: Callable[[Corral, int], None]
) -> None:
    corral, pids = start(tmp_path, marker)
    corrals.append(corral)
    worker, processes = spawn(corral, pids)
    end(corral, worker)
    wait_for(lambda: not alive(processes), what="the ended worker's processes to die")
    # the service keeps serving from the new worker, and the manager carries no orphan
    assert int(corral.get().text) != worker

    def only_templates() -> bool:  # nothing adopted left, zombies included (they are reaped within a second)
        manager_children = {p.pid for p in psutil.Process(corral.process.pid).children()}
        return manager_children == {t["pid"] for t in corral.status()["templates"]}

    wait_for(only_templates, what="the manager's children to be its templates")


def stop_command(corral: Corral) -> None:
    result = run_cli("stop", "--control", str(corral.control))
    assert result.returncode == 0, result.stderr
    assert corral.wait_exit() == 0


def kill_manager(corral: Corral) -> None:
    corral.signal(signal.SIGKILL)
    corral.wait_exit()


@pytest.mark.parametrize("end", [stop_command, kill_manager], ids=["stop", "manager-sigkill"])
def test_nothing_the_app_started_outlives_corral_and_the_port_is_free(
    corrals: list[Corral], tmp_path: Path, marker: str, end: Callable[[Corral], None]
) -> None:
    corral, pids = start(tmp_path, marker)
    corrals.append(corral)
    _, processes = spawn(corral, pids)
    end(corral)
    wait_for(lambda: not alive(processes), what="the app's processes to die")
    wait_for(lambda: not marked(marker), what="no process of the instance left")
    again, _ = start(tmp_path, marker, port=corral.port)  # binds the same port
    corrals.append(again)
    assert httpx.get(again.url, timeout=10).status_code == 200
