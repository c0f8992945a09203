#!/usr/bin/env python3
"""What Corral's per-request metrics cost, in instructions: a worker's CPU instructions per request with
`--metrics` and `--no-metrics`, counted by valgrind's callgrind.

The CPU-time figures of `metrics_overhead.py` move by about a point between runs of the same code on a VM; the
effect measured is a few points. Instruction counts move far less with what else the machine does (a loaded
machine changes only how many requests one pass of the event loop reads), so they tell two versions of the
counting apart where time cannot. They count user-space instructions only, not the kernel's work for the
sockets, which the metrics do not change: the percentages are larger than the CPU time's.

Corral runs under callgrind with one worker (FastAPI hello and raw ASGI hello). After a warm-up, the worker's main
thread's instructions are counted for a while with no load (its heartbeat, a threadpool meter: work done per
second, not per request), then while wrk sends requests (one thread, 16 connections). The loaded count, less the
idle rate over the same seconds, is divided by the requests answered. The settings take turns, round after round.

    .venv/bin/python benchmarks/metrics_instructions.py               # 2 rounds of 15 s per app and setting
    .venv/bin/python benchmarks/metrics_instructions.py --quick       # a smoke run: the raw hello, short
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from metrics_overhead import APPS, SETTINGS  # noqa: E402 - scripts beside this one
from run import (  # noqa: E402
    HOST,
    REPORT_LUA,
    Bench,
    BenchError,
    Env,
    Launch,
    Plan,
    Server,
    free_port,
    machine,
    parse_wrk,
    render_machine,
    shown,
    table,
    wrk_and_corral,
)

# Seconds of no load, to learn the instructions a worker spends on its own (its heartbeat, the threadpool meter of
# an app using AnyIO's threads): per second, not per request, so they are taken out of the loaded figure.
IDLE = 10.0
QUICK_IDLE = 2.0
# Under callgrind a worker runs some fifty times slower: its watchdog and start-up bounds are widened to match.
SLOW = ("--timeout", "600", "--startup-timeout", "600")


def main_thread_instructions(dumps: Path, pid: int) -> int:
    """The instructions of `pid`'s main thread in its latest callgrind dump (`--separate-threads` names it -01)."""
    files = sorted(dumps.glob(f"{pid}.out.*-01"), key=lambda path: path.stat().st_mtime)
    if not files:
        raise BenchError(f"callgrind wrote no dump for worker {pid}")
    for line in files[-1].read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise BenchError(f"no totals in {files[-1]}")


def one_run(bench: Bench, app: str, setting: str, warmup: float, idle: float, measure: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        scratch = Path(tmp)
        dumps = scratch / "callgrind"
        dumps.mkdir()
        port = free_port()
        argv = [
            "taskset", "-c", "1", "valgrind", "--tool=callgrind", "--trace-children=yes", "--separate-threads=yes",
            "--instr-atstart=no",  # no instrumenting until the worker is warm: starting runs several times faster
            f"--callgrind-out-file={dumps}/%p.out",
            *bench.env.corral("run", app, "-w", "1", "-b", f"{HOST}:{port}", "--control", str(scratch / "corral.sock"),
                              "--no-access-log", "--log-level", "warning", *SLOW, setting),
        ]
        bench.commands[f"{app} {setting}"] = shown(argv, port, scratch)
        running = Server(Launch("corral", argv), port, scratch, bench.logs / f"instructions-{setting[2:]}.log", {})
        try:
            (pid,) = running.wait_ready(1, 600)
            load(bench, port, warmup)
            control(pid, "-i", "on")
            quiet = counted(pid, dumps, lambda: time.sleep(idle))
            result: dict[str, Any] = {}
            loaded = counted(pid, dumps, lambda: result.update(load(bench, port, measure)))
            if not result["requests"]:
                raise BenchError("no request answered")
            background = quiet[0] / quiet[1] * loaded[1]
            return {"requests": result["requests"], "instructions": loaded[0], "background": round(background),
                    "per_request": round((loaded[0] - background) / result["requests"])}
        finally:
            running.stop(grace=60)


def counted(pid: int, dumps: Path, action: Callable[[], object]) -> tuple[int, float]:
    """The instructions of the worker's main thread while `action` runs, and the seconds it took."""
    control(pid, "-z")
    started = time.monotonic()
    action()
    seconds = time.monotonic() - started
    control(pid, "-d")
    return main_thread_instructions(dumps, pid), seconds


def load(bench: Bench, port: int, seconds: float) -> dict[str, Any]:
    argv = ["taskset", "-c", "0", bench.env.wrk, "-t1", "-c16", f"-d{seconds:g}s", "--timeout=10s", "-s",
            str(REPORT_LUA), f"http://{HOST}:{port}/"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, check=False)
    return parse_wrk(done.stdout, done.stderr)


def control(pid: int, *action: str) -> None:
    """Switch instrumenting on (-i on), zero (-z) or dump (-d) a process's counters; callgrind_control returns
    once the process did it."""
    done = subprocess.run(["callgrind_control", *action, str(pid)], capture_output=True, text=True, timeout=120,
                          check=False)
    if done.returncode != 0:
        raise BenchError(f"callgrind_control {' '.join(action)} {pid}: {(done.stderr or done.stdout).strip()[-200:]}")


def render(samples: dict[str, dict[str, list[dict[str, Any]]]], measure: float) -> str:
    rows = []
    for app, by_setting in samples.items():
        medians = {}
        for setting, runs in by_setting.items():
            good = [run["per_request"] for run in runs if "error" not in run]
            medians[setting] = statistics.median(good) if good else None
        on, off = medians["--metrics"], medians["--no-metrics"]
        change = f"**{(on - off) / off * 100:+.1f} %** ({on - off:+,.0f})" if on and off else "-"
        rows.append([app, f"{off:,.0f}" if off else "error", f"{on:,.0f}" if on else "error", change])
    header = ["app", "instructions per request, `--no-metrics`", "`--metrics`", "on vs off"]
    rounds = max(len(runs) for by_setting in samples.values() for runs in by_setting.values())
    lines = [f"### Metrics overhead in instructions: 1 worker under callgrind, {rounds} alternating rounds of "
             f"{measure:g} s, medians", ""]
    return "\n".join(lines + table(header, rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round of the raw hello (a smoke run)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--corral-venv", type=Path, default=HERE.parent / ".venv")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    found = wrk_and_corral(args.corral_venv, "metrics_instructions.py")
    if found is None:
        return 2
    for tool in ("valgrind", "callgrind_control", "taskset"):
        if shutil.which(tool) is None:
            print(f"metrics_instructions.py: {tool} not found (Debian: apt-get install valgrind util-linux)",
                  file=sys.stderr)
            return 2
    wrk, corral_venv = found
    load_at_start = round(os.getloadavg()[0], 2)
    rounds, warmup, idle, measure = (1, 2.0, QUICK_IDLE, 3.0) if args.quick else (args.rounds, 5.0, IDLE, args.seconds)
    apps = APPS[-1:] if args.quick else APPS
    results_dir: Path = args.results.resolve()
    logs = results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    bench = Bench(Env(corral_venv, corral_venv, wrk), Plan.make(args.quick), ["corral"], logs)
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {app: {s: [] for s in SETTINGS} for app in apps}
    for number in range(1, rounds + 1):
        for app in apps:
            for setting in SETTINGS if number % 2 else SETTINGS[::-1]:
                samples[app][setting].append(bench.attempt(
                    f"{app} {setting}, round {number}/{rounds}",
                    lambda app=app, setting=setting: one_run(bench, app, setting, warmup, idle, measure),
                ))
    python = sys.executable.removeprefix(str(HERE.parent) + "/")
    command = " ".join([python, "benchmarks/metrics_instructions.py", *(sys.argv[1:] if argv is None else argv)])
    info = machine(bench.env, ["corral"])
    info["load_at_start"], info["load_at_end"] = load_at_start, round(os.getloadavg()[0], 2)
    report = "\n\n".join([f"Command: `{command}`", render_machine(info), render(samples, measure)])
    print("\n" + report)
    (results_dir / "metrics-instructions.md").write_text(report + "\n")
    payload = {"command": command, "samples": samples, "commands": bench.commands, "errors": bench.errors}
    (results_dir / "metrics-instructions.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
