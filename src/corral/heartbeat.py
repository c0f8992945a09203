"""The cadence the manager and its workers agree on: how often the manager looks, how often a worker stamps.

Shared (small, no imports): the workers read it without importing anything of the manager.
"""

from __future__ import annotations

TICK = 0.05  # seconds between two looks of the manager at its workers (the supervisor's loop)


def heartbeat_interval(timeout: float, request_limit: bool = False) -> float:
    """How often workers stamp: often enough that a healthy loop never looks late, and, with a request limit
    (the manager reads the count from the stamp), every manager tick, so that a busy worker is not recycled up
    to a second past its limit."""
    return TICK if request_limit else max(TICK, min(1.0, timeout / 5))
