#!/usr/bin/env python3
"""The published HTTP/2 attacks against Corral, granian, uvicorn (zttp) and hypercorn over h2c, one worker each.

For every server and attack: a fresh server (`benchmarks/apps/h2_target.py`, 1 worker), its worker found by
asking `/pid`, then the attack (benchmarks/h2_attacks.py, bounded in time) while a well-behaved client asks `GET /` on a
new connection every 0.2 s (5 s timeout) and the worker's RSS is sampled every 0.1 s. The table gives what the
server did to the attacker, the worker's RSS before, at its peak and 1 s after, the CPU the server's whole tree
used during the attack, and how the normal client fared.

    .venv/bin/python benchmarks/http2_floods.py
    .venv/bin/python benchmarks/http2_floods.py --servers corral --attacks rapid-reset,ping
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from engine import HOST, cpu, free_port, tree
from h2_attacks import ATTACKS, Outcome, probe
from http2 import SERVERS, command, missing_peer, wait_h2c

APP = "h2_target:app"


class Watch:
    """The normal client's requests and the worker's RSS, in two threads, while an attack runs."""

    def __init__(self, port: int, worker: psutil.Process) -> None:
        self.port, self.worker = port, worker
        self.latencies: list[float] = []
        self.failures = 0
        self.peak_rss = worker.memory_info().rss
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.ask, daemon=True),
                        threading.Thread(target=self.sample, daemon=True)]

    def ask(self) -> None:
        while not self.stop.is_set():
            try:
                answer = probe(HOST, self.port, timeout=5.0)
                if answer.status == 200:
                    self.latencies.append(answer.seconds)
                else:
                    self.failures += 1
            except OSError:
                self.failures += 1
            self.stop.wait(0.2)

    def sample(self) -> None:
        while not self.stop.wait(0.1):
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, self.worker.memory_info().rss)

    def __enter__(self) -> Watch:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def worker_of(port: int) -> psutil.Process:
    return psutil.Process(int(probe(HOST, port, "/pid").body))


def one(server: str, attack: str, scratch: Path) -> dict[str, object]:
    port = free_port()
    process = subprocess.Popen(command(server, APP, port, 1, scratch), cwd=Path(__file__).parent / "apps",
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_h2c(port, process, server)
        worker = worker_of(port)
        for _ in range(20):
            probe(HOST, port)
        processes = tree(process.pid)
        before_rss, before_cpu = worker.memory_info().rss, cpu(processes)
        with Watch(port, worker) as watch:
            outcome: Outcome = ATTACKS[attack](HOST, port)
        used = cpu(processes) - before_cpu
        time.sleep(1)
        try:
            after_rss: float | None = worker.memory_info().rss
            replaced = worker_of(port).pid != worker.pid
        except (psutil.Error, OSError):
            after_rss, replaced = None, True
        return {"outcome": outcome, "before": before_rss, "peak": watch.peak_rss, "after": after_rss,
                "cpu": used, "latencies": watch.latencies, "failures": watch.failures, "replaced": replaced}
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)


def row(server: str, result: dict[str, object]) -> str:
    outcome = result["outcome"]
    assert isinstance(outcome, Outcome)
    mib = {key: f"{value / 2**20:.0f}" if isinstance(value, int | float) else "gone"
           for key, value in result.items() if key in ("before", "peak", "after")}
    latencies = result["latencies"]
    assert isinstance(latencies, list)
    asked = len(latencies) + int(str(result["failures"]))
    served = f"{len(latencies)} of {asked}"
    if latencies:
        served += f", median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    did = outcome.summary() + ("; worker replaced" if result["replaced"] else "")
    return (f"| {outcome.attack} | {server} | {did} | {outcome.sent:,} {outcome.unit} | "
            f"{mib['before']} / {mib['peak']} / {mib['after']} | {float(str(result['cpu'])):.1f} | {served} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--attacks", default=",".join(ATTACKS), help=f"a subset of {','.join(ATTACKS)}")
    args = parser.parse_args()
    servers, attacks = args.servers.split(","), args.attacks.split(",")
    wrong = [name for name in servers if name not in SERVERS] + [name for name in attacks if name not in ATTACKS]
    if wrong:
        parser.error(f"unknown server or attack {wrong[0]!r}")
    problem = missing_peer(set(servers))
    if problem:
        print(problem, file=sys.stderr)
        return 2
    print(f"load average (1/5/15 min) at the start: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("| attack | server | what the server did | attacker sent | worker RSS MiB before / peak / after | "
          "server CPU s | normal client served |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="corral-h2-floods-") as tmp:
        for attack in attacks:
            for server in servers:
                print(row(server, one(server, attack, Path(tmp))), flush=True)
    print(f"\nload average at the end: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
