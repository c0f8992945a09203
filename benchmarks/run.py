#!/usr/bin/env python3
"""Corral beside uvicorn, gunicorn (uvicorn-worker) and granian: one machine, one run, one server at a time.

Run it with the project's interpreter (Corral comes from that environment; the peers get their own
virtual environment under benchmarks/.peers/, created here with the project's uvicorn, uvloop and
httptools versions so both sides use the same HTTP engine):

    .venv/bin/python benchmarks/run.py                 # the full suite, ~10 minutes
    .venv/bin/python benchmarks/run.py --quick --only throughput --servers corral

Results are printed and written to benchmarks/results/latest.md and latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
REPORT_LUA = HERE / "report.lua"
HOST = "127.0.0.1"
SCENARIOS = ("throughput", "memory", "reload", "recovery", "watchdog")
SERVERS = ("corral", "uvicorn", "gunicorn", "gunicorn-preload", "granian")
LABELS = {"gunicorn-preload": "gunicorn --preload"}
# Packages whose versions the peers' environment copies from Corral's, so the engine is the same.
PINNED = ("uvicorn", "uvloop", "httptools", "h11", "fastapi", "starlette", "pydantic", "numpy", "psutil")
PEER_PACKAGES = ("uvicorn[standard]", "gunicorn", "uvicorn-worker", "granian", "fastapi", "numpy", "psutil")
VERSIONS = (*PINNED, "gunicorn", "uvicorn-worker", "granian", "corral")
MIB = 2**20


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


class BenchError(Exception):
    """A measurement that could not be taken; reported in its table cell, and the run exits non-zero."""


@dataclass(frozen=True)
class Plan:
    """Durations and sizes of one run; `--quick` shrinks them for a smoke run."""

    warmup: float
    measure: float
    rounds: int
    connections: int
    reload_duration: float
    reload_at: tuple[float, float]
    reload_connections: int
    array_mib: int
    import_seconds: float
    recovery_bound: float
    watchdog_timeout: float
    watchdog_bound: float

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(1, 2, 1, 64, 6, (1.5, 3.5), 32, 64, 1, 20, 2, 8)
        return cls(3, 10, 3, 64, 15, (3, 8), 32, 512, 5, 60, 2, 30)


@dataclass
class Env:
    """Where each server's executable lives."""

    corral_venv: Path
    peers_venv: Path
    wrk: str

    def corral(self, *args: str) -> list[str]:
        return [str(self.corral_venv / "bin" / "corral"), *args]

    def peer(self, name: str, *args: str) -> list[str]:
        return [str(self.peers_venv / "bin" / name), *args]


@dataclass
class Launch:
    """One server process to start: its argv and what it needs to be driven."""

    server: str
    argv: list[str]
    control: Path | None = None


def launch(
    env: Env,
    server: str,
    app: str,
    workers: int,
    port: int,
    scratch: Path,
    timeout: float | None = None,
    respawn: bool = False,
) -> Launch:
    """The command line of `server` serving `app`: the same options for all, each in its own spelling."""
    watchdog = ["--timeout", f"{timeout:g}"] if timeout is not None else []
    if server == "corral":
        control = scratch / "corral.sock"
        argv = env.corral("run", app, "-w", str(workers), "-b", f"{HOST}:{port}", "--control", str(control))
        quiet = ["--no-access-log", "--log-level", "warning"]
        return Launch(server, [*argv, *quiet, *watchdog], control)
    if server == "uvicorn":
        options = f"--workers {workers} --host {HOST} --port {port} --no-access-log --log-level warning".split()
        return Launch(server, env.peer("uvicorn", app, *options))
    if server in ("gunicorn", "gunicorn-preload"):
        options = f"-k uvicorn_worker.UvicornWorker -w {workers} -b {HOST}:{port} --log-level warning".split()
        preload = ["--preload"] if server == "gunicorn-preload" else []
        return Launch(server, env.peer("gunicorn", app, *options, *preload, *watchdog))
    if server == "granian":
        options = f"--interface asgi --workers {workers} --host {HOST} --port {port} --log-level warning".split()
        respawning = ["--respawn-failed-workers"] if respawn else []
        return Launch(server, env.peer("granian", *options, "--no-access-log", *respawning, app))
    raise ValueError(server)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def get(port: int, path: str, timeout: float) -> tuple[int, bytes]:
    """One GET on a fresh connection (a dead worker's keep-alive connection must not count)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def served_by(port: int, timeout: float) -> int | None:
    """The pid of the worker that answered `/pid`, or None when no answer came."""
    try:
        status, body = get(port, "/pid", timeout)
    except (OSError, http.client.HTTPException):
        return None
    return int(body) if status == 200 else None


class Server:
    """A running server: its process tree, its workers (from the apps' readiness markers), its stop."""

    def __init__(self, spec: Launch, port: int, scratch: Path, log: Path, extra_env: dict[str, str]) -> None:
        self.spec = spec
        self.port = port
        self.log = log
        self.ready_dir = scratch / "ready"
        self.ready_dir.mkdir()
        env = {**os.environ, **extra_env, "BENCH_READY_DIR": str(self.ready_dir), "PYTHONPATH": str(APPS)}
        env.pop("WEB_CONCURRENCY", None)
        with log.open("ab") as out:
            out.write(f"$ {' '.join(spec.argv)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                spec.argv,
                cwd=APPS,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.root = psutil.Process(self.process.pid)

    @property
    def label(self) -> str:
        return LABELS.get(self.spec.server, self.spec.server)

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def workers(self) -> set[int]:
        """Pids of the live worker processes of this server whose app has started: a worker that has died and
        waits to be reaped (a zombie) is not counted, whatever the server."""
        tree = {process.pid for process in self.tree() if _alive(process)}
        return {int(path.name) for path in self.ready_dir.iterdir() if int(path.name) in tree}

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"{self.label} exited with status {code} (log: {self.log})")

    def wait_ready(self, workers: int, timeout: float) -> set[int]:
        """Wait until `workers` workers have started and the port answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            ready = self.workers()
            if len(ready) >= workers and served_by(self.port, 2) is not None:
                return ready
            time.sleep(0.05)
        raise BenchError(f"{self.label}: {workers} workers not ready within {timeout:.0f} s (log: {self.log})")

    def cpu_seconds(self) -> dict[int, float]:
        """CPU time (user + system) used so far by each process of the tree."""
        spent = {}
        for process in self.tree():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                spent[process.pid] = times.user + times.system
        return spent

    def pss_mib(self) -> tuple[float, int, float]:
        """Total PSS of the whole process tree, the number of processes in it, and the PSS of its first process
        (Corral's manager, a peer's master)."""
        total, count, first = 0, 0, 0
        for process in self.tree():
            with contextlib.suppress(psutil.Error):
                pss = process.memory_full_info().pss
                total += pss
                count += 1
                first = first or pss
        return total / MIB, count, first / MIB

    def stop(self, grace: float = 10) -> None:
        stop_tree(self.process, self.tree(), grace)


def stop_tree(process: subprocess.Popen[bytes], tree: list[psutil.Process], grace: float) -> None:
    """SIGTERM, then SIGKILL whatever of the server's tree (taken before the TERM) is left after `grace` s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for member in tree:
        with contextlib.suppress(psutil.Error):
            member.kill()
    psutil.wait_procs(tree, timeout=10)
    process.wait()


@dataclass
class Bench:
    env: Env
    plan: Plan
    servers: list[str]
    logs: Path
    commands: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def serve(
        self,
        key: str,
        server: str,
        app: str,
        workers: int,
        *,
        ready_timeout: float = 60,
        extra_env: dict[str, str] | None = None,
        **options: Any,
    ) -> Iterator[Server]:
        """Start `server` on a fresh port, wait for its workers, yield it, stop it."""
        with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
            scratch = Path(tmp)
            port = free_port()
            spec = launch(self.env, server, app, workers, port, scratch, **options)
            self.commands[f"{key} / {LABELS.get(server, server)}"] = shown(spec.argv, port, scratch)
            running = Server(spec, port, scratch, self.logs / f"{key}-{server}.log", extra_env or {})
            try:
                running.wait_ready(workers, ready_timeout)
                yield running
            finally:
                running.stop()

    def wrk(self, port: int, path: str, duration: float, connections: int, timeout: float = 5) -> dict[str, Any]:
        """Run wrk against the server and return its totals (requests/s, p99 in ms, failures)."""
        argv = [
            self.env.wrk,
            "-t2",
            f"-c{connections}",
            f"-d{duration:g}s",
            f"--timeout={timeout:g}s",
            "--latency",
            "-s",
            str(REPORT_LUA),
            f"http://{HOST}:{port}{path}",
        ]
        self.commands[f"wrk, {connections} connections, {duration:g} s"] = shown(argv[:-1], port, None)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
        return parse_wrk(done.stdout, done.stderr)

    def attempt(self, label: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one measurement; a failure becomes an error cell instead of ending the run."""
        print(f"  {label} ...", end="", flush=True)
        try:
            result = measure()
        except BenchError as exc:
            self.errors.append(f"{label}: {exc}")
            print(f" error: {exc}", flush=True)
            return {"error": str(exc)}
        print(" " + ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, dict | list)))
        return result


def shown(argv: list[str], port: int, scratch: Path | None) -> list[str]:
    """A command as the report shows it: paths relative to the repository, $PORT and $CONTROL."""
    root = str(HERE.parent) + "/"
    words = []
    for word in argv:
        word = word.replace(str(port), "$PORT")
        if scratch is not None:
            word = word.replace(str(scratch / "corral.sock"), "$CONTROL")
        words.append(word.removeprefix(root))
    return words


def parse_wrk(stdout: str, stderr: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            raw = json.loads(line.removeprefix("BENCH-JSON "))
            failed = sum(raw[key] for key in ("connect", "read", "write", "status", "timeout"))
            return {
                "requests": raw["requests"],
                "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
                "p99_ms": round(raw["p99_us"] / 1000, 2),
                "failed": failed,
                "errors": {key: raw[key] for key in ("connect", "read", "write", "status", "timeout")},
            }
    raise BenchError(f"wrk gave no result: {(stderr or stdout).strip()[-300:]}")


# Scenarios ---------------------------------------------------------------------------------------


def throughput(bench: Bench) -> dict[str, Any]:
    """Requests/s and p99 latency, 2 workers, FastAPI hello and raw ASGI hello.

    The servers take turns, round after round, and each figure is the median of its rounds: a
    burst of other work on the machine then spoils one sample rather than one server's result.
    """
    plan = bench.plan
    apps = ("hello_fastapi:app", "hello_raw:app")
    peers = [s for s in bench.servers if s != "gunicorn-preload"]
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {app: {s: [] for s in peers} for app in apps}
    for number in range(1, plan.rounds + 1):
        for app in apps:
            for server in peers:

                def measure(server: str = server, app: str = app) -> dict[str, Any]:
                    with bench.serve(f"throughput-{app.split(':')[0]}", server, app, 2) as running:
                        bench.wrk(running.port, "/", plan.warmup, plan.connections)
                        before = running.cpu_seconds()
                        result = bench.wrk(running.port, "/", plan.measure, plan.connections)
                        cpu = running.cpu_seconds()
                        spent = sum(cpu[pid] - before[pid] for pid in cpu.keys() & before.keys())
                        per_cpu = round(result["requests"] / spent) if spent > 0 else None
                        return {**result, "per_cpu_s": per_cpu, "load": round(os.getloadavg()[0], 2)}

                label = f"{app} on {server}, round {number}/{plan.rounds}"
                samples[app][server].append(bench.attempt(label, measure))
    return {app: {server: median_of(runs) for server, runs in by_server.items()} for app, by_server in samples.items()}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    failures = [run["error"] for run in runs if "error" in run]
    if failures:
        return {"error": failures[0]}
    errors = {key: sum(run["errors"][key] for run in runs) for key in runs[0]["errors"]}
    return {
        "rps": statistics.median(run["rps"] for run in runs),
        "p99_ms": statistics.median(run["p99_ms"] for run in runs),
        "per_cpu_s": median_or_none([run["per_cpu_s"] for run in runs]),
        "requests": sum(run["requests"] for run in runs),
        "failed": sum(run["failed"] for run in runs),
        "errors": errors,
        "rounds": [{key: run[key] for key in ("rps", "p99_ms", "per_cpu_s", "load")} for run in runs],
    }


def median_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def memory(bench: Bench) -> dict[str, Any]:
    """Total PSS of the server's whole process tree, 4 workers, an app holding a large array."""
    results: dict[str, Any] = {}
    extra = {"BENCH_ARRAY_MIB": str(bench.plan.array_mib)}
    for server in bench.servers:

        def measure(server: str = server) -> dict[str, Any]:
            with bench.serve("memory", server, "big_memory:app", 4, extra_env=extra) as running:
                for _ in range(20):
                    served_by(running.port, 5)
                previous, _, _ = running.pss_mib()
                deadline = time.monotonic() + 30
                while True:  # settle: two readings a second apart within 1 %
                    time.sleep(1)
                    current, processes, first = running.pss_mib()
                    if abs(current - previous) <= previous * 0.01 or time.monotonic() > deadline:
                        return {"pss_mib": round(current), "processes": processes, "first_pss_mib": round(first)}
                    previous = current

        results[server] = bench.attempt(f"memory on {server}", measure)
    return results


def trigger_reload(running: Server, command: bool) -> dict[str, Any]:
    """A rolling reload: `corral reload` (returns when done) when `command`, else SIGHUP to the master."""
    started = time.monotonic()
    if command and running.spec.control is not None:
        argv = [str(Path(running.spec.argv[0])), "reload", "--control", str(running.spec.control)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise BenchError(f"corral reload exited {done.returncode}: {done.stderr.strip()[-300:]}")
        trigger = "corral reload"
    else:
        running.process.send_signal(signal.SIGHUP)
        trigger = "SIGHUP"
    return {"trigger": trigger, "seconds": round(time.monotonic() - started, 2)}


def reload(bench: Bench) -> dict[str, Any]:
    """Failed requests and p99 across two rolling reloads while wrk keeps keep-alive connections busy, beside
    the p99 of a steady wrk run of the same length on the same server just before."""
    plan = bench.plan
    results: dict[str, Any] = {}
    for server in [s for s in bench.servers if s != "gunicorn-preload"]:

        def measure(server: str = server) -> dict[str, Any]:
            with bench.serve("reload", server, "hello_fastapi:app", 2) as running:
                bench.wrk(running.port, "/", plan.warmup, plan.reload_connections)
                steady = bench.wrk(running.port, "/", plan.reload_duration, plan.reload_connections)
                before = running.workers()
                outcome: dict[str, Any] = {}
                load = threading.Thread(
                    target=lambda: outcome.update(
                        bench.wrk(running.port, "/", plan.reload_duration, plan.reload_connections)
                    )
                )
                started = time.monotonic()
                load.start()
                reloads = []
                for index, at in enumerate(plan.reload_at):
                    time.sleep(max(0.0, started + at - time.monotonic()))
                    reloads.append(trigger_reload(running, command=index == 0))
                load.join()
                if not outcome:
                    raise BenchError("wrk gave no result")
                new_workers = settled_new_workers(running, before)
                steady_p99 = steady["p99_ms"]
                return {**outcome, "steady_p99_ms": steady_p99, "new_workers": new_workers, "reloads": reloads}

        results[server] = bench.attempt(f"reload on {server}", measure)
    return results


def settled_new_workers(running: Server, before: set[int], quiet: float = 3, bound: float = 30) -> int:
    """How many workers started since `before`, once no new one has appeared for `quiet` seconds."""
    deadline = time.monotonic() + bound
    count, changed = -1, time.monotonic()
    while time.monotonic() < deadline:
        running.check_alive()
        now = len({path.name for path in running.ready_dir.iterdir()} - {str(pid) for pid in before})
        if now != count:
            count, changed = now, time.monotonic()
        elif time.monotonic() - changed >= quiet:
            break
        time.sleep(0.1)
    return count


def recovery(bench: Bench) -> dict[str, Any]:
    """Seconds from SIGKILL of every worker until a new worker answers, app import taking 5 s."""
    plan = bench.plan
    results: dict[str, Any] = {}
    extra = {"BENCH_IMPORT_SECONDS": f"{plan.import_seconds:g}"}
    for server in bench.servers:

        def measure(server: str = server) -> dict[str, Any]:
            respawn = server == "granian"
            with bench.serve("recovery", server, "slow_import:app", 2, extra_env=extra, respawn=respawn) as running:
                for _ in range(20):
                    served_by(running.port, 5)
                killed = running.workers()
                started = time.monotonic()
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)
                deadline = started + plan.recovery_bound
                while (left := deadline - time.monotonic()) > 0:
                    answered = served_by(running.port, left)
                    if answered is not None and answered not in killed:
                        return {"seconds": round(time.monotonic() - started, 3)}
                    time.sleep(0.005)
                return {"seconds": None, "bound": plan.recovery_bound}

        results[server] = bench.attempt(f"recovery on {server}", measure)
    return results


def watchdog(bench: Bench) -> dict[str, Any]:
    """Seconds from a request that blocks a worker's event loop until a new worker answers."""
    plan = bench.plan
    results: dict[str, Any] = {}
    for server in [s for s in bench.servers if s != "gunicorn-preload"]:

        def measure(server: str = server) -> dict[str, Any]:
            has_timeout = server in ("corral", "gunicorn")
            timeout = plan.watchdog_timeout if has_timeout else None
            with bench.serve("watchdog", server, "blocking:app", 2, timeout=timeout) as running:
                for _ in range(20):
                    served_by(running.port, 5)
                before = running.workers()
                block = plan.watchdog_bound + 30
                blocker = threading.Thread(
                    target=lambda: served_by_path(running.port, f"/block?seconds={block:g}", block + 5),
                    daemon=True,
                )
                started = time.monotonic()
                blocker.start()
                deadline = started + plan.watchdog_bound
                while time.monotonic() < deadline:
                    pid = served_by(running.port, 0.5)
                    if pid is not None and pid not in before:
                        return {"seconds": round(time.monotonic() - started, 3), "timeout": timeout}
                    time.sleep(0.02)
                return {"seconds": None, "bound": plan.watchdog_bound, "timeout": timeout}

        results[server] = bench.attempt(f"watchdog on {server}", measure)
    return results


def served_by_path(port: int, path: str, timeout: float) -> None:
    with contextlib.suppress(OSError, http.client.HTTPException):
        get(port, path, timeout)


RUNNERS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "throughput": throughput,
    "memory": memory,
    "reload": reload,
    "recovery": recovery,
    "watchdog": watchdog,
}


# Setup -------------------------------------------------------------------------------------------


def versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "found = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: found[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(found))\n"
    )
    done = subprocess.run([str(python), "-c", code, *VERSIONS], capture_output=True, text=True, check=True)
    found: dict[str, str] = json.loads(done.stdout)
    return found


def ensure_peers(corral_venv: Path, peers_venv: Path) -> None:
    """Create the peers' environment, pinning the packages Corral's environment also has."""
    pinned = versions(corral_venv / "bin" / "python")
    requirements = []
    for package in PEER_PACKAGES:
        name = package.split("[")[0]
        requirements.append(f"{package}=={pinned[name]}" if name in pinned else package)
    requirements += [f"{name}=={pinned[name]}" for name in ("uvloop", "httptools", "h11") if name in pinned]
    marker = peers_venv / "requirements.txt"
    wanted = "\n".join(requirements) + "\n"
    if marker.is_file() and marker.read_text() == wanted:
        return
    print(f"creating the peers' environment in {peers_venv}", flush=True)
    subprocess.run([str(corral_venv / "bin" / "python"), "-m", "venv", "--clear", str(peers_venv)], check=True)
    pip = [str(peers_venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *requirements], check=True)
    marker.write_text(wanted)


def machine(env: Env, servers: list[str]) -> dict[str, Any]:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = re.search(r"^Model name:\s*(.+)$", cpu, re.M)
    wrk = subprocess.run([env.wrk, "-v"], capture_output=True, text=True, check=False)
    git = subprocess.run(
        ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    info: dict[str, Any] = {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "?",
        "corral_commit": git.stdout.strip() or "?",
        "load_at_start": round(os.getloadavg()[0], 2),
        "corral_env": versions(env.corral_venv / "bin" / "python"),
    }
    if any(server != "corral" for server in servers):
        info["peers_env"] = versions(env.peers_venv / "bin" / "python")
    return info


# Report ------------------------------------------------------------------------------------------


def ratio(corral: float | None, peer: float | None, server: str) -> str:
    if server == "corral" or corral is None or peer is None:
        return "-"
    if peer == 0:
        return "1.00" if corral == 0 else "inf"
    return f"{corral / peer:.2f}"


def cell(result: dict[str, Any], key: str, unit: str = "") -> str:
    if "error" in result:
        return "error"
    value = result.get(key)
    if value is None:
        return f"never (> {result['bound']:g} s)" if "bound" in result else "-"
    return f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render(results: dict[str, Any], plan: Plan) -> str:
    out: list[str] = []
    if "throughput" in results:
        out += [
            f"### Throughput: 2 workers, wrk -t2 -c{plan.connections} -d{plan.measure:g}s, "
            f"median of {plan.rounds} rounds",
            "",
        ]
        rows = []
        for app, by_server in results["throughput"].items():
            corral = by_server.get("corral", {})
            for server, result in by_server.items():
                rows.append(
                    [
                        app,
                        LABELS.get(server, server),
                        cell(result, "rps"),
                        cell(result, "p99_ms"),
                        cell(result, "per_cpu_s"),
                        ratio(corral.get("rps"), result.get("rps"), server),
                        ratio(corral.get("p99_ms"), result.get("p99_ms"), server),
                        ratio(corral.get("per_cpu_s"), result.get("per_cpu_s"), server),
                    ]
                )
        header = ["app", "server", "requests/s", "p99 ms", "requests per CPU-second"]
        header += ["Corral/server req/s", "Corral/server p99", "Corral/server per CPU-second"]
        out += table(header, rows)
        out.append("")
    if "memory" in results:
        out += [f"### Memory: 4 workers, app holding a {plan.array_mib} MiB numpy array", ""]
        corral = results["memory"].get("corral", {})
        rows = [
            [
                LABELS.get(s, s),
                cell(r, "pss_mib"),
                cell(r, "processes"),
                cell(r, "first_pss_mib"),
                ratio(corral.get("pss_mib"), r.get("pss_mib"), s),
            ]
            for s, r in results["memory"].items()
        ]
        header = ["server", "total PSS MiB (whole tree)", "processes", "of which manager or master", "Corral/server"]
        out += table(header, rows)
        out.append("")
    if "reload" in results:
        at = " and ".join(f"{t:g} s" for t in plan.reload_at)
        load = f"wrk -c{plan.reload_connections} -d{plan.reload_duration:g}s"
        out += [f"### Reload: two reloads (at {at}) under {load}", ""]
        corral = results["reload"].get("corral", {})
        rows = []
        for server, result in results["reload"].items():
            errors = result.get("errors")
            detail = "/".join(str(v) for v in errors.values()) if errors else "-"
            rows.append(
                [
                    LABELS.get(server, server),
                    " then ".join(r["trigger"] for r in result.get("reloads", [])) or "-",
                    cell(result, "requests"),
                    cell(result, "failed"),
                    detail,
                    cell(result, "steady_p99_ms"),
                    cell(result, "p99_ms"),
                    cell(result, "new_workers"),
                    ratio(corral.get("failed"), result.get("failed"), server),
                ]
            )
        header = [
            "server",
            "trigger",
            "requests",
            "failed",
            "connect/read/write/status/timeout",
            "steady p99 ms",
            "reload p99 ms",
            "new workers",
            "Corral/server failed",
        ]
        out += table(header, rows)
        out.append("")
    if "recovery" in results:
        out += [
            f"### Recovery: seconds until serving after SIGKILL of all 2 workers, import takes "
            f"{plan.import_seconds:g} s",
            "",
        ]
        corral = results["recovery"].get("corral", {})
        rows = [
            [LABELS.get(s, s), cell(r, "seconds"), ratio(corral.get("seconds"), r.get("seconds"), s)]
            for s, r in results["recovery"].items()
        ]
        out += table(["server", "seconds", "Corral/server"], rows)
        out.append("")
    if "watchdog" in results:
        out += ["### Blocked event loop: seconds until a new worker answers, 2 workers", ""]
        corral = results["watchdog"].get("corral", {})
        rows = [
            [
                LABELS.get(s, s),
                f"--timeout {r['timeout']:g}" if r.get("timeout") else "none",
                cell(r, "seconds"),
                ratio(corral.get("seconds"), r.get("seconds"), s),
            ]
            for s, r in results["watchdog"].items()
        ]
        out += table(["server", "watchdog option", "seconds", "Corral/server"], rows)
        out.append("")
    return "\n".join(out)


def render_machine(info: dict[str, Any]) -> str:
    lines = [
        f"- CPU: {info['cpu']}, {info['cores']} cores; memory {info['memory_gib']} GiB",
        f"- kernel {info['kernel']}; load average (1 min) {info['load_at_start']:g} at the start, "
        f"{info.get('load_at_end', '?')} at the end",
        f"- Python {info['python']}; {info['wrk']}; Corral commit {info['corral_commit']}",
        "- Corral's environment: " + ", ".join(f"{k} {v}" for k, v in sorted(info["corral_env"].items())),
    ]
    if "peers_env" in info:
        lines.append("- peers' environment: " + ", ".join(f"{k} {v}" for k, v in sorted(info["peers_env"].items())))
    return "\n".join(lines)


# Main --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short durations and sizes (a smoke run)")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated subset of: {', '.join(SERVERS)}")
    parser.add_argument(
        "--corral-venv",
        type=Path,
        default=Path(sys.prefix),
        help="environment Corral runs from (default: this one)",
    )
    parser.add_argument("--peers-venv", type=Path, default=HERE / ".peers" / "venv", help="the peers' environment")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where latest.md/json go")
    return parser.parse_args(argv)


def chosen_servers(text: str, known: list[str], script: str) -> list[str] | None:
    """`--servers a,b` checked against the known names; None (after one line on stderr) when one is unknown."""
    servers = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in servers if name not in known]
    if unknown or not servers:
        print(f"{script}: unknown server {', '.join(unknown)} (choose from {', '.join(known)})", file=sys.stderr)
        return None
    return servers


def wrk_and_corral(corral_venv: Path, script: str) -> tuple[str, Path] | None:
    """wrk's path and the resolved environment Corral runs from; None (after one line on stderr) when either
    is missing."""
    wrk = shutil.which("wrk")
    if wrk is None:
        print(f"{script}: wrk not found (Debian: apt-get install wrk)", file=sys.stderr)
        return None
    corral_venv = corral_venv.resolve()
    if not (corral_venv / "bin" / "corral").is_file():
        print(f"{script}: no corral in {corral_venv} (give --corral-venv)", file=sys.stderr)
        return None
    return wrk, corral_venv


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers = chosen_servers(args.servers, list(SERVERS), "run.py")
    if servers is None:
        return 2
    found = wrk_and_corral(args.corral_venv, "run.py")
    if found is None:
        return 2
    wrk, corral_venv = found
    scenarios = args.only or list(SCENARIOS)
    if "memory" in scenarios and "numpy" not in versions(corral_venv / "bin" / "python"):
        print(f"run.py: the memory scenario needs numpy in {corral_venv}: pip install numpy", file=sys.stderr)
        return 2
    peers_venv = args.peers_venv.resolve()
    if any(server != "corral" for server in servers):
        ensure_peers(corral_venv, peers_venv)
    env = Env(corral_venv, peers_venv, wrk)
    plan = Plan.make(args.quick)
    results_dir: Path = args.results.resolve()
    logs = results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        if old.name.split("-")[0] in SCENARIOS:  # this script's logs only (benchmarks/https.py has its own)
            old.unlink()
    bench = Bench(env, plan, servers, logs)
    info = machine(env, servers)
    python = sys.executable.removeprefix(str(HERE.parent) + "/")
    command = " ".join([python, "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])

    results: dict[str, Any] = {}
    for name in scenarios:
        print(f"{name}:", flush=True)
        results[name] = RUNNERS[name](bench)

    info["load_at_end"] = round(os.getloadavg()[0], 2)
    report = "\n\n".join([f"Command: `{command}`", render_machine(info), render(results, plan)])
    commands = "\n".join(f"- {key}: `{' '.join(argv)}`" for key, argv in bench.commands.items())
    print("\n" + report)
    (results_dir / "latest.md").write_text(report + "\n#### Server commands\n\n" + commands + "\n")
    payload = {
        "command": command,
        "machine": info,
        "plan": plan.__dict__,
        "results": results,
        "commands": bench.commands,
        "errors": bench.errors,
    }
    (results_dir / "latest.json").write_text(json.dumps(payload, indent=2) + "\n")
    for error in bench.errors:
        print(f"run.py: {error}", file=sys.stderr)
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
