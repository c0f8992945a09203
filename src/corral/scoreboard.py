"""The shared-memory scoreboard: one fixed-size cell per worker, written only by that worker.

Shared by the manager (creates it, reads it) and the workers (each stamps its own cell). The manager runs
the watchdog, `corral status` and recycling from it without asking any worker anything.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import time
from dataclasses import dataclass
from enum import IntEnum

CELLS = 512
MAX_WORKERS = CELLS // 2  # leaves a cell for each worker's replacement during a reload or recycle
_LAYOUT = struct.Struct("=qqqddqqd")  # pid, generation, state, heartbeat, started_at, requests, connections, busy
CELL_SIZE = 64
assert _LAYOUT.size == CELL_SIZE


class CellState(IntEnum):
    FREE = 0
    STARTING = 1
    READY = 2
    DRAINING = 3
    IMPORTING = 4  # --no-preload: importing the app, no event loop yet to stamp the heartbeat


@dataclass(frozen=True)
class Cell:
    pid: int
    generation: int
    state: CellState
    heartbeat: float  # time.monotonic() of the worker's last loop tick (CLOCK_MONOTONIC is system-wide)
    started_at: float  # wall clock
    requests: int
    connections: int
    busy: float = 0.0  # utilisation since the previous stamp: loop, threadpool or CPU, the largest (worker/busy.py)


class Scoreboard:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, CELLS * CELL_SIZE)

    @classmethod
    def create(cls) -> Scoreboard:
        if sys.platform == "linux":
            fd = os.memfd_create("corral-scoreboard", 0)
        else:
            import tempfile

            handle, path = tempfile.mkstemp(prefix="corral-scoreboard-")
            os.unlink(path)
            fd = handle
        os.ftruncate(fd, CELLS * CELL_SIZE)
        return cls(fd)

    def read(self, index: int) -> Cell:
        pid, generation, state, heartbeat, started_at, requests, connections, busy = _LAYOUT.unpack_from(
            self._map, index * CELL_SIZE
        )
        return Cell(pid, generation, CellState(state), heartbeat, started_at, requests, connections, busy)

    def write(self, index: int, cell: Cell) -> None:
        """One copy of the packed cell into the mapping. `pack_into` would zero the cell first: a reader could then
        see the worker's pid with a heartbeat of 0 (while the writer is preempted midway), a worker hung for as long
        as the machine has been up."""
        start = index * CELL_SIZE
        self._map[start : start + CELL_SIZE] = _LAYOUT.pack(
            cell.pid,
            cell.generation,
            int(cell.state),
            cell.heartbeat,
            cell.started_at,
            cell.requests,
            cell.connections,
            cell.busy,
        )

    def reset(self, index: int, generation: int) -> None:
        """Prepare a cell for a worker about to be forked (the manager does this before asking)."""
        self.write(index, Cell(0, generation, CellState.STARTING, time.monotonic(), time.time(), 0, 0))

    def close(self) -> None:
        self._map.close()
