"""The restart book: per-slot failed starts and backoff, the pool's crash counts, the crash-loop verdict.

The supervisor tells it what died and when; the decisions are policy.py's. Two kinds of death:
- a *crash*: a worker that had proven itself (answered a request, or stayed ready for `policy.PROVING_TIME`)
  died, whatever its age. It is replaced at once, never backed off, never counted toward --crash-limit;
- a *failed start*: a worker that died before proving itself, or a template that died. Its slot backs off
  and it counts toward --crash-limit, until some worker proves itself again.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from corral.manager import policy

# Crash times kept: enough to count a burst (policy.spares_wanted) at any crash rate the spares can answer
CRASHES_KEPT = 256


@dataclass
class Slot:
    failures: int = 0  # failed starts in a row
    restarts: int = 0
    next_start: float = 0.0  # monotonic; later than now while the slot waits in backoff


@dataclass(frozen=True)
class Verdict:
    crash: bool  # True: crashed while serving; False: failed to start
    delay: float  # seconds before the slot starts again
    failures: int


class Restarts:
    def __init__(self, backoff: policy.Backoff, limit: int, window: float) -> None:
        self.backoff = backoff
        self.limit = limit
        self.window = window
        self.slots: dict[int, Slot] = {}
        self.failed_starts: list[float] = []
        self.last_proof: float | None = None
        self.crashes = 0  # proven workers that died
        self.serving_crashes: deque[float] = deque(maxlen=CRASHES_KEPT)  # when proven workers died: sizes the spares
        self.failed = 0  # failed starts, all time

    def slot(self, number: int) -> Slot:
        return self.slots.setdefault(number, Slot())

    def worker_died(self, number: int, ready_for: float | None, answered: int, now: float) -> Verdict:
        """`answered`: the requests the dead worker's scoreboard cell counts."""
        slot = self.slot(number)
        slot.restarts += 1
        slot.failures = policy.failures_after_exit(slot.failures, ready_for, answered, self.backoff)
        delay = policy.restart_delay(slot.failures, self.backoff)
        slot.next_start = now + delay
        crash = policy.proved(ready_for, answered, self.backoff)
        if crash:
            self.crashes += 1
            self.last_proof = now
            self.serving_crashes.append(now)
        else:
            self._failed_start(now)
        return Verdict(crash, delay, slot.failures)

    def template_died(self, now: float) -> None:
        self._failed_start(now)

    def _failed_start(self, now: float) -> None:
        self.failed += 1
        self.failed_starts = [t for t in self.failed_starts if now - t <= self.window]
        self.failed_starts.append(now)

    def saw_ready(self, ready: list[tuple[float, int]], now: float) -> None:
        """A worker alive and proven (ready since, requests answered) is proof, now, that the app can serve."""
        if any(policy.proved(now - since, answered, self.backoff) for since, answered in ready):
            self.last_proof = now

    def crash_loop(self, now: float) -> bool:
        return policy.is_crash_loop(self.failed_starts, now, self.limit, self.window, self.last_proof)

    def recent_failed_starts(self, now: float) -> int:
        last = self.last_proof
        return sum(1 for t in self.failed_starts if now - t <= self.window and (last is None or t > last))

    def waiting(self, slots: range, now: float) -> list[int]:
        """Slots of `slots` that wait in backoff now."""
        return [n for n in slots if self.slot(n).next_start > now]

    def status(self, slots: range, now: float) -> list[dict[str, Any]]:
        """The slots waiting in backoff, for `corral status`: until when (wall clock) and why."""
        wall = time.time()
        return [
            {
                "id": n,
                "failures": self.slot(n).failures,
                "seconds": round(self.slot(n).next_start - now, 3),
                "until": wall + self.slot(n).next_start - now,
            }
            for n in self.waiting(slots, now)
        ]
