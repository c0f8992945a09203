"""CPU time of the `corral` client commands (user + sys of the child, from os.wait4), median per command.

Starts `corral run` on a tiny app (one worker, loopback, its own control socket), then runs `status --json`,
`status`, `scale`, `reload`, `events --json`, `events` N times each against it, and `stop` once per round
(each round starts a new instance for it). Monitors and scripts poll these commands: their cost is the CPU
of one interpreter start, the imports the command needs, and one request.

    python benchmarks/cli_cost.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""
SCRIPT = Path(sys.executable).parent / "corral"  # the console script, as users and monitors run it
CORRAL = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "corral"]


def cpu_of(args: list[str], cwd: Path) -> float:
    """Seconds of CPU (user + sys) the command used; it must succeed."""
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {process.stderr.read().decode() if process.stderr else ''}")
    return usage.ru_utime + usage.ru_stime


def start(cwd: Path, control: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([*CORRAL, "run", "app:app", "-w", "1", "-b", "127.0.0.1:0", "--control", str(control)],
                               cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while subprocess.run([*CORRAL, "status", "--json", "--control", str(control)], cwd=cwd,
                         capture_output=True).returncode != 0:  # fmt: skip
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit("corral run did not start")
        time.sleep(0.2)
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    rounds = parser.parse_args().rounds
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "app.py").write_text(APP)
        control = cwd / "c.sock"
        where = ["--control", str(control)]
        commands = {
            "status --json": ["status", "--json"], "status": ["status"], "scale": ["scale", "1"],
            "reload": ["reload"], "events --json": ["events", "--json"], "events": ["events"],
        }  # fmt: skip
        for _ in range(rounds):
            process = start(cwd, control)
            try:
                for label, args in commands.items():
                    samples.setdefault(label, []).append(cpu_of([*CORRAL, *args, *where], cwd))
                samples.setdefault("stop", []).append(cpu_of([*CORRAL, "stop", *where], cwd))
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait()
        baseline = [cpu_of([sys.executable, "-c", "pass"], cwd) for _ in range(rounds)]
    print(f"CPU per command (user+sys, median of {rounds}; python -c pass: {statistics.median(baseline) * 1000:.0f} ms)")
    for label, values in samples.items():
        print(f"  corral {label:<15} {statistics.median(values) * 1000:6.0f} ms   (min {min(values) * 1000:.0f}, "
              f"max {max(values) * 1000:.0f})")  # fmt: skip


if __name__ == "__main__":
    main()
