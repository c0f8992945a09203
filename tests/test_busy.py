"""The worker's busy fraction: the loop thread's running and runnable time over the elapsed time."""

from __future__ import annotations

import time

from corral.scoreboard import Cell, CellState, Scoreboard
from corral.worker.busy import BusyMeter


def test_a_spinning_thread_reads_busy_and_a_sleeping_one_idle() -> None:
    meter = BusyMeter()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass
    assert meter.sample() > 0.8  # running, or waiting for a CPU on a loaded machine: busy either way
    time.sleep(0.3)
    assert meter.sample() < 0.2


def test_the_busy_fraction_travels_in_the_scoreboard_cell() -> None:
    board = Scoreboard.create()
    try:
        board.write(3, Cell(42, 1, CellState.READY, 1.0, 2.0, 10, 2, 0.75))
        assert board.read(3).busy == 0.75
        board.reset(3, 2)
        assert board.read(3).busy == 0.0
    finally:
        board.close()
