#!/usr/bin/env python3
"""Development reloaders: `corral dev` beside `uvicorn --reload` and `fastapi dev`, all in one run.

For each app (the FastAPI hello, and the same app taking 2 s to import) the three servers run at once, each
in a directory of its own on its own loopback port. Then:

1. save-to-answer: rounds alternate the servers (round 1: corral, uvicorn, fastapi; round 2: ...); each save
   rewrites app.py with a new version string and times from just before the write to the first response
   carrying it (polled every 10 ms, a new connection each time);
2. failures: for each server in turn, 20 saves under light load (2 clients, each a request every 20 ms on a
   new connection, 10 s timeout); each save waits for the new version to answer before the next one. A
   refused connection, a reset, a timeout or a status other than 200 is a failed request; the slowest
   request shows how long a request waited while the server restarted.

    .venv/bin/python benchmarks/dev_reload.py              # 5 rounds, 20 saves: about 6 minutes
    .venv/bin/python benchmarks/dev_reload.py --quick      # 2 rounds, 5 saves

Every wait is bounded (60 s for a version to answer). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
APP = '''
import time

time.sleep({import_seconds})

from fastapi import FastAPI

app = FastAPI()
VERSION = "{version}"


@app.get("/")
async def hello() -> dict[str, str]:
    return {{"message": "hello", "version": VERSION}}
'''
APPS = {"FastAPI hello": 0.0, "2 s import": 2.0}
WAIT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    directory: Path
    port: int
    import_seconds: float
    process: subprocess.Popen[bytes] | None = None
    version: int = 0
    timings: list[float] = field(default_factory=list)
    failed: int = 0
    sent: int = 0
    slowest: float = 0.0

    def command(self) -> list[str]:
        port = str(self.port)
        if self.name == "corral dev":
            return [str(BIN / "corral"), "dev", "app.py", "-b", f"127.0.0.1:{port}", "--no-access-log",
                    "--control", str(self.directory / "control.sock")]
        if self.name == "uvicorn --reload":
            return [sys.executable, "-m", "uvicorn", "app:app", "--reload", "--port", port, "--no-access-log"]
        return [str(BIN / "fastapi"), "dev", "app.py", "--port", port]

    def save(self) -> str:
        self.version += 1
        text = f"v{self.version}"
        (self.directory / "app.py").write_text(APP.format(import_seconds=self.import_seconds, version=text))
        return text

    def start(self) -> None:
        self.save()
        log = open(self.directory / "server.log", "wb")  # noqa: SIM115 - kept for the process's life
        self.process = subprocess.Popen(self.command(), cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def body(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=10) as response:
            return response.read().decode()

    def wait_for(self, version: str) -> float:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                if f'"{version}"' in self.body():
                    return time.monotonic()
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.01)
        raise SystemExit(f"{self.name}: {version} did not answer within {WAIT:g} s; see {self.directory}/server.log")

    def timed_save(self) -> float:
        before = time.monotonic()
        version = self.save()
        return self.wait_for(version) - before


def load(server: Server, stop: threading.Event) -> None:
    while not stop.is_set():
        server.sent += 1
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10) as response:
                response.read()
                if response.status != 200:
                    server.failed += 1
        except (OSError, urllib.error.URLError):
            server.failed += 1
        server.slowest = max(server.slowest, time.monotonic() - started)
        stop.wait(0.02)


def measure(app: str, import_seconds: float, rounds: int, saves: int, root: Path) -> list[Server]:
    names = ["corral dev", "uvicorn --reload", "fastapi dev"]
    servers = [Server(name, root / app.replace(" ", "-") / str(i), free_port(), import_seconds)
               for i, name in enumerate(names)]
    for server in servers:
        server.directory.mkdir(parents=True)
        server.start()
    try:
        for server in servers:
            server.wait_for(f"v{server.version}")
        for index in range(rounds):
            order = servers[index % 3:] + servers[:index % 3]
            for server in order:
                server.timings.append(server.timed_save())
        for server in servers:
            stop = threading.Event()
            clients = [threading.Thread(target=load, args=(server, stop)) for _ in range(2)]
            for client in clients:
                client.start()
            try:
                for _ in range(saves):
                    server.timed_save()
            finally:
                stop.set()
                for client in clients:
                    client.join(30)
    finally:
        for server in servers:
            server.stop()
    return servers


def version_of(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr) else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds and 5 saves")
    args = parser.parse_args()
    rounds, saves = (2, 5) if args.quick else (5, 20)
    if not (BIN / "fastapi").exists():
        raise SystemExit("fastapi dev is missing: pip install fastapi-cli (the bench extra)")
    root = Path(tempfile.mkdtemp(prefix="dev-reload-"))
    load_before = os.getloadavg()[0]
    rows = []
    try:
        for app, seconds in APPS.items():
            for server in measure(app, seconds, rounds, saves, root):
                timing = statistics.median(server.timings)
                rows.append(f"| {app} | {server.name} | {timing * 1000:.0f} ms | {min(server.timings) * 1000:.0f} to "
                            f"{max(server.timings) * 1000:.0f} ms | {server.failed} of {server.sent} | "
                            f"{server.slowest * 1000:.0f} ms |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{rounds} rounds of saves timed, then {saves} saves under light load per server; "
          f"{os.cpu_count()} cores, load average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
          f"Python {platform.python_version()}; {version_of([str(BIN / 'corral'), '--version'])}; "
          f"uvicorn {version_of([sys.executable, '-m', 'uvicorn', '--version'])}; "
          f"{version_of([str(BIN / 'fastapi'), '--version'])}\n")
    print("| app | server | save to new code answering (median) | range | requests failed during the saves "
          "| slowest request during the saves |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
