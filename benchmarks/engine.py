#!/usr/bin/env python3
"""Corral's HTTP protocol against uvicorn and granian: requests per CPU-second, p99 and worker PSS.

Every server runs at once, 2 workers each, idle while another is measured. Round after round, each is loaded in
turn with wrk (the order rotates each round): requests answered, divided by the CPU time its whole process tree
used meanwhile (wrk's own CPU is not counted). Per-round ratios against Corral cancel the machine's drift.
Each server runs in a session of its own: with the kernel's autogroup scheduling a session is one group with its
fair share of the CPUs, and Corral's template starts one anyway, so every server gets a group of its own.

    .venv/bin/python benchmarks/engine.py                      # 5 rounds of 6 s, both apps
    .venv/bin/python benchmarks/engine.py --rounds 7 --seconds 8 --app raw
    .venv/bin/python benchmarks/engine.py --servers corral,corral-no-metrics   # metrics on against off
    .venv/bin/python benchmarks/engine.py --together           # all servers loaded at once, each round

Servers: corral (`--http auto`, metrics on, the default), corral-no-metrics, corral-uvicorn (Corral on uvicorn's
httptools protocol, `--http httptools`), uvicorn (`--http httptools --loop uvloop`), granian (`--interface asgi`).
All without access logs.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
APPS = {"fastapi": "hello_fastapi:app", "raw": "hello_raw:app"}
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def command(server: str, app: str, port: int, scratch: Path) -> list[str]:
    corral = [str(BIN / "corral"), "run", app, "-w", "2", "-b", f"{HOST}:{port}", "--no-access-log",
              "--log-level", "warning", "--app-dir", str(HERE / "apps"), "--control", str(scratch / f"{port}.sock")]
    return {
        "corral": corral,
        "corral-no-metrics": [*corral, "--no-metrics"],
        "corral-uvicorn": [*corral, "--http", "httptools"],
        "uvicorn": [str(BIN / "uvicorn"), app, "--workers", "2", "--host", HOST, "--port", str(port),
                    "--no-access-log", "--log-level", "warning", "--http", "httptools", "--loop", "uvloop",
                    "--app-dir", str(HERE / "apps")],
        "granian": [str(BIN / "granian"), "--interface", "asgi", "--workers", "2", "--host", HOST, "--port", str(port),
                    "--no-access-log", "--log-level", "warning", "--working-dir", str(HERE / "apps"), app],
    }[server]


def wait_served(port: int, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server on port {port} did not answer within {deadline:.0f} s")


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def worker_pss(processes: list[psutil.Process]) -> float:
    """The largest PSS among the processes that serve (each server's workers), MiB."""
    values = []
    for process in processes[1:]:
        with contextlib.suppress(psutil.Error):
            values.append(process.memory_full_info().pss / 2**20)
    return max(values, default=0.0)


def wrk(port: int, seconds: float, connections: int) -> tuple[int, float]:
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "--timeout", "10s",
                          "-d", f"{max(1, round(seconds))}s", "--latency",
                          f"http://{HOST}:{port}/"], capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"errors under load on port {port}:\n{out}")
    match = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)] if match else float("nan")
    return requests, p99


def measure(pid: int, port: int, seconds: float, connections: int) -> dict[str, float]:
    wrk(port, 1.0, connections)  # warm-up
    processes = tree(pid)
    before = cpu(processes)
    requests, p99 = wrk(port, seconds, connections)
    used = cpu(processes) - before
    return {"rps": requests / seconds, "per_cpu": requests / used, "p99": p99, "pss": worker_pss(processes)}


def measure_together(running: dict[str, tuple[subprocess.Popen[bytes], int]], seconds: float,
                     connections: int) -> dict[str, dict[str, float]]:
    """Every server loaded at once, for the same seconds on the same CPUs: whatever else the machine does
    disturbs them alike."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(running)) as pool:
        list(pool.map(lambda item: wrk(item[1], 1.0, connections), running.values()))  # warm-up
        trees = {server: tree(process.pid) for server, (process, _) in running.items()}
        before = {server: cpu(processes) for server, processes in trees.items()}
        loads = {server: pool.submit(wrk, port, seconds, connections) for server, (_, port) in running.items()}
        done = {server: future.result() for server, future in loads.items()}
    results = {}
    for server, (requests, p99) in done.items():
        used = cpu(trees[server]) - before[server]
        results[server] = {"rps": requests / seconds, "per_cpu": requests / used, "p99": p99,
                           "pss": worker_pss(trees[server])}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="corral,uvicorn,granian,corral-uvicorn")
    parser.add_argument("--app", choices=[*APPS, "both"], default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--together", action="store_true", help="load every server at once in each round")
    args = parser.parse_args()
    servers = args.servers.split(",")
    if "granian" in servers and shutil.which("granian", path=str(BIN)) is None:
        raise SystemExit("granian is not installed in this environment (pip install granian)")
    apps = list(APPS) if args.app == "both" else [args.app]
    for app in apps:
        results: dict[str, list[dict[str, float]]] = {server: [] for server in servers}
        running: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        with tempfile.TemporaryDirectory(prefix="corral-engine-") as tmp:
            try:
                for server in servers:
                    port = free_port()
                    running[server] = (subprocess.Popen(command(server, APPS[app], port, Path(tmp)),
                                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                        start_new_session=True), port)
                for _, port in running.values():
                    wait_served(port)
                for _ in range(args.rounds if args.together else 0):
                    for server, result in measure_together(running, args.seconds, args.connections).items():
                        results[server].append(result)
                for round_ in range(0 if args.together else args.rounds):
                    order = servers[round_ % len(servers):] + servers[: round_ % len(servers)]
                    for server in order:
                        process, port = running[server]
                        results[server].append(measure(process.pid, port, args.seconds, args.connections))
            finally:
                stop_all(process for process, _ in running.values())
        report(app, servers, results)
    return 0


def stop_all(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """Terminate the servers together, then wait for each (killed after 30 s)."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def report(
    app: str,
    servers: list[str],
    results: dict[str, list[dict[str, float]]],
    heading: str = "###",
    first: str = "server",
) -> None:
    """A table of each server's runs (medians), then each server against the first, round by round. Runs that
    count failed requests (`failures`) get a column for them."""
    failures = all("failures" in run for runs in results.values() for run in runs)
    print(f"\n{heading} {APPS[app]}\n")
    print(f"| {first} | requests per CPU-second (median, rounds) | requests/s | p99 ms |"
          + (" failed |" if failures else "") + " worker PSS MiB |")
    print("|---|---|---|---|" + ("---|" if failures else "") + "---|")
    for server in servers:
        runs = results[server]
        per_cpu = [run["per_cpu"] for run in runs]
        print(f"| {server} | {statistics.median(per_cpu):,.0f} ({', '.join(f'{v:,.0f}' for v in per_cpu)}) | "
              f"{statistics.median(run['rps'] for run in runs):,.0f} | "
              f"{statistics.median(run['p99'] for run in runs):.2f} | "
              + (f"{sum(int(run['failures']) for run in runs)} | " if failures else "")
              + f"{statistics.median(run['pss'] for run in runs):.1f} |")
    for other in servers[1:]:
        ratios = [a["per_cpu"] / b["per_cpu"] for a, b in zip(results[servers[0]], results[other], strict=True)]
        print(f"\n{servers[0]} / {other}, per round: {', '.join(f'{r:.2f}' for r in ratios)} "
              f"(median {statistics.median(ratios):.2f})")

if __name__ == "__main__":
    sys.exit(main())
