#!/usr/bin/env python3
"""WSGI apps (Flask, Django): Corral beside gunicorn (sync, and gthread --preload) and granian --interface wsgi.

One bounded run on this machine, with the project's interpreter (gunicorn and granian installed beside it):

    .venv/bin/python benchmarks/wsgi.py                  # about 6 minutes
    .venv/bin/python benchmarks/wsgi.py --rounds 1 --seconds 1 --reload-seconds 4   # a smoke run

All servers of an app run at once, idle but for the one under load, so that rounds alternate between them
(the machine's speed drifts): each round loads each server in turn with wrk for `--seconds`, and the table
gives medians over the rounds and the per-round ratio of Corral to gunicorn gthread. Per server: requests/s, p99,
requests per CPU-second of the whole process tree, the tree's PSS after the load, and the failed requests of
a wrk run during two reloads (`corral reload`, SIGHUP to gunicorn's and granian's master).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import REPORT_LUA, parse_wrk  # noqa: E402

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
APPS = {"flask": "wsgi_flask:app", "django": "wsgi_django:application"}
SERVERS = ("corral", "gunicorn-sync", "gunicorn-gthread", "granian")
WORKERS, THREADS, SYNC_WORKERS = 2, 8, 5  # gunicorn's advice for sync workers: 2 x CPUs + 1


def command(server: str, app: str, port: int, control: Path) -> list[str]:
    bind = f"{HOST}:{port}"
    if server == "corral":
        return [str(BIN / "corral"), "run", app, "-w", str(WORKERS), "--threads", str(THREADS), "-b", bind,
                "--control", str(control), "--no-access-log", "--log-level", "warning"]
    if server == "gunicorn-sync":
        return [str(BIN / "gunicorn"), "-w", str(SYNC_WORKERS), "-b", bind, "--log-level", "warning", app]
    if server == "gunicorn-gthread":
        return [str(BIN / "gunicorn"), "-k", "gthread", "-w", str(WORKERS), "--threads", str(THREADS), "--preload",
                "-b", bind, "--log-level", "warning", app]
    return [str(BIN / "granian"), "--interface", "wsgi", "--workers", str(WORKERS), "--blocking-threads",
            str(THREADS), "--host", HOST, "--port", str(port), "--no-access-log", "--log-level", "warning", app]


class Server:
    def __init__(self, name: str, app: str, scratch: Path) -> None:
        with contextlib.closing(__import__("socket").socket()) as sock:
            sock.bind((HOST, 0))
            self.port = sock.getsockname()[1]
        self.name = name
        self.control = scratch / f"{name}.sock"
        self.argv = command(name, app, self.port, self.control)
        self.process = subprocess.Popen(self.argv, cwd=HERE / "apps", stdout=subprocess.DEVNULL,
                                        stderr=open(scratch / f"{name}.log", "w"), start_new_session=True)  # noqa: SIM115
        deadline = time.monotonic() + 90
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start: {(scratch / f'{name}.log').read_text()[-500:]}")
            time.sleep(0.1)

    def answers(self) -> bool:
        try:
            connection = http.client.HTTPConnection(HOST, self.port, timeout=2)
            connection.request("GET", "/")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def cpu(self) -> float:
        total = 0.0
        for process in self.tree():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
        return total

    def pss(self) -> float:
        total = 0
        for process in self.tree():
            with contextlib.suppress(psutil.Error):
                total += process.memory_full_info().pss
        return total / 2**20

    def reload(self) -> None:
        if self.name == "corral":
            subprocess.run([str(BIN / "corral"), "reload", "--control", str(self.control)], check=True,
                           capture_output=True, timeout=120)
        else:
            os.kill(self.process.pid, signal.SIGHUP)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def wrk(port: int, path: str, seconds: float, connections: int) -> dict[str, Any]:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(REPORT_LUA),
            f"http://{HOST}:{port}{path}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    return parse_wrk(done.stdout, done.stderr)


def measure(server: Server, path: str, seconds: float, connections: int) -> dict[str, Any]:
    before = server.cpu()
    result = wrk(server.port, path, seconds, connections)
    cpu = server.cpu() - before
    result["per_cpu_s"] = round(result["requests"] / cpu, 1) if cpu > 0 else None
    return result


def reloads(server: Server, seconds: float, connections: int) -> dict[str, Any]:
    """wrk for `seconds`; two reloads at a third and two thirds of it."""
    def reload_twice() -> None:
        for _ in range(2):
            time.sleep(seconds / 3)
            server.reload()

    trigger = threading.Thread(target=reload_twice)
    trigger.start()
    result = wrk(server.port, "/", seconds, connections)
    trigger.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--reload-seconds", type=float, default=9.0)
    parser.add_argument("--out", default=str(HERE / "results" / "wsgi.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {"argv": sys.argv, "cpus": os.cpu_count(), "results": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for app_name, app in APPS.items():
            servers = [Server(name, app, Path(scratch)) for name in SERVERS]
            try:
                runs: dict[str, list[dict[str, Any]]] = {}
                for _ in range(args.rounds):
                    for path in ("/", "/sleep"):
                        for server in servers:
                            key = f"{app_name} {path} {server.name}"
                            runs.setdefault(key, []).append(measure(server, path, args.seconds, args.connections))
                for server in servers:
                    results["results"][f"{app_name} pss {server.name}"] = round(server.pss(), 1)
                for key, rounds in runs.items():
                    results["results"][key] = summarise(rounds)
                if app_name == "flask":
                    for server in servers:
                        results["results"][f"reload {server.name}"] = reloads(
                            server, args.reload_seconds, args.connections
                        )
            finally:
                for server in servers:
                    server.stop()
    for app_name in APPS:
        for path in ("/", "/sleep"):
            ours = results["results"][f"{app_name} {path} corral"]["rounds"]
            peer = results["results"][f"{app_name} {path} gunicorn-gthread"]["rounds"]
            results["results"][f"{app_name} {path} ratio"] = {
                "rps": [round(a["rps"] / b["rps"], 2) for a, b in zip(ours, peer, strict=True)],
                "per_cpu_s": [round(a["per_cpu_s"] / b["per_cpu_s"], 2) for a, b in zip(ours, peer, strict=True)
                              if a["per_cpu_s"] and b["per_cpu_s"]],
            }
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results["results"], indent=1))
    return 0


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    per_cpu = [r["per_cpu_s"] for r in rounds if r["per_cpu_s"]]
    return {
        "rps": round(statistics.median(r["rps"] for r in rounds), 1),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in rounds), 2),
        "per_cpu_s": round(statistics.median(per_cpu), 1) if per_cpu else None,
        "failed": sum(r["failed"] for r in rounds),
        "rounds": [{"rps": r["rps"], "per_cpu_s": r["per_cpu_s"]} for r in rounds],
    }


if __name__ == "__main__":
    sys.exit(main())
