"""Start real `corral run` processes on loopback and wait on conditions (never on fixed sleeps)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from corral.config import settings_from
from corral.options import Options

DEADLINE = 60.0

LIFESPAN_APP = """
    import os

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await receive()
        body = f"hello from {os.getpid()}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})
"""

PLAIN_APP = """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%s"})
"""

OK_APP = """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
"""

# Each worker answers one request, then dies (os._exit) on its next: every death is a crash while serving
SECOND_REQUEST_CRASHES_APP = """
    import os

    answered = 0

    async def app(scope, receive, send):
        global answered
        if scope["type"] != "http":
            return
        if answered:
            os._exit(1)
        answered += 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
"""

NEVER_IMPORTED_APP = """
    import time

    def wait_for_a_database_that_never_answers():
        time.sleep(3600)

    wait_for_a_database_that_never_answers()
"""


def options_from(values: dict[str, Any]) -> Options:
    """The Options `corral run` would hand its processes for these values (no environment, no file)."""
    return settings_from(values).options()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


CORRAL = str(Path(sys.executable).with_name("corral"))  # the console script, as a user runs it


def corral_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "corral", *args]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = DEADLINE, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(corral_command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def write_app(directory: Path, source: str, name: str = "app.py") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def served_then_closed(connection: http.client.HTTPConnection, protocol: str) -> None:
    """The response to a request a draining worker served: 200 "ok", then the connection closes."""
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"ok")
    assert response.getheader("connection") == "close", protocol
    assert connection.sock is None or connection.sock.recv(1) == b""


class Corral:
    """A `corral run` process with its own port, control socket and log file."""

    def __init__(self, tmp_path: Path, app: str, *args: str, env: dict[str, str] | None = None,
                 port: int | None = None, preexec_fn: Callable[[], None] | None = None,
                 command_name: str = "run") -> None:
        self.tmp_path = tmp_path
        self.port = port or free_port()
        self.control = tmp_path / f"control-{self.port}.sock"
        self.log_path = tmp_path / f"corral-{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        given = [app] if app else []  # "": APP omitted, discovered
        command = corral_command(command_name, *given, "-b", f"127.0.0.1:{self.port}", "--control", str(self.control),
                                 *args)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, cwd=tmp_path, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})}, start_new_session=True,
                                        preexec_fn=preexec_fn)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def get(self, path: str = "/", timeout: float = 10.0) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout)

    def status(self) -> dict[str, Any]:
        result = run_cli("status", "--json", "--control", str(self.control))
        if result.returncode != 0:
            raise ValueError(result.stderr)
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def ready_pids(self) -> list[int]:
        return sorted(w["pid"] for w in self.status()["workers"] if w["state"] == "ready")

    def wait_ready(self, workers: int = 1, timeout: float = DEADLINE) -> list[int]:
        def ready() -> list[int] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"corral exited with {self.process.returncode}:\n{self.log}")
            pids = self.ready_pids()
            status = self.status()
            return pids if len(pids) == workers and len(status["workers"]) == workers else None

        pids: list[int] = wait_for(ready, timeout, f"{workers} ready workers")
        return pids

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"corral did not exit within {timeout:g} s:\n{self.log}") from None

    def signal(self, sig: int) -> None:
        os.kill(self.process.pid, sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._log.close()


def process_tree(pid: int) -> list[int]:
    """pids of `pid`'s descendants (templates and workers), from /proc."""
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
