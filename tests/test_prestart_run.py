"""`corral run` runs the pre-start steps before anything serves: three instances, one release."""

from __future__ import annotations

import http.client
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import CORRAL, LIFESPAN_APP, free_port, write_app

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
