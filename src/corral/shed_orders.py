"""Shed orders in shared memory: the manager asks a worker to let some of its keep-alive clients go.

One 8-byte word per scoreboard cell, written only by the manager (the scoreboard's cells have one writer each,
their worker, so the manager does not write there). The words live in the scoreboard's memfd after the request
figures (`metrics_shm`), so workers find them through the descriptor they already inherit. A word holds an
order's number (high 32 bits) and how many connections to let go (low 32 bits): one aligned store publishes
both, so a reader never sees a number with another order's count. A worker reads its word with each heartbeat
(one read of shared memory, nothing on the request path) and acts on a number it has not seen yet.

Shared by the manager (creates the region, writes orders) and the workers (`corral.worker.shedding`).
"""

from __future__ import annotations

import mmap
import os

from corral import metrics_shm
from corral.scoreboard import CELLS

OFFSET = metrics_shm.OFFSET + metrics_shm.SIZE  # page-aligned: both regions are whole pages
SIZE = CELLS * 8
COUNT_MASK = 0xFFFFFFFF


class ShedOrders:
    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, SIZE, offset=OFFSET)
        self.words = memoryview(self._map).cast("Q")

    @classmethod
    def create(cls, scoreboard_fd: int) -> ShedOrders:
        """Grow the scoreboard's memfd to hold the orders (the manager, before any template starts)."""
        if os.fstat(scoreboard_fd).st_size < OFFSET + SIZE:
            os.ftruncate(scoreboard_fd, OFFSET + SIZE)
        return cls(scoreboard_fd)

    def order(self, cell: int, count: int) -> None:
        """The manager: the worker in `cell` lets `count` keep-alive connections go (this order replaces the
        previous one)."""
        number = ((self.words[cell] >> 32) + 1) & COUNT_MASK
        self.words[cell] = number << 32 | max(0, min(count, COUNT_MASK))

    def read(self, cell: int) -> tuple[int, int]:
        """(order number, count) as last written for `cell`."""
        word = self.words[cell]
        return word >> 32, word & COUNT_MASK

    def close(self) -> None:
        self.words.release()
        self._map.close()
