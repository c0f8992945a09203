"""Issue 9, observations 3 and 10: nothing a client of the admin port or the control socket does stops the
manager (fd exhaustion with a low RLIMIT_NOFILE, slowloris, huge lines, bad JSON); sampling survives a full
fd table; /livez tells no pid."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness import PLAIN_APP, Corral, free_port, run_cli, wait_for, write_app

APP = PLAIN_APP % "served"


def start(corrals: list[Corral], tmp_path: Path, soft: int, hard: int, *args: str) -> tuple[Corral, str]:
    """A corral started with RLIMIT_NOFILE (soft, hard), set in the child before it becomes corral."""
    write_app(tmp_path, APP)
    admin_port = free_port()
    corral = Corral(tmp_path, "app.py", "-w", "1", "--admin-bind", f"127.0.0.1:{admin_port}", *args,
                    preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    corrals.append(corral)
    corral.wait_ready(1)
    return corral, f"127.0.0.1:{admin_port}"


def open_connections(address: str, count: int, slowloris: bool) -> list[socket.socket]:
    host, port = address.rsplit(":", 1)
    held = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        if slowloris:
            sock.sendall(b"GET /livez HTTP/1.1\r\nhost: x\r\n")
        held.append(sock)
    return held


def trickle(held: list[socket.socket]) -> None:
    """One more header line on each slowloris connection that the manager has not closed yet."""
    for sock in held:
        with contextlib.suppress(OSError):
            sock.send(b"x-a: b\r\n")


def assert_serving(corral: Corral, admin: str) -> None:
    live = wait_for(lambda: httpx.get(f"http://{admin}/livez", timeout=5), 30, "/livez under attack")
    assert live.status_code == 200, live.text
    assert corral.get().text == "served"
    assert corral.status()["workers"], "the control socket still answers"
    assert corral.process.poll() is None


@pytest.mark.parametrize(("limit", "idle", "slow"), [(256, 150, 150), (1024, 700, 400)])
def test_connection_flood_on_the_admin_port(
    corrals: list[Corral], tmp_path: Path, limit: int, idle: int, slow: int
) -> None:
    """~1,100 connections with the systemd default limit (1024), 300 with 256: the manager keeps serving."""
    corral, admin = start(corrals, tmp_path, limit, limit)
    held: list[socket.socket] = []
    try:
        held += open_connections(admin, idle, slowloris=False)
        slowloris = open_connections(admin, slow, slowloris=True)
        held += slowloris
        deadline = time.monotonic() + 3  # past the CPU and memory sampling, which opens files in /proc
        while time.monotonic() < deadline:
            trickle(slowloris)
            time.sleep(0.5)
        assert_serving(corral, admin)
        open_files = len(os.listdir(f"/proc/{corral.process.pid}/fd"))
        assert open_files <= limit // 4 + 64, f"the manager holds {open_files} descriptors"
    finally:
        for sock in held:
            sock.close()
    assert_serving(corral, admin)
    assert "Traceback" not in corral.log and "Too many open files" not in corral.log, corral.log


def test_soft_fd_limit_is_raised_to_the_hard_limit(corrals: list[Corral], tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    corral, _ = start(corrals, tmp_path, 256, hard)
    limits = Path(f"/proc/{corral.process.pid}/limits").read_text()
    soft_now = next(line.split()[3] for line in limits.splitlines() if line.startswith("Max open files"))
    expected = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert soft_now in (expected, str(1 << 20)), limits


def http_exchange(address: str, data: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def control_exchange(path: Path, data: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        answer = b""
        while not answer.endswith(b"\n") and (chunk := sock.recv(65536)):
            answer += chunk
    result: dict[str, object] = json.loads(answer)
    return result


HTTP_CASES = [
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
    (b"GET /livez HTTP/1.1\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
    (b"GET /livez HTTP/1.1\r\n" + b"x-h: v\r\n" * 200 + b"\r\n", b"431"),
    (b"POST /livez HTTP/1.1\r\ncontent-length: 99999999999\r\n\r\n", b"413"),
    (b"GET /livez HTTP/1.1\r\ncontent-length: -5\r\n\r\n", b"400"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"400"),  # TLS on a plain port
]
CONTROL_CASES = [
    b"x" * 70_000 + b"\n", b"[1, 2]\n", b'"status"\n', b"null\n", b"{not json\n", b'{"cmd": ["status"]}\n',
    # `events --follow` requests with a bad `since` or `limit`: one error answer, no stream
    b'{"cmd": "events", "follow": true, "since": "x"}\n', b'{"cmd": "events", "follow": true, "limit": [1]}\n',
    b'{"cmd": "events", "follow": true, "since": 1e400}\n', b'{"cmd": "events", "since": 1e400}\n',
]  # fmt: skip


def test_bad_input_on_the_admin_port_and_the_control_socket(corrals: list[Corral], tmp_path: Path) -> None:
    """Lines over 64 KiB, oversized or malformed requests, JSON that is not an object: an error answer each,
    and the manager goes on; 200 idle clients on the control socket do not lock `corral status` out."""
    corral, admin = start(corrals, tmp_path, 256, 256)
    for request_bytes, status in HTTP_CASES:
        answer = http_exchange(admin, request_bytes)
        assert answer.startswith(b"HTTP/1.1 " + status), (request_bytes[:40], answer[:200])
    for request_bytes in CONTROL_CASES:
        reply = control_exchange(corral.control, request_bytes)
        assert reply["ok"] is False and "error" in reply, (request_bytes[:40], reply)
    held = []
    try:
        for _ in range(200):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(corral.control))
            held.append(sock)
        assert_serving(corral, admin)
    finally:
        for sock in held:
            sock.close()
    live = httpx.get(f"http://{admin}/livez")
    assert live.status_code == 200 and "manager_pid" not in live.json()
    assert str(corral.process.pid) not in live.text, "/livez tells no pid"
    assert "Traceback" not in corral.log, corral.log


SAMPLING = """
import os, resource, sys
from corral.manager.resources import ProcessSampler, memory_available

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
sampler = ProcessSampler()
sampler.sample_cpu([os.getpid(), os.getppid()])
print(sampler.memory(os.getpid()), memory_available() > 0)
"""


def test_sampling_survives_a_full_fd_table() -> None:
    """The manager's CPU and memory sampling read /proc; with no descriptor left they answer "unknown"."""
    result = subprocess.run([sys.executable, "-c", SAMPLING], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "True"]


def test_the_systemd_unit_sets_the_open_files_limit(tmp_path: Path) -> None:
    # a service user of the target host (as `sudo corral export systemd` gives): a DynamicUser= could not read
    # a project under /tmp, which the export refuses
    env = {**os.environ, "SUDO_USER": "corral-test-service"}
    result = run_cli("export", "systemd", "main:app", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "\nLimitNOFILE=65536\n" in result.stdout


def test_bad_input_and_a_flood_on_the_admin_port_during_the_pre_start_steps(
    corrals: list[Corral], tmp_path: Path
) -> None:
    """The admin listener opens before the pre-start steps: the same bad requests and a connection flood then get
    their error answers, the manager stays up and silent, and the instance goes on to serve once the step ends."""
    from test_health import WAITING_STEP

    write_app(tmp_path, APP)
    write_app(tmp_path, WAITING_STEP, "step.py")
    started, go = tmp_path / "step-started", tmp_path / "go"
    admin_port = free_port()
    admin = f"127.0.0.1:{admin_port}"
    corral = Corral(tmp_path, "app.py", "-w", "1", "--admin-bind", admin,
                    "--prestart", f"{sys.executable} {tmp_path / 'step.py'} {started} {go}")  # fmt: skip
    corrals.append(corral)
    wait_for(started.exists, what="the pre-start step to run")
    for request_bytes, status in HTTP_CASES:
        answer = http_exchange(admin, request_bytes)
        assert answer.startswith(b"HTTP/1.1 " + status), (request_bytes[:40], answer[:200])
    held = open_connections(admin, 150, slowloris=False) + open_connections(admin, 150, slowloris=True)
    try:
        trickle(held)
        live = wait_for(lambda: httpx.get(f"http://{admin}/livez", timeout=5), 30, "/livez under attack")
        assert live.status_code == 200 and live.json()["phase"] == "prestart", live.text
    finally:
        for sock in held:
            sock.close()
    assert not go.exists() and corral.process.poll() is None, "still in the step, still running"
    go.write_text("")
    corral.wait_ready(1)
    assert corral.get().text == "served"
    assert "Traceback" not in corral.log, corral.log
