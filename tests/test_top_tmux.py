"""`corral top` in a real terminal (tmux): every worker's pid and a non-zero request rate under load; '+' adds
a worker; 'q' quits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corral.control_client import request
from harness import PLAIN_APP, Corral, wait_for, write_app
from loadgen import bounded_load

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def rows(screen: str) -> dict[int, list[str]]:
    """The worker table's rows by pid: cells of the lines drawn with '│'."""
    found: dict[int, list[str]] = {}
    for line in screen.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) >= 11 and cells[1].isdigit():
            found[int(cells[1])] = cells
    return found


def test_top_shows_the_pool_and_acts_on_keys(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, PLAIN_APP % "served")
    corral = Corral(tmp_path, "app.py", "-w", "2")
    corrals.append(corral)
    pids = corral.wait_ready(2)
    server = f"corral-test-{corral.port}"  # a tmux server of its own
    tmux = ["tmux", "-L", server]
    command = f"{sys.executable} -m corral top --control {corral.control} --interval 0.5"
    env = {**os.environ, "TERM": "xterm-256color"}
    subprocess.run([*tmux, "new-session", "-d", "-s", "top", "-x", "160", "-y", "45", command], check=True, env=env)

    def screen() -> str:
        pane = subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True, check=True)
        return pane.stdout

    try:
        with bounded_load(corral.url) as done:
            def busy() -> dict[int, list[str]] | None:
                table = rows(screen())
                shown = sorted(table) == pids
                rate = any(cells[4] not in ("-", "0.0") and float(cells[4]) > 0 for cells in table.values())
                # a worker that serves shows its p50 and p99 latency
                rate = rate and all(cells[5].endswith("ms") and cells[6].endswith("ms") for cells in table.values()
                                    if cells[4] not in ("-", "0.0"))
                return table if shown and rate else None

            wait_for(busy, what="every pid and a non-zero request rate in the pane")
            assert done[0] > 0
            first = screen()
            assert "req/s" in first and "CPU" in first and "budget" in first  # the pool's totals
            assert "start" in first  # the events: each worker's start

            subprocess.run([*tmux, "send-keys", "-t", "top", "+"], check=True)
            wait_for(lambda: len(request(corral.control, {"cmd": "status"})["workers"]) == 3, what="a third worker")
            wait_for(lambda: len(rows(screen())) == 3 and "scaled from 2 to 3" in screen(),
                     what="the third worker in the pane")
        artifacts = os.environ.get("CORRAL_ARTIFACTS")
        (tmp_path / "top.txt").write_text(screen())
        if artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "top.txt", Path(artifacts) / "top.txt")

        subprocess.run([*tmux, "send-keys", "-t", "top", "q"], check=True)
        wait_for(lambda: subprocess.run([*tmux, "has-session"], capture_output=True).returncode != 0,
                 what="top to quit on q")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
