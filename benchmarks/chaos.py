#!/usr/bin/env python3
"""Chaos under load, Corral beside gunicorn (uvicorn worker) and uvicorn. Two cases:

- kill: each server runs 4 workers of benchmarks/apps/hello_raw.py; `wrk -c64` loads it for 60 s while, from
  5 s on, one of its ready workers (drawn with the same seed for every server) is SIGKILLed every second, 50 times;
- crash: 4 workers of benchmarks/apps/crashing.py, where 1 request in 50 (then 1 in 500) calls `os._exit(1)`,
  under `wrk -c64` for 60 s each (Corral and gunicorn: servers that replace a dead worker).

Every 100 ms the script counts the ready workers. One server at a time, all in one run:

    .venv/bin/python benchmarks/chaos.py                  # ~9 minutes
    .venv/bin/python benchmarks/chaos.py --cases crash    # ~4 minutes
    .venv/bin/python benchmarks/chaos.py --quick          # 15 s per server, 10 kills; 10 s per crash run

Ready, the same way for every server: a live process of the server's tree (not a zombie waiting to be reaped)
whose app has run its ASGI lifespan startup (it touches `$BENCH_READY_DIR/<pid>`, see apps/_common.py). A
replacement's time is from the kill to the mtime of the next new worker's marker (kills and new workers matched
in order).
Results go to benchmarks/results/chaos.md and chaos.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from run import (
    HERE,
    SERVERS,
    Bench,
    BenchError,
    Env,
    Plan,
    chosen_servers,
    ensure_peers,
    machine,
    render_machine,
    table,
    wrk_and_corral,
)

CHAOS_SERVERS = ("corral", "gunicorn", "uvicorn")
CRASH_SERVERS = ("corral", "gunicorn")
CRASH_ONE_IN = (50, 500)
CASES = ("kill", "crash")
WORKERS = 4
SAMPLE = 0.1
SEED = 9


@dataclass(frozen=True)
class Chaos:
    duration: float  # of the wrk run
    kills: int  # one per second
    first_kill: float  # seconds after wrk starts
    crash_duration: float  # of each wrk run of the crash case
    connections: int = 64

    @classmethod
    def make(cls, quick: bool) -> Chaos:
        return cls(15, 10, 3, 10) if quick else cls(60, 50, 5, 60)


def longest_run(samples: list[tuple[float, int]], below: int) -> float:
    """Longest time the ready count stayed under `below`, from the first such sample to the next good one."""
    longest, since = 0.0, None
    for at, ready in samples:
        if ready < below and since is None:
            since = at
        elif ready >= below and since is not None:
            longest, since = max(longest, at - since), None
    if since is not None and samples:
        longest = max(longest, samples[-1][0] - since)
    return longest


def replacement_times(kills: list[float], markers: list[float]) -> list[float | None]:
    """Each kill's wait for a new ready worker: kills and new markers (wall clock) matched in order."""
    waits: list[float | None] = []
    pending = sorted(markers)
    for kill in kills:
        later = [m for m in pending if m >= kill]
        if later:
            pending.remove(later[0])
            waits.append(later[0] - kill)
        else:
            waits.append(None)
    return waits


def chaos_run(bench: Bench, server: str, chaos: Chaos) -> dict[str, Any]:
    draw = random.Random(SEED)
    with bench.serve("chaos", server, "hello_raw:app", WORKERS) as running:
        before = running.workers()
        stop = threading.Event()
        samples: list[tuple[float, int]] = []
        kills: list[float] = []
        skipped = 0

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic(), len(running.workers())))
                time.sleep(SAMPLE)

        sampler = threading.Thread(target=sample)
        outcome: dict[str, Any] = {}
        load = threading.Thread(
            target=lambda: outcome.update(bench.wrk(running.port, "/", chaos.duration, chaos.connections))
        )
        started = time.monotonic()
        sampler.start()
        load.start()
        try:
            for n in range(chaos.kills):
                time.sleep(max(0.0, started + chaos.first_kill + n - time.monotonic()))
                ready = sorted(running.workers())
                if not ready:
                    skipped += 1
                    continue
                victim = draw.choice(ready)
                kills.append(time.time())
                os.kill(victim, signal.SIGKILL)
            load.join(chaos.duration + 60)
        finally:
            stop.set()
            sampler.join()
        alive = running.process.poll() is None
        markers = [
            path.stat().st_mtime for path in running.ready_dir.iterdir() if int(path.name) not in before
        ]
    if not outcome:
        raise BenchError("wrk gave no result")
    waits = replacement_times(kills, markers)
    done = [w for w in waits if w is not None]
    counts = [ready for _, ready in samples]
    return {
        "requests": outcome["requests"],
        "failed": outcome["failed"],
        "errors": outcome["errors"],
        "p99_ms": outcome["p99_ms"],
        "alive_at_end": alive,
        "kills": len(kills),
        "skipped_kills": skipped,
        "samples": len(counts),
        "zero_ready_share": round(counts.count(0) / max(1, len(counts)), 4),
        "longest_below_4_s": round(longest_run(samples, WORKERS), 2),
        "replaced": len(done),
        "replacement_max_s": round(max(done), 3) if done else None,
        "replacement_p50_s": round(statistics.median(done), 3) if done else None,
    }


class ReadySampler:
    """Counts a server's ready workers every SAMPLE seconds in a thread, until stopped."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._count = count
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self._count()))
            time.sleep(SAMPLE)

    def __enter__(self) -> ReadySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def crash_run(bench: Bench, server: str, one_in: int, chaos: Chaos) -> dict[str, Any]:
    """1 request in `one_in` ends its worker (os._exit) under wrk: does the server keep serving?"""
    env = {"BENCH_CRASH_ONE_IN": str(one_in)}
    with bench.serve(f"crash-{one_in}", server, "crashing:app", WORKERS, extra_env=env) as running:
        before = running.workers()
        with ReadySampler(lambda: len(running.workers())) as sampler:
            outcome = bench.wrk(running.port, "/", chaos.crash_duration, chaos.connections)
        alive = running.process.poll() is None
        started = sum(1 for path in running.ready_dir.iterdir() if int(path.name) not in before)
    counts = [ready for _, ready in sampler.samples]
    return {
        "served": outcome["requests"] - outcome["errors"]["status"],
        "failed": outcome["failed"],
        "errors": outcome["errors"],
        "p99_ms": outcome["p99_ms"],
        "alive_at_end": alive,
        "workers_started": started,
        "samples": len(counts),
        "min_ready": min(counts, default=0),
        "zero_ready_share": round(counts.count(0) / max(1, len(counts)), 4),
        "longest_zero_ready_s": round(longest_run(sampler.samples, 1), 2),
    }


def render_crash(results: dict[str, dict[str, Any]], chaos: Chaos) -> str:
    header = [
        "1 request in", "server", "requests served", "vs gunicorn", "failed (wrk errors + non-2xx)",
        "workers started", "fewest ready", "samples with 0 ready", "longest with 0 ready", "alive at end",
    ]
    rows = []
    for case, by_server in results.items():
        reference = by_server.get("gunicorn", {}).get("served")
        for server, result in by_server.items():
            if "error" in result:
                rows.append([case, server, f"error: {result['error']}", *[""] * (len(header) - 3)])
                continue
            ratio = f"{result['served'] / reference:.2f}" if reference else "-"
            rows.append([
                case, server, str(result["served"]), ratio, str(result["failed"]), str(result["workers_started"]),
                str(result["min_ready"]), f"{100 * result['zero_ready_share']:.1f} % of {result['samples']}",
                f"{result['longest_zero_ready_s']:.2f} s", "yes" if result["alive_at_end"] else "**no**",
            ])
    title = (
        f"### Requests that crash their worker: {WORKERS} workers, wrk -c{chaos.connections} for "
        f"{chaos.crash_duration:g} s per run, 1 request in N calls os._exit(1)"
    )
    return "\n".join([title, "", *table(header, rows)])


def render(results: dict[str, Any], chaos: Chaos) -> str:
    header = [
        "server", "requests served", "failed (wrk errors + non-2xx)", "p99 ms", "samples with 0 ready",
        "longest < 4 ready", "replaced / killed", "replacement p50", "replacement max", "alive at end",
    ]
    rows = []
    for server, result in results.items():
        if "error" in result:
            rows.append([server, f"error: {result['error']}", *[""] * (len(header) - 2)])
            continue

        def seconds(value: float | None) -> str:
            return "never" if value is None else f"{value:.2f} s"

        rows.append([
            server,
            str(result["requests"]),
            str(result["failed"]),
            f"{result['p99_ms']:.1f}",
            f"{100 * result['zero_ready_share']:.1f} % of {result['samples']}",
            f"{result['longest_below_4_s']:.2f} s",
            f"{result['replaced']} / {result['kills']}",
            seconds(result["replacement_p50_s"]),
            seconds(result["replacement_max_s"]),
            "yes" if result["alive_at_end"] else "**no**",
        ])
    title = (
        f"### Chaos: {WORKERS} workers, wrk -c{chaos.connections} for {chaos.duration:g} s, "
        f"one ready worker SIGKILLed every second ({chaos.kills} kills from {chaos.first_kill:g} s)"
    )
    return "\n".join([title, "", *table(header, rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="15 s per server, 10 kills (a smoke run)")
    parser.add_argument("--servers", default=",".join(CHAOS_SERVERS), help="comma-separated subset of: "
                        + ", ".join(CHAOS_SERVERS) + " (the crash case runs on corral and gunicorn only)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    parser.add_argument("--corral-venv", type=Path, default=Path(sys.prefix), help="environment Corral runs from")
    parser.add_argument("--peers-venv", type=Path, default=HERE / ".peers" / "venv", help="the peers' environment")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where chaos.md/json go")
    args = parser.parse_args(argv)
    servers = chosen_servers(args.servers, list(CHAOS_SERVERS), "chaos.py")
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    if not cases or any(case not in CASES for case in cases):
        print(f"chaos.py: unknown case in {args.cases!r} (choose from {', '.join(CASES)})", file=sys.stderr)
        return 2
    found = wrk_and_corral(args.corral_venv, "chaos.py")
    if servers is None or found is None:
        return 2
    wrk, corral_venv = found
    peers_venv = args.peers_venv.resolve()
    if any(server != "corral" for server in servers):
        ensure_peers(corral_venv, peers_venv)
    results_dir: Path = args.results.resolve()
    logs = results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in [*logs.glob("chaos-*.log"), *logs.glob("crash-*.log")]:
        old.unlink()
    bench = Bench(Env(corral_venv, peers_venv, wrk), Plan.make(args.quick), servers, logs)
    chaos = Chaos.make(args.quick)
    info = machine(bench.env, [s for s in servers if s in SERVERS])
    results: dict[str, Any] = {}
    crashes: dict[str, dict[str, Any]] = {}
    sections = []
    if "kill" in cases:
        print("chaos:", flush=True)
        for server in servers:
            results[server] = bench.attempt(f"chaos on {server}", lambda server=server: chaos_run(bench, server, chaos))
        sections.append(render(results, chaos))
    if "crash" in cases:
        print("crashing requests:", flush=True)
        for one_in in CRASH_ONE_IN:
            crashes[str(one_in)] = {}
            for server in [s for s in servers if s in CRASH_SERVERS]:

                def measure(server: str = server, one_in: int = one_in) -> dict[str, Any]:
                    return crash_run(bench, server, one_in, chaos)

                crashes[str(one_in)][server] = bench.attempt(f"1 in {one_in} on {server}", measure)
        sections.append(render_crash(crashes, chaos))
    info["load_at_end"] = round(os.getloadavg()[0], 2)
    command = " ".join([".venv/bin/python", "benchmarks/chaos.py", *(sys.argv[1:] if argv is None else argv)])
    report = "\n\n".join([f"Command: `{command}`", render_machine(info), *sections])
    commands = "\n".join(f"- {key}: `{' '.join(words)}`" for key, words in bench.commands.items())
    print("\n" + report)
    (results_dir / "chaos.md").write_text(report + "\n\n#### Server commands\n\n" + commands + "\n")
    payload = {"command": command, "machine": info, "chaos": chaos.__dict__, "results": results,
               "crash": crashes, "commands": bench.commands, "errors": bench.errors}
    (results_dir / "chaos.json").write_text(json.dumps(payload, indent=2) + "\n")
    for error in bench.errors:
        print(f"chaos.py: {error}", file=sys.stderr)
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
