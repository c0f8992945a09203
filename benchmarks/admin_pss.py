#!/usr/bin/env python3
"""The manager's PSS without and with `--admin-bind` (the dashboard's files and API requested), side by side.

    .venv/bin/python benchmarks/admin_pss.py [--rounds 3] [--requests 50]

Each round starts `corral run` with two workers of a small app twice, alternating: once without the admin
listener, once with it after `--requests` passes over the dashboard's page, assets, /api/status and
/api/events; the manager's PSS is read a second later. Prints each round and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import Corral, free_port, write_app

APP = """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})
"""
PATHS = ("/dashboard", "/dashboard/app.js", "/dashboard/style.css", "/api/status", "/api/events")


def measure(directory: Path, admin: bool, requests: int) -> float:
    port = free_port()
    corral = Corral(directory, "app.py", "-w", "2", *(["--admin-bind", f":{port}"] if admin else []))
    try:
        corral.wait_ready(2)
        if admin:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                for _ in range(requests):
                    for path in PATHS:
                        client.get(path).raise_for_status()
        time.sleep(1)  # let the loop settle after the last request
        return float(psutil.Process(corral.process.pid).memory_full_info().pss) / 2**20
    finally:
        corral.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"without --admin-bind": [], "with --admin-bind, dashboard used": []}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_app(directory, APP)
        for number in range(args.rounds):
            for label, admin in zip(results, (False, True), strict=True):
                results[label].append(measure(directory, admin, args.requests))
                print(f"round {number + 1}: {label}: {results[label][-1]:.2f} MiB PSS", flush=True)
    for label, values in results.items():
        print(f"{label}: median {statistics.median(values):.2f} MiB PSS")


if __name__ == "__main__":
    main()
