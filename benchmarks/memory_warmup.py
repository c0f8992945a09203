"""How copy-on-write sharing wears away with traffic, and how close `corral check`'s estimate comes.

Starts `corral run APP -w N` on loopback, measures the whole tree's PSS and every process's USS from
`corral status --json` when the workers are ready, sends REQUESTS requests (new connection each, from a few
threads, so that every worker serves), measures again, and runs `corral check APP -w N --json`.

    python benchmarks/memory_warmup.py benchmarks/apps/big_memory.py --workers 3 --requests 3000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

MIB = 2**20


def corral(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral", *args], capture_output=True, text=True, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status(control: Path) -> dict[str, Any]:
    result = corral("status", "--json", "--control", str(control))
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def wait_ready(control: Path, workers: int, deadline: float = 300.0) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            current = status(control)
        except RuntimeError:
            current = {"workers": []}
        if sum(w["state"] == "ready" for w in current["workers"]) == workers:
            return current
        time.sleep(0.2)
    raise SystemExit("corral did not get ready")


def warm_up(url: str, requests: int, threads: int = 4) -> int:
    """Send `requests` GET requests to `url`, each on a new connection so that every worker serves some."""
    answered = [0] * threads

    def client(index: int) -> None:
        with httpx.Client(headers={"connection": "close"}, timeout=30) as session:
            for _ in range(requests // threads):
                session.get(url)
                answered[index] += 1

    pool = [threading.Thread(target=client, args=(index,)) for index in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(answered)


def rows(snapshot: dict[str, Any]) -> dict[str, tuple[int, int]]:
    found = {"manager": (snapshot["manager"]["memory_uss"], snapshot["manager"]["memory_pss"])}
    for template in snapshot["templates"]:
        found[f"template {template['generation']}"] = (template["memory_uss"], template["memory_pss"])
    for worker in snapshot["workers"]:
        found[f"worker {worker['id']}"] = (worker["memory_uss"], worker["memory_pss"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    options = parser.parse_args()
    app = Path(options.app).resolve()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        control = Path(tmp) / "control.sock"
        env = {**os.environ, "PYTHONPATH": str(app.parent)}
        check = corral("check", app.name, "-w", str(options.workers), "--json", cwd=app.parent, env=env)
        if check.returncode != 0:
            raise SystemExit(check.stderr)
        estimate = json.loads(check.stdout)["estimated_memory"]
        server = subprocess.Popen(
            [sys.executable, "-m", "corral", "run", app.name, "-w", str(options.workers), "-b", f"127.0.0.1:{port}",
             "--control", str(control)],
            cwd=app.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            fresh = wait_ready(control, options.workers)
            time.sleep(1)
            fresh = status(control)
            started = time.monotonic()
            served = warm_up(f"http://127.0.0.1:{port}/", options.requests)
            seconds = time.monotonic() - started
            warm = status(control)
        finally:
            corral("stop", "--control", str(control))
            server.wait(60)
    before, after = rows(fresh), rows(warm)
    per_worker = sorted(w["requests"] for w in warm["workers"])
    print(f"{app.name}, {options.workers} workers, {served} requests in {seconds:.1f} s (per worker: {per_worker})")
    print(f"{'process':<12} {'USS fresh':>10} {'USS warm':>10} {'PSS fresh':>10} {'PSS warm':>10}")
    for name in before:
        if name in after:
            (uss0, pss0), (uss1, pss1) = before[name], after[name]
            print(f"{name:<12} {uss0 / MIB:>9.1f}M {uss1 / MIB:>9.1f}M {pss0 / MIB:>9.1f}M {pss1 / MIB:>9.1f}M")
    total0, total1 = fresh["memory_pss_total"], warm["memory_pss_total"]
    print(f"total PSS: fresh {total0 / MIB:.1f} MiB, warmed up {total1 / MIB:.1f} MiB "
          f"(+{(total1 - total0) / MIB:.1f} MiB)")
    error = (estimate - total1) / total1
    print(f"corral check estimate: {estimate / MIB:.1f} MiB ({error:+.0%} of the warmed-up total)")


if __name__ == "__main__":
    main()
