#!/usr/bin/env python3
"""HTTP/2 cleartext (h2c, prior knowledge): Corral against granian, uvicorn (zttp) and hypercorn, and Corral's
HTTP/2 against its own HTTP/1.1. Requests per CPU-second of each server's whole process tree, p99, failures.

Every server runs at once with the same number of workers, idle while another is measured. Round after round,
each load is run in turn (the order rotates each round) with h2load: a 1 s warm-up, then `-D SECONDS` measured;
the 2xx responses are divided by the CPU time (user + system, psutil) the server's tree used meanwhile (h2load's
own CPU is not counted). Per-round ratios against Corral cancel the machine's drift. Each server runs in a
session of its own (autogroup scheduling gives each session its fair share of the CPUs).

    .venv/bin/pip install -e '.[bench]'                      # granian, hypercorn, zttp; h2load: nghttp2-client
    .venv/bin/python benchmarks/http2.py                     # 5 rounds of 5 s, both apps, 2 workers
    .venv/bin/python benchmarks/http2.py --workers 1 --app raw --rounds 7
    .venv/bin/python benchmarks/http2.py --loads granian,uvicorn,hypercorn   # the peers only

Loads: corral (h2c, `h2load -c16 -m10`), corral-h1 (the same Corral server over HTTP/1.1: `h2load --h1`, as
many connections as h2's in-flight streams, `-c160 -m1`, no pipelining), granian (`--interface asgi --http 2`),
uvicorn (`--http zttp --http2 --loop uvloop`), hypercorn (`--worker-class uvloop`). All without access logs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine import APPS, BIN, HERE, HOST, cpu, free_port, report, stop_all, tree, worker_pss

SERVERS = ("corral", "granian", "uvicorn", "hypercorn")
LOADS = {"corral": "corral", "corral-h1": "corral", "granian": "granian", "uvicorn": "uvicorn",
         "hypercorn": "hypercorn"}


def command(server: str, app: str, port: int, workers: int, scratch: Path) -> list[str]:
    n = str(workers)
    return {
        "corral": [str(BIN / "corral"), "run", app, "-w", n, "-b", f"{HOST}:{port}", "--no-access-log",
                   "--log-level", "warning", "--app-dir", str(HERE / "apps"),
                   "--control", str(scratch / f"{port}.sock")],
        "granian": [str(BIN / "granian"), "--interface", "asgi", "--http", "2", "--workers", n, "--host", HOST,
                    "--port", str(port), "--no-access-log", "--log-level", "warning",
                    "--working-dir", str(HERE / "apps"), app],
        "uvicorn": [str(BIN / "uvicorn"), app, "--workers", n, "--host", HOST, "--port", str(port),
                    "--no-access-log", "--log-level", "warning", "--http", "zttp", "--http2", "--loop", "uvloop",
                    "--app-dir", str(HERE / "apps")],
        # hypercorn has no --app-dir: it imports from its working directory; no access log unless asked
        "hypercorn": [str(BIN / "hypercorn"), "--workers", n, "--bind", f"{HOST}:{port}", "--worker-class",
                      "uvloop", "--log-level", "warning", app],
    }[server]


def missing_peer(servers: set[str]) -> str | None:
    """What is missing to run these servers, in one line, or None."""
    for tool, package in (("h2load", "apt-get install nghttp2-client"), ("curl", "apt-get install curl")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed ({package})"
    for server in servers - {"corral"}:
        if not (BIN / server).exists():
            return f"{server} is not installed in this environment (pip install -e '.[bench]')"
    if "uvicorn" in servers and importlib.util.find_spec("zttp") is None:
        return "zttp is not installed in this environment, uvicorn needs it for HTTP/2 (pip install -e '.[bench]')"
    return None


def wait_h2c(port: int, process: subprocess.Popen[bytes], name: str, deadline: float = 60) -> None:
    """Until the server answers 200 over h2c with prior knowledge (granian --http 2 answers nothing else)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with status {process.returncode} before serving")
        done = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "-m", "2",
                               "--http2-prior-knowledge", f"http://{HOST}:{port}/"],
                              capture_output=True, text=True, check=False)
        if done.stdout == "200 2":
            return
        time.sleep(0.3)
    raise SystemExit(f"{name} on port {port} did not answer over h2c within {deadline:.0f} s")


def h2load(port: int, seconds: float, connections: int, streams: int, h1: bool, log: Path | None) -> dict[str, float]:
    argv = ["h2load", "-t1", f"-c{connections}", f"-m{streams}", f"-D{max(1, round(seconds))}"]
    argv += ["--h1"] if h1 else []
    argv += [f"--log-file={log}"] if log else []
    out = subprocess.run([*argv, f"http://{HOST}:{port}/"], capture_output=True, text=True, check=False,
                         timeout=seconds + 60).stdout
    match = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    codes = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if match is None or codes is None:
        raise SystemExit(f"h2load gave no figures on port {port}: {out.strip().splitlines()[-1:]}")
    # in a timed run the status codes also count responses begun but not finished by the end: count the
    # requests h2load saw complete, less those that were not 2xx
    not_ok = sum(int(value) for value in codes.groups())
    return {"ok": int(match.group(4)) - not_ok, "failures": int(match.group(5)) + not_ok}


def p99_ms(log: Path) -> float:
    durations = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") == 2)
    return durations[int(len(durations) * 0.99)] / 1000 if durations else float("nan")


def measure(pid: int, port: int, load: str, args: argparse.Namespace, scratch: Path) -> dict[str, float]:
    h1 = load == "corral-h1"
    connections, streams = (args.connections * args.streams, 1) if h1 else (args.connections, args.streams)
    h2load(port, 1, connections, streams, h1, None)  # warm-up
    processes = tree(pid)
    log = scratch / f"{load}.log"
    before = cpu(processes)
    result = h2load(port, args.seconds, connections, streams, h1, log)
    used = cpu(processes) - before
    return {"rps": result["ok"] / args.seconds, "per_cpu": result["ok"] / used, "p99": p99_ms(log),
            "failures": result["failures"],
            "pss": worker_pss(processes) if len(processes) > 1 else worker_pss([processes[0], *processes])}


def run_app(app: str, loads: list[str], args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    servers = [server for server in SERVERS if server in {LOADS[load] for load in loads}]
    results: dict[str, list[dict[str, float]]] = {load: [] for load in loads}
    running: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    with tempfile.TemporaryDirectory(prefix="corral-h2-") as tmp:
        try:
            for server in servers:
                port = free_port()
                running[server] = (subprocess.Popen(command(server, APPS[app], port, args.workers, Path(tmp)),
                                                    cwd=HERE / "apps", stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL, start_new_session=True), port)
            for server, (process, port) in running.items():
                wait_h2c(port, process, server)
            for round_ in range(args.rounds):
                order = loads[round_ % len(loads):] + loads[: round_ % len(loads)]
                for load in order:
                    process, port = running[LOADS[load]]
                    results[load].append(measure(process.pid, port, load, args, Path(tmp)))
        finally:
            stop_all(process for process, _ in running.values())
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", default=",".join(LOADS), help=f"comma-separated subset of {','.join(LOADS)}")
    parser.add_argument("--app", choices=[*APPS, "both"], default="both")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--streams", type=int, default=10, help="concurrent streams per connection (h2load -m)")
    args = parser.parse_args()
    loads = args.loads.split(",")
    unknown = [load for load in loads if load not in LOADS]
    if unknown or not loads:
        parser.error(f"unknown load {unknown[0] if unknown else ''!r}; choose among {','.join(LOADS)}")
    problem = missing_peer({LOADS[load] for load in loads})
    if problem:
        print(problem, file=sys.stderr)
        return 2
    load_average = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{args.workers} workers each, h2load -c{args.connections} -m{args.streams}, {args.rounds} rounds of "
          f"{args.seconds:.0f} s; load average (1/5/15 min) at the start: {load_average}")
    for app in list(APPS) if args.app == "both" else [args.app]:
        report(app, loads, run_app(app, loads, args), heading="####", first="load")
    print(f"\nload average at the end: {' / '.join(f'{value:.2f}' for value in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
