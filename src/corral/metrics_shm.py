"""Per-request figures in shared memory: one 1 KiB cell per scoreboard cell, written only by its worker.

The region lives in the scoreboard's memfd, after the scoreboard's cells, so workers find it through the
descriptor they already inherit.

Shared by the manager (creates the region, names each cell's slot before the fork, reads, folds the figures
of dead workers) and the workers (each copies its counts into its own cell with its heartbeat and as it exits,
`corral.worker.metrics`): a table of status class by latency bucket (from which both the requests by status
class and the latency histogram are summed), the latency sum, the requests in flight. Counters are 64-bit and
aligned, so a reader never sees a torn value; it may see a request counted a moment before its latency is added
to the sum, which the next read fixes.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

from corral import scoreboard
from corral.scoreboard import CELLS

CELL_WORDS = 128  # 8-byte words per cell
CELL_SIZE = CELL_WORDS * 8
OFFSET = CELLS * scoreboard.CELL_SIZE  # where the region starts in the scoreboard's memfd (page-aligned)
SIZE = CELLS * CELL_SIZE
# Upper bounds of the latency histogram's buckets, seconds (Prometheus `le`); one more bucket is +Inf.
BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

# Word offsets inside a cell.
SLOT = 0  # written by the manager before the fork: the worker's id in `corral status` (for its access log)
IN_FLIGHT = 1  # stamped with the heartbeat
LATENCY_SUM = 2  # a float64
COUNTS = 8  # requests by status class (rows of CLASS_STRIDE words) and latency bucket (len(BOUNDS) + 1 words)
CLASS_STRIDE = 16
assert len(BOUNDS) + 1 <= CLASS_STRIDE and COUNTS + len(STATUS_CLASSES) * CLASS_STRIDE <= CELL_WORDS


@dataclass(frozen=True)
class Figures:
    """What one cell (or a sum of cells) holds; `buckets` are per bucket, not cumulative."""

    status: tuple[int, ...]
    buckets: tuple[int, ...]
    latency_sum: float
    in_flight: int = 0

    @classmethod
    def zero(cls) -> Figures:
        return cls((0,) * len(STATUS_CLASSES), (0,) * (len(BOUNDS) + 1), 0.0)

    @property
    def requests(self) -> int:
        return sum(self.status)

    def __add__(self, other: Figures) -> Figures:
        return Figures(
            tuple(a + b for a, b in zip(self.status, other.status, strict=True)),
            tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)),
            self.latency_sum + other.latency_sum,
            self.in_flight + other.in_flight,
        )

    def __sub__(self, older: Figures) -> Figures:
        return Figures(
            tuple(a - b for a, b in zip(self.status, older.status, strict=True)),
            tuple(a - b for a, b in zip(self.buckets, older.buckets, strict=True)),
            self.latency_sum - older.latency_sum,
            self.in_flight,
        )


class RequestFigures:
    """The shared region. `words` and `floats` view the same bytes as int64 and float64."""

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, SIZE, offset=OFFSET)
        self.words = memoryview(self._map).cast("q")
        self.floats = memoryview(self._map).cast("d")

    @classmethod
    def create(cls, scoreboard_fd: int) -> RequestFigures:
        """Grow the scoreboard's memfd to hold the region (the manager, before any template starts)."""
        if os.fstat(scoreboard_fd).st_size < OFFSET + SIZE:
            os.ftruncate(scoreboard_fd, OFFSET + SIZE)
        return cls(scoreboard_fd)

    def reset(self, cell: int, slot: int) -> None:
        """Zero a cell for a worker about to be forked into it (the manager, after folding the previous one)."""
        base = cell * CELL_WORDS
        for word in range(base, base + CELL_WORDS):
            self.words[word] = 0
        self.words[base + SLOT] = slot

    def read(self, cell: int) -> Figures:
        start = cell * CELL_WORDS + COUNTS
        rows = [self.words[start + row * CLASS_STRIDE : start + row * CLASS_STRIDE + len(BOUNDS) + 1].tolist()
                for row in range(len(STATUS_CLASSES))]
        return Figures(
            tuple(sum(row) for row in rows),
            tuple(sum(column) for column in zip(*rows, strict=True)),
            self.floats[cell * CELL_WORDS + LATENCY_SUM],
            self.words[cell * CELL_WORDS + IN_FLIGHT],
        )

    def slot(self, cell: int) -> int:
        return int(self.words[cell * CELL_WORDS + SLOT])

    def set_slot(self, cell: int, slot: int) -> None:
        """A promoted spare's new slot, written by the spare itself (worker/parking.py)."""
        self.words[cell * CELL_WORDS + SLOT] = slot

    def close(self) -> None:
        self.words.release()
        self.floats.release()
        self._map.close()


def quantile(buckets: tuple[int, ...], q: float) -> float | None:
    """The q-quantile of per-bucket counts, interpolated linearly inside its bucket (as Prometheus's
    histogram_quantile does); None without observations. The +Inf bucket answers its lower bound."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count > 0 and seen + count >= rank:
            if index >= len(BOUNDS):
                return BOUNDS[-1]
            lower = BOUNDS[index - 1] if index > 0 else 0.0
            return lower + (BOUNDS[index] - lower) * (rank - seen) / count
        seen += count
    return BOUNDS[-1]
