#!/usr/bin/env python3
"""`corral run --autoscale 1:8` beside fixed pools of 1, 2 and 8 workers, under the same load profile.

Two apps: one whose endpoint spends CPU (a few ms of hashing), one whose `def` endpoint waits 50 ms in the
threadpool (a slow database). The profile, made with wrk: idle, a ramp of connections, a plateau, idle again.
Each wrk step is a new wrk run, so its connections are opened anew and a worker added since the previous step
gets its share (wrk keeps its connections alive within a step, as a proxy in front of the pool would).

Then keep-alive clients: one wrk run on the CPU app whose connections are opened once and kept for the whole run,
against `--autoscale 1:4` (also grown by `corral scale 2` a third into the run) and a fixed pool of 2. A worker
added during the run gets clients only if a busy worker lets some go; the CPU app names its worker in each
response, so each worker's share is counted (per second).

    .venv/bin/python benchmarks/autoscale.py                    # about 15 minutes
    .venv/bin/python benchmarks/autoscale.py --quick            # a smoke run
    .venv/bin/python benchmarks/autoscale.py --keep-alive-only  # the keep-alive runs alone, about 2 minutes

Results go to benchmarks/results/autoscale.{md,json} (keep-alive: autoscale-keepalive.{md,json}); the plot to
docs/images/autoscale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    HERE,
    HOST,
    REPORT_LUA,
    BenchError,
    Env,
    Launch,
    Server,
    free_port,
    machine,
    render_machine,
    shown,
    wrk_and_corral,
)

APPS = {"cpu": "autoscale_cpu:app", "io": "autoscale_io:app"}
POOLS = ("autoscale 1:8", "fixed 1", "fixed 2", "fixed 8")
# "+ scale 2": `corral scale 2` a third into the run, a growth that does not depend on the machine's spare CPU (on a
# machine whose CPUs other work takes, the autoscaler rightly holds the CPU app's load as CPU-bound).
KEEPALIVE_POOLS = ("autoscale 1:4", "autoscale 1:4 + scale 2", "fixed 2")
SHARES_LUA = HERE / "shares.lua"
SERVED = 0.10  # a worker serves its share in a second when it answered at least this part of that second's requests
IMAGE = HERE.parent / "docs" / "images" / "autoscale.png"


@dataclass(frozen=True)
class Profile:
    idle_before: float
    ramp: tuple[int, ...]  # connections of each ramp step
    step: float  # seconds per wrk step
    plateau_steps: int
    plateau_connections: int
    idle_after_autoscale: float
    idle_after_fixed: float

    @classmethod
    def make(cls, quick: bool) -> Profile:
        if quick:  # past 40 connections, so one worker's threadpool (40 threads) is full for the I/O app
            return cls(2, (4, 16, 48), 2, 3, 64, 15, 2)
        return cls(10, (2, 4, 8, 16, 24, 32, 48, 64), 5, 4, 64, 60, 10)


def wrk(env: Env, port: int, seconds: float, connections: int, script: Path = REPORT_LUA) -> dict[str, Any]:
    argv = [env.wrk, "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout=10s", "--latency", "-s",
            str(script), f"http://{HOST}:{port}/"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    result: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            raw = json.loads(line.removeprefix("BENCH-JSON "))
            failed = sum(raw[key] for key in ("connect", "read", "write", "status", "timeout"))
            result.update({"connections": connections, "requests": raw["requests"],
                           "seconds": raw["duration_us"] / 1e6, "p50_ms": raw["p50_us"] / 1000,
                           "p99_ms": raw["p99_us"] / 1000, "failed": failed, "timeouts": raw["timeout"]})
        elif line.startswith("SHARES-JSON "):  # "PID:EPOCH_SECOND": responses
            per_second: dict[int, dict[str, int]] = {}
            for key, count in json.loads(line.removeprefix("SHARES-JSON ")).items():
                pid, _, second = key.partition(":")
                per_second.setdefault(int(second), {})[pid] = count
            result["per_second"] = dict(sorted(per_second.items()))
    if "requests" not in result:
        raise BenchError(f"wrk gave no result: {(done.stderr or done.stdout).strip()[-300:]}")
    return result


class Sampler(threading.Thread):
    """Every second: the pool's size (live workers whose app started) and the CPU the whole tree used."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.series: list[dict[str, float]] = []
        self.halt = threading.Event()
        self.start_at = time.monotonic()
        self.wall_start = time.time()

    def run(self) -> None:
        before, at = self.server.cpu_seconds(), time.monotonic()
        psutil.cpu_percent(None)
        while not self.halt.wait(1.0):
            now, cpu = time.monotonic(), self.server.cpu_seconds()
            used = sum(cpu[pid] - before.get(pid, cpu[pid]) for pid in cpu) / (now - at)
            self.series.append({"t": round(now - self.start_at, 1), "workers": len(self.server.workers()),
                                "cpus": round(used, 3), "machine_cpu": psutil.cpu_percent(None) / 100})
            before, at = cpu, now


def start(env: Env, app: str, pool: str, scratch: Path, log: Path) -> tuple[Server, list[str], int]:
    """`corral run` for `pool` ("autoscale MIN:MAX" or "fixed N"): the server, its command line, its port."""
    port, control = free_port(), scratch / "corral.sock"
    autoscale = pool.startswith("autoscale")
    options = ["--autoscale", pool.split()[1]] if autoscale else ["-w", pool.split()[1]]
    argv = env.corral("run", app, "-b", f"{HOST}:{port}", "--control", str(control), "--no-access-log", *options)
    return Server(Launch("corral", argv, control), port, scratch, log, {}), argv, port


def log_name(app: str, pool: str, kind: str = "autoscale") -> str:
    return f"{kind}-{app.split(':')[0]}-{pool.replace(' ', '-').replace(':', '-')}.log"


def run_pool(env: Env, profile: Profile, app: str, pool: str, logs: Path) -> dict[str, Any]:
    autoscale = pool.startswith("autoscale")
    workers = 1 if autoscale else int(pool.split()[1])
    with tempfile.TemporaryDirectory(prefix="corral-autoscale-") as tmp:
        scratch = Path(tmp)
        server, argv, port = start(env, app, pool, scratch, logs / log_name(app, pool))
        sampler = Sampler(server)
        try:
            server.wait_ready(workers, 60)
            sampler.start()
            time.sleep(profile.idle_before)
            ramp = [wrk(env, port, profile.step, c) for c in profile.ramp]
            plateau = [wrk(env, port, profile.step, profile.plateau_connections) for _ in range(profile.plateau_steps)]
            load_end = time.monotonic() - sampler.start_at
            idle = profile.idle_after_autoscale if autoscale else profile.idle_after_fixed
            deadline = time.monotonic() + idle
            while time.monotonic() < deadline:
                time.sleep(0.5)
            pss, processes, _ = server.pss_mib()
        finally:
            sampler.halt.set()
            server.stop()
    steps = ramp + plateau
    back = [s["t"] for s in sampler.series if s["t"] > load_end and s["workers"] == 1]
    grew = any(s["workers"] > 1 for s in sampler.series)
    plateau_seconds = sum(s["seconds"] for s in plateau)
    return {
        "command": shown(argv, port, scratch),
        "requests": sum(s["requests"] for s in steps),
        "failed": sum(s["failed"] for s in steps),
        "plateau_rps": round(sum(s["requests"] for s in plateau) / plateau_seconds, 1),
        "plateau_p50_ms": round(statistics.median(s["p50_ms"] for s in plateau), 1),
        "plateau_p99_ms": round(max(s["p99_ms"] for s in plateau), 1),
        "max_workers": max((s["workers"] for s in sampler.series), default=0),
        "back_to_one_s": round(back[0] - load_end, 1) if back and autoscale and grew else None,
        "idle_pss_mib": round(pss, 1),
        "idle_processes": processes,
        "load_end_s": round(load_end, 1),
        "steps": steps,
        "series": sampler.series,
    }


def run_keepalive(env: Env, seconds: float, connections: int, pool: str, logs: Path) -> dict[str, Any]:
    """One wrk run on the CPU app whose connections stay open throughout; each worker's share, per second."""
    app = APPS["cpu"]
    workers = 1 if pool.startswith("autoscale") else int(pool.split()[1])
    with tempfile.TemporaryDirectory(prefix="corral-autoscale-") as tmp:
        scratch = Path(tmp)
        server, argv, port = start(env, app, pool, scratch, logs / log_name(app, pool, "keepalive"))
        sampler = Sampler(server)
        scale = threading.Timer(seconds / 3, _scale, (env, scratch / "corral.sock", pool.partition("+ scale ")[2]))
        try:
            server.wait_ready(workers, 60)
            sampler.start()
            if "+ scale " in pool:
                scale.start()
            run = wrk(env, port, seconds, connections, SHARES_LUA)
        finally:
            scale.cancel()
            sampler.halt.set()
            server.stop()
    per_second: dict[int, dict[str, int]] = run.get("per_second", {})
    totals: dict[str, int] = {}
    for counts in per_second.values():
        for pid, count in counts.items():
            totals[pid] = totals.get(pid, 0) + count
    grew = next((sampler.wall_start + s["t"] for s in sampler.series if s["workers"] > workers), None)
    last_third = [second for second in per_second if second >= min(per_second) + len(per_second) * 2 / 3] \
        if per_second else []
    return {
        "command": shown(argv, port, scratch),
        "requests": run["requests"],
        "failed": run["failed"],
        "timeouts": run["timeouts"],
        "rps": round(run["requests"] / run["seconds"], 1),
        "p99_ms": round(run["p99_ms"], 1),
        "max_workers": max((s["workers"] for s in sampler.series), default=0),
        "shares": _shares(totals),
        "shares_last_third": _shares(_summed(per_second, last_third)),
        "spread_after_growth_s": _spread_after(per_second, sampler, grew) if grew is not None else None,
        "per_second": per_second,
        "series": sampler.series,
    }


def _scale(env: Env, control: Path, count: str) -> None:
    done = subprocess.run(env.corral("scale", count, "--control", str(control)), capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        print(f"autoscale.py: corral scale {count}: {done.stderr.strip()}", file=sys.stderr)


def _summed(per_second: dict[int, dict[str, int]], seconds: list[int]) -> dict[str, int]:
    summed: dict[str, int] = {}
    for second in seconds:
        for pid, count in per_second[second].items():
            summed[pid] = summed.get(pid, 0) + count
    return summed


def _shares(counts: dict[str, int]) -> list[float]:
    """Each worker's part of the requests, in %, largest first."""
    total = sum(counts.values())
    return sorted((round(count / total * 100, 1) for count in counts.values()), reverse=True) if total else []


def _spread_after(per_second: dict[int, dict[str, int]], sampler: Sampler, grew: float) -> float | None:
    """Seconds from the pool's first growth to the first whole second in which as many workers as the pool then
    had each answered at least SERVED of the requests."""
    for second, counts in per_second.items():
        if second < grew:
            continue
        size = max((s["workers"] for s in sampler.series if sampler.wall_start + s["t"] <= second + 1), default=1)
        total = sum(counts.values())
        if size >= 2 and sum(1 for count in counts.values() if count >= total * SERVED) >= size:
            return round(second - grew, 1)
    return None


def render_keepalive(results: dict[str, dict[str, Any]], seconds: float, connections: int) -> str:
    lines = [
        f"#### Keep-alive clients: CPU app (`{APPS['cpu']}`), one wrk run of {seconds:g} s at {connections} "
        "connections, opened once",
        "",
        "| pool | requests | failed (timeouts) | req/s | p99 ms | most workers | every worker serving, after the first "
        "growth | shares, whole run | shares, last third |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for pool, r in results.items():
        spread = f"{r['spread_after_growth_s']:g} s" if r["spread_after_growth_s"] is not None else "-"
        lines.append(
            f"| {pool} | {r['requests']} | {r['failed']} ({r['timeouts']}) | {r['rps']:g} | {r['p99_ms']:g} | "
            f"{r['max_workers']} | {spread} | {' / '.join(f'{x:g} %' for x in r['shares'])} | "
            f"{' / '.join(f'{x:g} %' for x in r['shares_last_third'])} |"
        )
    return "\n".join([*lines, ""])


def render(results: dict[str, dict[str, dict[str, Any]]], profile: Profile) -> str:
    lines = [
        f"Profile: idle {profile.idle_before:g} s; ramp of wrk steps of {profile.step:g} s at "
        f"{', '.join(map(str, profile.ramp))} connections; plateau {profile.plateau_steps} x {profile.step:g} s at "
        f"{profile.plateau_connections}; idle {profile.idle_after_autoscale:g} s (autoscaled) or "
        f"{profile.idle_after_fixed:g} s (fixed).",
        "",
    ]
    for name, pools in results.items():
        best = max(pools[p]["plateau_rps"] for p in pools if p.startswith("fixed"))
        lines += [
            f"#### {name} app (`{APPS[name]}`)",
            "",
            "| pool | requests | failed | plateau req/s | vs best fixed | p50 ms | p99 ms | most workers "
            "| back to 1 worker | idle PSS |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for pool, r in pools.items():
            back = f"{r['back_to_one_s']:g} s" if r["back_to_one_s"] is not None else "-"
            lines.append(
                f"| {pool} | {r['requests']} | {r['failed']} | {r['plateau_rps']:g} | "
                f"{r['plateau_rps'] / best * 100:.0f} % | {r['plateau_p50_ms']:g} | {r['plateau_p99_ms']:g} | "
                f"{r['max_workers']} | {back} | {r['idle_pss_mib']:.0f} MiB |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 3.6 * len(results)), squeeze=False)
    for row, (name, pools) in enumerate(results.items()):
        for pool, r in pools.items():
            t = [s["t"] for s in r["series"]]
            style = {"linewidth": 2.2} if pool.startswith("autoscale") else {"linewidth": 1, "alpha": 0.8}
            axes[row][0].step(t, [s["workers"] for s in r["series"]], where="post", label=pool, **style)
            axes[row][1].plot(t, [s["cpus"] for s in r["series"]], label=pool, **style)
        axes[row][0].set_title(f"{name} app: workers")
        axes[row][1].set_title(f"{name} app: CPUs used by the whole tree")
        for axis in axes[row]:
            axis.set_xlabel("seconds")
            axis.grid(alpha=0.3)
        axes[row][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run)")
    parser.add_argument("--keep-alive-only", action="store_true", help="only the keep-alive runs")
    parser.add_argument("--corral-venv", type=Path, default=Path(sys.prefix), help="environment Corral runs from")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where autoscale.md/json go")
    parser.add_argument("--plot", type=Path, default=IMAGE, help="the PNG to write")
    args = parser.parse_args(argv)
    if not args.keep_alive_only:
        try:
            import matplotlib  # noqa: F401 - checked before a 13-minute run, not after it
        except ImportError:
            print("autoscale.py: the plot needs matplotlib: .venv/bin/python -m pip install -e '.[bench]'",
                  file=sys.stderr)
            return 2
    found = wrk_and_corral(args.corral_venv, "autoscale.py")
    if found is None:
        return 2
    wrk_path, corral_venv = found
    env = Env(corral_venv, corral_venv, wrk_path)
    logs = args.results.resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = " ".join(["benchmarks/autoscale.py", *(sys.argv[1:] if argv is None else argv)])
    errors: list[str] = []
    if not args.keep_alive_only:
        profiles(env, args, logs, command, errors)
    keep_alive(env, args, logs, command, errors)
    for error in errors:
        print(f"autoscale.py: {error}", file=sys.stderr)
    return 1 if errors else 0


def profiles(env: Env, args: argparse.Namespace, logs: Path, command: str, errors: list[str]) -> None:
    profile = Profile.make(args.quick)
    info = machine(env, ["corral"])
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, app in APPS.items():
        results[name] = {}
        for pool in POOLS:
            print(f"{name} app, {pool} ...", end="", flush=True)
            try:
                result = run_pool(env, profile, app, pool, logs)
            except BenchError as exc:
                errors.append(f"{name}, {pool}: {exc}")
                print(f" error: {exc}", flush=True)
                continue
            results[name][pool] = result
            print(" " + ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, list | dict)),
                  flush=True)
    info["load_at_end"] = round(os.getloadavg()[0], 2)
    complete = {name: pools for name, pools in results.items() if len(pools) == len(POOLS)}
    report = "\n\n".join([f"Command: `{command}`", render_machine(info), render(complete, profile)])
    print("\n" + report)
    (args.results / "autoscale.md").write_text(report + "\n")
    payload = {"command": command, "machine": info, "profile": profile.__dict__, "results": results,
               "errors": errors}
    (args.results / "autoscale.json").write_text(json.dumps(payload, indent=2) + "\n")
    if complete:
        plot(complete, args.plot)


def keep_alive(env: Env, args: argparse.Namespace, logs: Path, command: str, errors: list[str]) -> None:
    seconds, connections = (20.0, 32) if args.quick else (60.0, 32)
    info = machine(env, ["corral"])
    results: dict[str, dict[str, Any]] = {}
    for pool in KEEPALIVE_POOLS:
        print(f"keep-alive clients, {pool} ...", end="", flush=True)
        try:
            result = run_keepalive(env, seconds, connections, pool, logs)
        except BenchError as exc:
            errors.append(f"keep-alive, {pool}: {exc}")
            print(f" error: {exc}", flush=True)
            continue
        results[pool] = result
        print(" " + ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, dict) and k != "series"),
              flush=True)
    info["load_at_end"] = round(os.getloadavg()[0], 2)
    report = "\n\n".join([f"Command: `{command}`", render_machine(info),
                           render_keepalive(results, seconds, connections)])
    print("\n" + report)
    (args.results / "autoscale-keepalive.md").write_text(report + "\n")
    payload = {"command": command, "machine": info, "seconds": seconds, "connections": connections,
               "results": results, "errors": errors}
    (args.results / "autoscale-keepalive.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
