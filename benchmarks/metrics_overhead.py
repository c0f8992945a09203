#!/usr/bin/env python3
"""What Corral's per-request metrics cost: requests/s with `--metrics` and `--no-metrics`, and the manager's PSS.

FastAPI hello and raw ASGI hello, 2 workers, wrk; the two settings take turns, round after round (which one
goes first alternates), and each figure is the median of its rounds with the spread (lowest..highest) beside
it: other work on a shared machine then spoils a sample, not a setting. Each run also scrapes `/metrics` once
and reads the manager's PSS after it. Then both settings side by side, at the same time on the same CPU: the
workers' CPU per request with and without, the figure that the machine's drifting speed disturbs least.

    .venv/bin/python benchmarks/metrics_overhead.py               # 5 rounds of 10 s per app and setting
    .venv/bin/python benchmarks/metrics_overhead.py --quick       # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402 - run.py is a script beside this one
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

APPS = ("hello_fastapi:app", "hello_raw:app")
SETTINGS = ("--metrics", "--no-metrics")


def one_run(bench: Bench, app: str, setting: str, warmup: float, measure: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        scratch = Path(tmp)
        port, admin = free_port(), free_port()
        argv = bench.env.corral(
            "run", app, "-w", "2", "-b", f"{HOST}:{port}", "--control", str(scratch / "corral.sock"),
            "--admin-bind", f"{HOST}:{admin}", "--no-access-log", "--log-level", "warning", setting,
        )
        bench.commands[f"{app} {setting}"] = shown(argv, port, scratch)
        running = Server(Launch("corral", argv), port, scratch, bench.logs / f"metrics-{setting[2:]}.log", {})
        try:
            running.wait_ready(2, 60)
            bench.wrk(port, "/", warmup, bench.plan.connections)
            before = running.cpu_seconds()
            result = bench.wrk(port, "/", measure, bench.plan.connections)
            after = running.cpu_seconds()
            spent = sum(after[pid] - before[pid] for pid in after.keys() & before.keys())
            if setting == "--metrics":
                with urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=60) as answer:
                    if answer.status != 200:
                        raise BenchError(f"/metrics answered {answer.status}")
            time.sleep(1)
            _, _, manager = running.pss_mib()
            per_cpu = round(result["requests"] / spent) if spent > 0 else None
            return {"rps": result["rps"], "per_cpu_s": per_cpu, "failed": result["failed"],
                    "manager_pss_mib": round(manager, 2),
                    "load": round(os.getloadavg()[0], 2)}
        finally:
            running.stop()


def side_by_side(bench: Bench, app: str, measure: float, order: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Both settings at once, one worker each, both pinned to CPU 1 (the scheduler shares it between them), each
    loaded by its own wrk thread pinned to CPU 0. Whatever slows the machine down during the round slows both
    alike, so their CPU per request compare fairly even on a VM whose speed drifts by tens of percent. The one
    started first (`order`) measured 0.3-0.7 % more CPU per request in runs of the same setting against itself,
    so the order alternates between rounds."""
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        servers: dict[str, Server] = {}
        try:
            for setting in order:
                scratch = Path(tmp) / setting.lstrip("-")
                scratch.mkdir()
                port = free_port()
                argv = ["taskset", "-c", "1", *bench.env.corral(
                    "run", app, "-w", "1", "-b", f"{HOST}:{port}", "--control", str(scratch / "corral.sock"),
                    "--no-access-log", "--log-level", "warning", setting,
                )]
                bench.commands[f"side by side {app} {setting}"] = shown(argv, port, scratch)
                log = bench.logs / f"side-by-side-{setting[2:]}.log"
                servers[setting] = Server(Launch("corral", argv), port, scratch, log, {})
            for server in servers.values():
                server.wait_ready(1, 60)

            def load(seconds: float) -> dict[str, subprocess.Popen[str]]:
                return {
                    setting: subprocess.Popen(
                        ["taskset", "-c", "0", bench.env.wrk, "-t1", "-c16", f"-d{seconds:g}s", "-s",
                         str(REPORT_LUA), f"http://{HOST}:{server.port}/"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    )
                    for setting, server in servers.items()
                }

            for process in load(2).values():
                process.communicate(timeout=60)
            before = {setting: server.cpu_seconds() for setting, server in servers.items()}
            outputs = {setting: process.communicate(timeout=measure + 60) for setting, process in load(measure).items()}
            figures = {}
            for setting, server in servers.items():
                after = server.cpu_seconds()
                result = parse_wrk(*outputs[setting])
                if not result["requests"]:
                    raise BenchError(f"{setting}: no request answered")
                spent = sum(after[pid] - before[setting][pid] for pid in after.keys() & before[setting].keys())
                figures[setting] = {"rps": result["rps"], "cpu_us": spent / result["requests"] * 1e6}
            return figures
        finally:
            for server in servers.values():
                server.stop()


def side_by_side_cost(bench: Bench, rounds: int, measure: float) -> dict[str, dict[str, float]]:
    """Medians over the rounds of each app's CPU per request with and without, and of their ratio."""
    costs: dict[str, dict[str, float]] = {}
    for app in APPS:
        runs = [bench.attempt(f"side by side {app}, round {number}/{rounds}",
                              lambda app=app, order=SETTINGS[::(-1) ** number]:
                              side_by_side(bench, app, measure, order))
                for number in range(1, rounds + 1)]
        good = [run for run in runs if "error" not in run]
        if good:
            costs[app] = {
                "on_us": statistics.median(run["--metrics"]["cpu_us"] for run in good),
                "off_us": statistics.median(run["--no-metrics"]["cpu_us"] for run in good),
                "change": statistics.median(
                    run["--metrics"]["cpu_us"] / run["--no-metrics"]["cpu_us"] - 1 for run in good
                ),
                "rounds": len(good),
            }
    return costs


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [run for run in runs if "error" not in run]
    if not good:
        return {"error": runs[0]["error"]}
    rps = [run["rps"] for run in good]
    pss = [run["manager_pss_mib"] for run in good]
    per_cpu = [run["per_cpu_s"] for run in good if run["per_cpu_s"]]
    return {
        "rps": statistics.median(rps),
        "per_cpu_s": statistics.median(per_cpu) if per_cpu else None,
        "low": min(rps),
        "high": max(rps),
        "manager_pss_mib": statistics.median(pss),
        "failed": sum(run["failed"] for run in good),
        "rounds": good,
    }


def render(results: dict[str, dict[str, dict[str, Any]]], rounds: int, measure: float) -> str:
    rows = []
    for app, by_setting in results.items():
        on, off = by_setting["--metrics"], by_setting["--no-metrics"]
        change = cpu_change = "-"
        if "error" not in on and "error" not in off:
            change = f"{(on['rps'] - off['rps']) / off['rps'] * 100:+.1f} %"
            if on["per_cpu_s"] and off["per_cpu_s"]:
                cpu_change = f"{(on['per_cpu_s'] - off['per_cpu_s']) / off['per_cpu_s'] * 100:+.1f} %"
        for setting, result in by_setting.items():
            if "error" in result:
                rows.append([app, setting, f"error: {result['error']}", "", "", "", "", ""])
                continue
            rows.append([
                app, setting, f"{result['rps']:,.0f}", f"{result['low']:,.0f} .. {result['high']:,.0f}",
                f"{result['per_cpu_s'] or 0:,.0f}", f"{result['manager_pss_mib']:.1f}",
                change if setting == "--metrics" else "", cpu_change if setting == "--metrics" else "",
            ])
    header = ["app", "setting", "requests/s (median)", "spread (lowest .. highest)", "requests per CPU s",
              "manager PSS MiB", "requests/s, on vs off", "per CPU s, on vs off"]
    lines = [f"### Metrics overhead: 2 workers, {rounds} alternating rounds of {measure:g} s", ""]
    return "\n".join(lines + table(header, rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round (a smoke run)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--corral-venv", type=Path, default=HERE.parent / ".venv")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    found = wrk_and_corral(args.corral_venv, "metrics_overhead.py")
    if found is None:
        return 2
    wrk, corral_venv = found
    plan = Plan.make(args.quick)
    rounds = 1 if args.quick else args.rounds
    results_dir: Path = args.results.resolve()
    logs = results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    bench = Bench(Env(corral_venv, corral_venv, wrk), plan, ["corral"], logs)
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {app: {s: [] for s in SETTINGS} for app in APPS}
    for number in range(1, rounds + 1):
        for app in APPS:
            order = SETTINGS if number % 2 else SETTINGS[::-1]
            for setting in order:
                label = f"{app} {setting}, round {number}/{rounds}"
                samples[app][setting].append(
                    bench.attempt(label, lambda app=app, setting=setting: one_run(bench, app, setting, plan.warmup,
                                                                                   plan.measure))
                )
    results = {app: {s: summary(runs) for s, runs in by_setting.items()} for app, by_setting in samples.items()}
    side = side_by_side_cost(bench, rounds * 2 if not args.quick else 1, 5.0 if not args.quick else 2.0)
    print(f"side by side: {side}")
    info = machine(bench.env, ["corral"])
    info["load_at_end"] = round(os.getloadavg()[0], 2)
    python = sys.executable.removeprefix(str(HERE.parent) + "/")
    command = " ".join([python, "benchmarks/metrics_overhead.py", *(sys.argv[1:] if argv is None else argv)])
    side_lines = [
        f"- {app}: {cost['on_us']:.1f} µs of CPU per request with `--metrics`, {cost['off_us']:.1f} µs with "
        f"`--no-metrics`: **{cost['change'] * 100:+.1f} %** (median of {cost['rounds']} rounds' ratios)"
        for app, cost in side.items()
    ]
    side_line = "\n".join([
        "Side by side (both settings at once, one worker each, both pinned to CPU 1; one wrk thread with 16 "
        "connections for each, pinned to CPU 0):", "", *side_lines,
    ])
    report = "\n\n".join([f"Command: `{command}`", render_machine(info), render(results, rounds, plan.measure),
                           side_line])
    print("\n" + report)
    (results_dir / "metrics.md").write_text(report + "\n")
    payload = {"command": command, "machine": info, "results": results, "side_by_side": side,
               "commands": bench.commands, "errors": bench.errors}
    (results_dir / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
