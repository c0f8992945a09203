"""CPU time of the `corral` client commands (user + sys of the child, from os.wait4), median per command.

Starts `corral run` on a tiny app (one worker, loopback, its own control socket), then runs `status --json`,
`status`, `scale`, `reload`, `events --json`, `events` once per round against it, then `stop` while an
`events --follow` waits for the final event (each round starts a new instance). Monitors and scripts poll these
commands: their cost is the CPU of one interpreter start, the imports the command needs, and one request.

    python benchmarks/cli_cost.py [--rounds 10] [--compare-src OTHER/src]

With --compare-src, each round runs the commands of this checkout and then those of the other checkout's
`src` (on PYTHONPATH), and the per-round ratios are printed: the machine's speed drifts between rounds.
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


def cpu_of(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Seconds of CPU (user + sys) the command used; it must succeed."""
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {process.stderr.read().decode() if process.stderr else ''}")
    return usage.ru_utime + usage.ru_stime


def start(cwd: Path, control: Path, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([*CORRAL, "run", "app:app", "-w", "1", "-b", "127.0.0.1:0", "--control", str(control)],
                               cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while subprocess.run([*CORRAL, "status", "--json", "--control", str(control)], cwd=cwd, env=env,
                         capture_output=True).returncode != 0:  # fmt: skip
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit("corral run did not start")
        time.sleep(0.2)
    return process


COMMANDS = {
    "status --json": ["status", "--json"], "status": ["status"], "scale": ["scale", "1"], "reload": ["reload"],
    "events --json": ["events", "--json"], "events": ["events"],
}  # fmt: skip


def one_round(cwd: Path, env: dict[str, str] | None, samples: dict[str, list[float]]) -> None:
    """Each command once against a fresh instance, then `stop` (which ends it) while `events --follow` runs: it
    prints the latest events, then the stop's, and exits after the final one."""
    control = cwd / "c.sock"
    where = ["--control", str(control)]
    process = start(cwd, control, env)
    try:
        for label, args in COMMANDS.items():
            samples.setdefault(label, []).append(cpu_of([*CORRAL, *args, *where], cwd, env))
        follow = subprocess.Popen([*CORRAL, "events", "--follow", *where], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)  # fmt: skip
        assert follow.stdout is not None
        if not follow.stdout.readline():  # it has its connection: the latest events came
            raise SystemExit(f"corral events --follow failed: {follow.stderr.read().decode() if follow.stderr else ''}")
        samples.setdefault("stop", []).append(cpu_of([*CORRAL, "stop", *where], cwd, env))
        follow.stdout.read()
        _, status, usage = os.wait4(follow.pid, 0)
        follow.returncode = os.waitstatus_to_exitcode(status)
        if follow.returncode != 0:
            raise SystemExit(f"corral events --follow exited {follow.returncode}")
        samples.setdefault("events --follow", []).append(usage.ru_utime + usage.ru_stime)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--compare-src", type=Path, help="src/ directory of another checkout, run alternately")
    args = parser.parse_args()
    trees: dict[str, dict[str, str] | None] = {"this checkout": None}
    if args.compare_src:
        trees[str(args.compare_src)] = {**os.environ, "PYTHONPATH": str(args.compare_src.resolve())}
    samples: dict[str, dict[str, list[float]]] = {tree: {} for tree in trees}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "app.py").write_text(APP)
        baseline = []
        for _ in range(args.rounds):
            for tree, env in trees.items():
                one_round(cwd, env, samples[tree])
            baseline.append(cpu_of([sys.executable, "-c", "pass"], cwd))
    print(f"CPU per command, ms (user+sys, median of {args.rounds} rounds; "
          f"python -c pass: {statistics.median(baseline) * 1000:.0f} ms)")  # fmt: skip
    names = list(trees)
    print("| command | " + " | ".join(names) + (" | per-round ratios |" if len(names) > 1 else " |"))
    print("|---" * (len(names) + 1 + (len(names) > 1)) + "|")
    for label in samples[names[0]]:
        cells = [f"{statistics.median(samples[tree][label]) * 1000:.0f}" for tree in names]
        if len(names) > 1:
            ratios = [a / b for a, b in zip(samples[names[0]][label], samples[names[1]][label], strict=True)]
            cells.append(" ".join(f"{ratio:.2f}" for ratio in ratios))
        print(f"| `corral {label}` | " + " | ".join(cells) + " |")
    print("\nCPU per command and round, ms")
    for tree in names:
        print(f"\n{tree}:")
        for label, values in samples[tree].items():
            print(f"| `corral {label}` | " + " ".join(f"{value * 1000:.0f}" for value in values) + " |")


if __name__ == "__main__":
    main()
