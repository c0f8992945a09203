#!/usr/bin/env python3
"""The manager's PSS with `--metrics` (after scrapes of /metrics) and `--no-metrics`, beside another checkout's
manager (say, the commit before metrics existed), alternating, 3 rounds each.

    .venv/bin/python benchmarks/manager_memory.py --baseline-src /path/to/older/checkout/src
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
HOST = "127.0.0.1"
MIB = 2**20


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def manager_pss(corral: Path, variant: str, baseline_src: Path | None) -> float:
    port, admin = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(APPS)}
    flags: list[str] = []
    if variant == "baseline":
        env["PYTHONPATH"] = f"{baseline_src}:{APPS}"
    else:
        flags = [variant, "--admin-bind", f"{HOST}:{admin}"]
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        argv = [str(corral), "run", "hello_raw:app", "-w", "2", "-b", f"{HOST}:{port}", "--control", f"{tmp}/c.sock",
                "--no-access-log", "--log-level", "warning", *flags]
        process = subprocess.Popen(argv, cwd=APPS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise SystemExit(f"manager_memory.py: {variant} did not start") from None
                    time.sleep(0.2)
            for _ in range(200):
                urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=5).read()
            if variant == "--metrics":
                for _ in range(3):
                    urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=60).read()
            time.sleep(3)
            return float(psutil.Process(process.pid).memory_full_info().pss) / MIB
        finally:
            process.terminate()
            process.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, help="src/ directory of the checkout to compare with")
    parser.add_argument("--corral-venv", type=Path, default=HERE.parent / ".venv")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    corral = args.corral_venv.resolve() / "bin" / "corral"
    variants = ["--metrics", "--no-metrics"] + (["baseline"] if args.baseline_src else [])
    results: dict[str, list[float]] = {variant: [] for variant in variants}
    for number in range(1, args.rounds + 1):
        for variant in variants:
            results[variant].append(manager_pss(corral, variant, args.baseline_src))
            print(f"  {variant}, round {number}: {results[variant][-1]:.2f} MiB", flush=True)
    print("\n| manager | PSS MiB (median) | lowest .. highest |\n|---|---|---|")
    for variant, values in results.items():
        name = f"baseline ({args.baseline_src})" if variant == "baseline" else f"this checkout, {variant}"
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} .. {max(values):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
