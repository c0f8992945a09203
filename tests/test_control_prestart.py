"""Control and observation at every moment: the control socket answers while the pre-start steps run, and a stop
during the steps, during the app's import or while `corral run` hands over to the manager ends like any other
stop (the final log line, the final event, exit code 0)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from harness import LIFESPAN_APP, Corral, corral_command, run_cli, wait_for, write_app

DEADLINE = 120.0

# A step that starts a child in its process group, writes both pids, then waits far longer than any test.
STEP = """
    import os, subprocess, sys, time
    child = subprocess.Popen(["sleep", "600"])
    with open(sys.argv[1] + ".tmp", "w") as marker:
        marker.write(f"{os.getpid()} {child.pid}")
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
"""

# An app whose import writes a marker, then blocks far longer than any test.
SLOW_IMPORT_APP = """
    import os, pathlib, time
    pathlib.Path(os.environ["IMPORT_MARKER"]).write_text(str(os.getpid()))
    time.sleep(600)

    async def app(scope, receive, send):
        pass
"""


def start_with_a_long_step(tmp_path: Path, *args: str) -> tuple[Corral, list[int]]:
    """An instance whose only step runs (pids of the step's python and its child)."""
    write_app(tmp_path, LIFESPAN_APP)
    write_app(tmp_path, STEP, "step.py")
    marker = tmp_path / "step-pids"
    step = f"{sys.executable} {tmp_path / 'step.py'} {marker}"
    corral = Corral(tmp_path, "app:app", "--workers", "2", "--prestart", step, *args)
    pids = wait_for(lambda: [int(pid) for pid in marker.read_text().split()], DEADLINE, "the step's marker")
    return corral, pids


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def status_json(corral: Corral) -> dict[str, Any]:
    result = run_cli("status", "--json", "--control", str(corral.control))
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


FIRST_LINES: dict[int, str] = {}  # a follower's first line, read to know it is connected


def follower(corral: Corral) -> subprocess.Popen[str]:
    """`corral events --follow --json`, once connected: its first event (the step's start) has arrived."""
    process = subprocess.Popen(corral_command("events", "--follow", "--json", "--control", str(corral.control)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    FIRST_LINES[process.pid] = process.stdout.readline()
    return process


def followed(process: subprocess.Popen[str]) -> tuple[int, list[dict[str, Any]], str]:
    out, err = process.communicate(timeout=DEADLINE)
    lines = [FIRST_LINES.pop(process.pid, ""), *out.splitlines()]
    return process.returncode, [json.loads(line) for line in lines if line.strip()], err


def last_line(corral: Corral) -> str:
    return corral.log.strip().splitlines()[-1]


def test_status_reload_and_stop_answer_while_a_step_runs(corrals: list[Corral], tmp_path: Path) -> None:
    corral, (step_pid, child_pid) = start_with_a_long_step(tmp_path)
    corrals.append(corral)
    events = follower(corral)

    first = status_json(corral)
    assert first["phase"] == "prestart" and first["manager_pid"] == corral.process.pid
    assert first["workers"] == [] and first["target_workers"] == 2
    step = first["prestart"]
    assert (step["step"], step["steps"], step["waiting_for"]) == (1, 1, None)
    assert step["command"].endswith("step-pids") and step["seconds"] >= 0
    wait_for(lambda: corral.status()["prestart"]["seconds"] >= step["seconds"] + 1, DEADLINE,
             "the step's running time to grow")

    table = run_cli("status", "--control", str(corral.control))
    assert table.returncode == 0, table.stderr
    assert "pre-start step 1 of 1 running for" in table.stdout and "step-pids" in table.stdout
    assert "2 workers wanted" in table.stdout

    reload = run_cli("reload", "--control", str(corral.control))
    assert reload.returncode == 1 and reload.stdout == ""
    assert reload.stderr.startswith("corral: reload refused: pre-start step 1 of 1 is running (")
    assert len(reload.stderr.strip().splitlines()) == 1
    scale = run_cli("scale", "3", "--control", str(corral.control))
    assert scale.returncode == 1 and scale.stderr.startswith("corral: scale refused: pre-start step 1 of 1")

    stop = run_cli("stop", "--control", str(corral.control))
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.strip() == f"stopped (manager pid {corral.process.pid})"
    assert corral.wait_exit(DEADLINE) == 0, corral.log
    assert last_line(corral).endswith("exit code 0") and "stopped after" in last_line(corral)
    assert "prestart[1]: killed after" in corral.log
    # the step and the child it started in its process group are killed with the instance's stop
    wait_for(lambda: gone(step_pid) and gone(child_pid), DEADLINE, "the step and its child gone")
    assert "serving app:app" not in corral.log

    code, seen, err = followed(events)
    assert code == 0, err
    kinds = [event["kind"] for event in seen]
    assert kinds[0] == "prestart" and seen[0]["step"] == 1
    assert kinds[-2:] == ["stop", "stopped"] and seen[-1]["code"] == 0
    assert {"kind": "reload", "outcome": "refused"}.items() <= next(e for e in seen if e["kind"] == "reload").items()
    assert seen[-1]["message"] == last_line(corral).split("INFO ", 1)[1]


def test_sigterm_during_a_step_ends_like_a_stop(corrals: list[Corral], tmp_path: Path) -> None:
    corral, (step_pid, child_pid) = start_with_a_long_step(tmp_path)
    corrals.append(corral)
    wait_for(lambda: "prestart[1]: running:" in corral.log, DEADLINE, "the log to show the step running")
    events = follower(corral)
    wait_for(lambda: corral.status()["phase"] == "prestart", DEADLINE, "the status of the step")
    corral.signal(signal.SIGTERM)
    assert corral.wait_exit(DEADLINE) == 0, corral.log
    assert "stopped after" in last_line(corral) and last_line(corral).endswith("exit code 0")
    wait_for(lambda: gone(step_pid) and gone(child_pid), DEADLINE, "the step and its child gone")
    code, seen, err = followed(events)
    assert code == 0 and seen[-1]["kind"] == "stopped", err


def test_a_follower_of_a_killed_instance_says_so(corrals: list[Corral], tmp_path: Path) -> None:
    corral, _ = start_with_a_long_step(tmp_path)
    corrals.append(corral)
    events = follower(corral)
    first = json.loads(FIRST_LINES[events.pid])  # connected: the step's start was the first answer
    assert first["kind"] == "prestart"
    corral.signal(signal.SIGKILL)
    code, seen, err = followed(events)
    assert code == 7 and [event["kind"] for event in seen] == ["prestart"]
    assert err.strip() == "corral: the corral instance went away before its final event (was it killed?)"


def test_sigterm_during_the_apps_import_ends_like_a_stop(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, SLOW_IMPORT_APP)
    marker = tmp_path / "imported"
    corral = Corral(tmp_path, "app:app", "--workers", "1", "--log-level", "debug",
                    env={"IMPORT_MARKER": str(marker)})
    corrals.append(corral)
    template = wait_for(lambda: int(marker.read_text()), DEADLINE, "the app's import to begin")
    wait_for(lambda: "importing the app" in corral.log, DEADLINE, "the log to say the app is importing")
    corral.signal(signal.SIGTERM)
    assert corral.wait_exit(DEADLINE) == 0, corral.log
    assert "stopped after" in last_line(corral) and last_line(corral).endswith("exit code 0")
    wait_for(lambda: gone(template), DEADLINE, "the importing template gone")


def test_a_signal_during_the_hand_over_to_the_manager_is_handled(tmp_path: Path) -> None:
    """SIGTERM the moment `corral run` has become the manager, before its handlers exist: kept pending, then
    handled. Children never inherit the blocked signals: the step's SIGTERM is not blocked."""
    write_app(tmp_path, LIFESPAN_APP)
    process = subprocess.Popen(corral_command("run", "app:app", "-b", "127.0.0.1:0", "--control",
                                              str(tmp_path / "c.sock")),
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: b"corral.manager.entry" in Path(f"/proc/{process.pid}/cmdline").read_bytes(), DEADLINE,
                 "the exec into the manager")
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, out
    assert re.search(r"INFO stopped after [0-9.]+ s, exit code 0$", out.strip().splitlines()[-1]), out
    assert "serving app:app" not in out


def test_a_steps_signals_are_not_blocked(corrals: list[Corral], tmp_path: Path) -> None:
    corral, (step_pid, child_pid) = start_with_a_long_step(tmp_path)
    corrals.append(corral)
    term = 1 << (signal.SIGTERM - 1)
    for pid in (corral.process.pid, step_pid, child_pid):
        blocked = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("SigBlk:"))
        assert not int(blocked.split()[1], 16) & term, (pid, blocked)
    os.kill(step_pid, signal.SIGTERM)  # the step ends (a failure): the start stops with exit code 6
    assert corral.wait_exit(DEADLINE) == 6, corral.log


def test_a_stop_while_another_instance_holds_the_lock(corrals: list[Corral], tmp_path: Path) -> None:
    """The status says what the steps wait for; a stop does not wait for the lock."""
    write_app(tmp_path, LIFESPAN_APP)
    lock = tmp_path / "prestart.lock"
    with lock.open("w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another instance runs its steps
        corral = Corral(tmp_path, "app:app", "--prestart", f"touch {tmp_path / 'ran'}", "--prestart-lock",
                        f"file:{lock}")
        corrals.append(corral)
        waiting = wait_for(lambda: corral.status()["prestart"]["waiting_for"], DEADLINE, "the wait for the lock")
        assert waiting == f"lock file {lock}"
        table = run_cli("status", "--control", str(corral.control)).stdout
        assert "waiting for" in table and "(another instance holds it)" in table
        began = time.monotonic()
        corral.signal(signal.SIGTERM)
        assert corral.wait_exit(DEADLINE) == 0, corral.log
        assert time.monotonic() - began < 5, "the stop waited for the lock"
        assert "stopped after" in last_line(corral) and last_line(corral).endswith("exit code 0")
    assert not (tmp_path / "ran").exists()


def test_a_failed_step_is_the_final_event(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, LIFESPAN_APP)
    go = tmp_path / "go"
    corral = Corral(tmp_path, "app:app", "--prestart", f"while [ ! -e {go} ]; do sleep 0.1; done; exit 3")
    corrals.append(corral)
    wait_for(lambda: corral.status()["phase"] == "prestart", DEADLINE, "the status of the step")
    events = follower(corral)
    assert json.loads(FIRST_LINES[events.pid])["kind"] == "prestart"  # connected
    go.touch()
    assert corral.wait_exit(DEADLINE) == 6, corral.log
    assert last_line(corral).startswith("corral: pre-start step 1 failed with exit code 3")
    code, seen, err = followed(events)
    assert code == 0, err
    assert seen[-1]["kind"] == "stopped" and seen[-1]["code"] == 6
    assert seen[-1]["message"].startswith("not started: pre-start step 1 failed with exit code 3")
