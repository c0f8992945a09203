"""`corral run` runs the pre-start steps before anything serves (three instances, one release), and a stop
during the steps of a reload ends them."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import CORRAL, LIFESPAN_APP, Corral, corral_command, free_port, wait_for, write_app

DEADLINE = 120.0



def answers(port: int) -> bool:
    """True if an HTTP request to the port gets a response."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()



@pytest.fixture
def instances() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_no_instance_serves_before_the_step_ends(
    tmp_path: Path, lock: str, instances: list[subprocess.Popen[bytes]]
) -> None:
    write_app(tmp_path, LIFESPAN_APP)
    runs, end = tmp_path / "runs", tmp_path / "end"
    step = f"echo $$ >> {runs}; sleep 2; touch {end}"
    ports = [free_port() for _ in range(3)]
    for number, port in enumerate(ports):
        args = ["--prestart", step, "--prestart-lock", lock, "--release", "r1", "-b", f"127.0.0.1:{port}"]
        args += ["--control", str(tmp_path / f"{number}.sock"), "--workers", "1", "app:app"]
        log = (tmp_path / f"{number}.log").open("wb")
        instances.append(subprocess.Popen([CORRAL, "run", *args], cwd=tmp_path, stdout=log, stderr=log))

    waiting = set(ports)
    deadline = time.monotonic() + DEADLINE
    while waiting:
        for number, proc in enumerate(instances):
            assert proc.poll() is None, (tmp_path / f"{number}.log").read_text()
        for port in sorted(waiting):
            if answers(port):
                assert end.exists(), f"port {port} answered before the pre-start step ended"
                waiting.discard(port)
        assert time.monotonic() < deadline, f"ports {sorted(waiting)} never answered"
        time.sleep(0.05)

    assert len(runs.read_text().splitlines()) == 1


def test_a_stop_during_a_reloads_steps_answers_the_reload_and_ends_the_steps(tmp_path: Path) -> None:
    """The manager does not wait for the step (here 300 s) nor start the reload after it: the caller hears that
    corral is stopping, and the step's process group is killed as the manager exits."""
    write_app(tmp_path, LIFESPAN_APP)
    groups, first = tmp_path / "groups", tmp_path / "first"
    step = f"cut -d' ' -f5 /proc/$$/stat >> {groups}; if [ -e {first} ]; then sleep 300; fi; touch {first}"
    corral = Corral(tmp_path, "app:app", "--workers", "1", "--prestart", step, "--prestart-on-reload")
    try:
        corral.wait_ready(1)
        reload = subprocess.Popen(corral_command("reload", "--control", str(corral.control)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        group = wait_for(lambda: groups.exists() and len(lines := groups.read_text().split()) == 2 and int(lines[1]),
                         DEADLINE, "the reload's step running")
        corral.signal(signal.SIGTERM)
        assert corral.wait_exit(60) == 0, corral.log
        _, err = reload.communicate(timeout=DEADLINE)
        assert (reload.returncode, err.strip()) == (1, "corral: corral is stopping")
        wait_for(lambda: not group_alive(group), DEADLINE, "the step's process group gone")
        assert "reload: generation" not in corral.log
    finally:
        corral.stop()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
