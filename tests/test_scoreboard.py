"""The scoreboard as the manager reads it while a worker writes its cell, from another process."""

from __future__ import annotations

import os
import time

from corral.scoreboard import Cell, CellState, Scoreboard

READS = 300_000
DEADLINE = 60.0


def test_a_cell_being_written_never_reads_as_a_worker_without_a_heartbeat() -> None:
    """A reader catching a write midway sees each field either old or new, never zeroed: a worker's pid with a
    heartbeat of 0 is what made the watchdog take a healthy worker for hung ("blocked 47703 s") and kill it."""
    board = Scoreboard(Scoreboard.create().fd)
    board.write(0, Cell(1, 1, CellState.READY, time.monotonic(), time.time(), 0, 0))
    writer = os.fork()
    if writer == 0:  # the worker: stamps its cell as fast as it can until killed (or orphaned, or past the deadline)
        parent, stamps, end = os.getppid(), 0, time.monotonic() + DEADLINE
        while stamps % 4096 or (os.getppid() == parent and time.monotonic() < end):
            stamps += 1
            board.write(0, Cell(2 + stamps % 2, 1, CellState.READY, time.monotonic(), time.time(), stamps, 1))
        os._exit(0)
    try:
        seen, torn = 0, 0
        started = time.monotonic()
        while seen < READS and time.monotonic() - started < DEADLINE:
            cell = board.read(0)
            seen += 1
            torn += cell.heartbeat == 0 or cell.started_at == 0
        assert torn == 0, f"{torn} of {seen} reads saw a cell with its times zeroed"
    finally:
        os.kill(writer, 9)
        os.waitpid(writer, 0)
