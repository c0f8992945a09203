#!/usr/bin/env python3
"""Chaos: one worker SIGKILLed every second under load, Corral beside gunicorn (uvicorn worker) and uvicorn.

Each server runs 4 workers of benchmarks/apps/hello_raw.py; `wrk -c64` loads it for 60 s while, from 5 s on,
one of its ready workers (drawn with the same seed for every server) is SIGKILLed every second, 50 times.
Every 100 ms the script counts the ready workers. One server at a time, all in one run:

    .venv/bin/python benchmarks/chaos.py            # ~4 minutes
    .venv/bin/python benchmarks/chaos.py --quick    # 15 s per server, 10 kills

Ready, the same way for every server: a live process of the server's tree whose app has run its ASGI lifespan
startup (it touches `$BENCH_READY_DIR/<pid>`, see apps/_common.py). A replacement's time is from the kill to
the mtime of the next new worker's marker (kills and new workers matched in order).
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
WORKERS = 4
SAMPLE = 0.1
SEED = 9


@dataclass(frozen=True)
class Chaos:
    duration: float  # of the wrk run
    kills: int  # one per second
    first_kill: float  # seconds after wrk starts
    connections: int = 64

    @classmethod
    def make(cls, quick: bool) -> Chaos:
        return cls(15, 10, 3) if quick else cls(60, 50, 5)


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
                        + ", ".join(CHAOS_SERVERS))
    parser.add_argument("--corral-venv", type=Path, default=Path(sys.prefix), help="environment Corral runs from")
    parser.add_argument("--peers-venv", type=Path, default=HERE / ".peers" / "venv", help="the peers' environment")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where chaos.md/json go")
    args = parser.parse_args(argv)
    servers = chosen_servers(args.servers, list(CHAOS_SERVERS), "chaos.py")
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
    for old in logs.glob("chaos-*.log"):
        old.unlink()
    bench = Bench(Env(corral_venv, peers_venv, wrk), Plan.make(args.quick), servers, logs)
    chaos = Chaos.make(args.quick)
    info = machine(bench.env, [s for s in servers if s in SERVERS])
    results: dict[str, Any] = {}
    print("chaos:", flush=True)
    for server in servers:
        results[server] = bench.attempt(f"chaos on {server}", lambda server=server: chaos_run(bench, server, chaos))
    info["load_at_end"] = round(os.getloadavg()[0], 2)
    command = " ".join([".venv/bin/python", "benchmarks/chaos.py", *(sys.argv[1:] if argv is None else argv)])
    report = "\n\n".join([f"Command: `{command}`", render_machine(info), render(results, chaos)])
    commands = "\n".join(f"- {key}: `{' '.join(words)}`" for key, words in bench.commands.items())
    print("\n" + report)
    (results_dir / "chaos.md").write_text(report + "\n\n#### Server commands\n\n" + commands + "\n")
    payload = {"command": command, "machine": info, "chaos": chaos.__dict__, "results": results,
               "commands": bench.commands, "errors": bench.errors}
    (results_dir / "chaos.json").write_text(json.dumps(payload, indent=2) + "\n")
    for error in bench.errors:
        print(f"chaos.py: {error}", file=sys.stderr)
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
