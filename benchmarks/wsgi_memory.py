#!/usr/bin/env python3
"""Where a WSGI app's memory goes, process by process: Corral beside gunicorn gthread --preload.

The settings of benchmarks/wsgi.py (2 workers, 8 threads each, the Flask and Django hellos of benchmarks/apps):
each server is started, loaded with `wrk -t2 -c16` for 3 s on `/` and 2 s on `/sleep` (so that every thread
has served), then each of its processes is read from /proc/PID/smaps_rollup (PSS, and USS: its private pages)
and the server is stopped. Servers run one after the other, round after round; with --baseline-src, the
Corral of another checkout's `src` (put on PYTHONPATH) runs beside this one.

    .venv/bin/python benchmarks/wsgi_memory.py --rounds 3
    .venv/bin/python benchmarks/wsgi_memory.py --rounds 3 --baseline-src /path/to/older/checkout/src
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
APPS = {"flask": "wsgi_flask:app", "django": "wsgi_django:application"}
WORKERS, THREADS = 2, 8
MIB = 1024  # smaps_rollup counts kB


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def command(server: str, app: str, port: int, control: Path) -> list[str]:
    if server == "gunicorn":
        return [str(BIN / "gunicorn"), "-k", "gthread", "-w", str(WORKERS), "--threads", str(THREADS), "--preload",
                "-b", f"{HOST}:{port}", "--log-level", "warning", app]
    return [str(BIN / "corral"), "run", app, "-w", str(WORKERS), "--threads", str(THREADS), "-b", f"{HOST}:{port}",
            "--control", str(control), "--no-access-log", "--log-level", "warning"]


def answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection(HOST, port, timeout=2)
        connection.request("GET", "/")
        return connection.getresponse().status == 200
    except OSError:
        return False


def rollup(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        values[key] = int(value.split()[0])
    return values


def role(server: str, depth: int) -> str:
    if server == "gunicorn":
        return ("master", "worker")[min(depth, 1)]
    return ("manager", "template", "worker")[min(depth, 2)]


def measure(server: str, app: str, scratch: Path, env: dict[str, str]) -> list[tuple[str, float, float]]:
    """(role, PSS MiB, USS MiB) of each process of the server's tree after the load."""
    port = free_port()
    name = server.split(":")[0]
    log = scratch / f"{name}.log"
    process = subprocess.Popen(command(name, app, port, scratch / f"{port}.sock"), cwd=HERE / "apps",
                               stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True,
                               env={**os.environ, **env})  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{server} did not start: {log.read_text()[-500:]}")
            time.sleep(0.1)
        for path, seconds in (("/", 3), ("/sleep", 2)):
            subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", f"http://{HOST}:{port}{path}"],
                           capture_output=True, timeout=60, check=True)  # fmt: skip
        time.sleep(0.5)
        rows = []
        for depth, pids in enumerate(_levels(process.pid)):
            for pid in pids:
                values = rollup(pid)
                private = values["Private_Clean"] + values["Private_Dirty"]
                rows.append((role(name, depth), values["Pss"] / MIB, private / MIB))
        return rows
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)


def _levels(root: int) -> list[list[int]]:
    levels, current = [], [root]
    while current:
        levels.append(current)
        current = [int(c) for pid in current for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return levels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, help="src/ directory of the checkout to compare with")
    args = parser.parse_args()
    servers = ["corral", *(["corral:baseline"] if args.baseline_src else []), "gunicorn"]
    totals: dict[tuple[str, str], list[float]] = {}
    parts: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(1, args.rounds + 1):
            for app_name, app in APPS.items():
                for server in servers:
                    env = {"PYTHONPATH": str(args.baseline_src)} if server == "corral:baseline" else {}
                    rows = measure(server, app, Path(scratch), env)
                    total = sum(pss for _, pss, _ in rows)
                    totals.setdefault((app_name, server), []).append(total)
                    for name in dict.fromkeys(r for r, _, _ in rows):
                        mine = [(pss, uss) for r, pss, uss in rows if r == name]
                        parts.setdefault((app_name, server, name), []).append(
                            (sum(p for p, _ in mine) / len(mine), sum(u for _, u in mine) / len(mine)))
                    print(f"round {round_} {app_name} {server}: {total:.1f} MiB PSS  " + "  ".join(
                        f"{r} {pss:.1f}/{uss:.1f}" for r, pss, uss in rows), flush=True)
    print("\nmedians over the rounds (PSS / USS MiB; a worker is the mean of the workers)")
    for (app_name, server), values in totals.items():
        line = [f"{app_name:7} {server:16} total {statistics.median(values):5.1f}"]
        for (a, s, name), pairs in parts.items():
            if (a, s) == (app_name, server):
                pss = statistics.median(p for p, _ in pairs)
                uss = statistics.median(u for _, u in pairs)
                line.append(f"{name} {pss:.1f} / {uss:.1f}")
        print("  ".join(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
