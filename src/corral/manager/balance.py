"""Spreading keep-alive clients over the pool: which workers should let some of them go, and how many.

A keep-alive client stays with the worker that accepted it. When the pool grows, the newcomer gets only new
connections; a load of long-lived connections (wrk, a proxy's upstream pool, an HTTP client library) stays on
the workers that were there. A worker whose utilisation stays far above the others' is told to let its share
above the pool's mean of connections go: the clients reconnect through the shared accept queue, where an idle
worker, waiting in its poll, wakes first and takes most of them. A saturated worker that holds twice the others'
connections does the same, though the others are busy too: its clients wait longer for each answer.

Pure functions over plain data, like `policy`; the autoscaler gathers the looks and the supervisor sends the
orders (`corral.shed_orders`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WINDOW = 2.0  # seconds a worker must stay far above the others before it sheds
SPREAD = 0.3  # "far above": this much busier than the others' mean utilisation (0..1)
SATURATED = 0.9  # a worker this busy that holds CROWDED times the others' mean of connections sheds as well
CROWDED = 2.0
# Seconds after an order before looks count again: the worker reads its order at its next heartbeat (at most
# 1 s later), and the utilisation it stamps then covers the second before.
SETTLE = 2.0


@dataclass(frozen=True)
class Look:
    """One worker as the manager saw it in one sample (about every half second)."""

    at: float  # monotonic seconds
    busy: float  # its utilisation (worker/busy.py), 0..1
    connections: int  # its open connections


@dataclass(frozen=True)
class Shed:
    cell: int  # the worker's scoreboard cell
    count: int  # keep-alive connections to let go
    reason: str


def shed_plan(looks: Mapping[int, Sequence[Look]], now: float, last_order: float) -> list[Shed]:
    """The workers, by scoreboard cell, that should let clients go now.

    Only looks from the last `WINDOW` seconds count, and none from before `last_order + SETTLE`, so each order is
    judged by its effect. A worker is judged once its looks span most of the window; the others count from their
    first look (a newcomer is idle from the start). Each worker sheds down to the pool's mean of connections; a
    worker holding less than one connection above the mean has nothing to give.
    """
    since = max(now - WINDOW, last_order + SETTLE)
    recent = {cell: [look for look in seen if since <= look.at <= now] for cell, seen in looks.items()}
    recent = {cell: seen for cell, seen in recent.items() if seen}
    if len(recent) < 2:
        return []
    busy = {cell: sum(look.busy for look in seen) / len(seen) for cell, seen in recent.items()}
    connections = {cell: seen[-1].connections for cell, seen in recent.items()}
    fair = sum(connections.values()) / len(recent)
    plan = []
    for cell, seen in recent.items():
        excess = math.floor(connections[cell] - fair)
        if excess < 1 or seen[-1].at - seen[0].at < WINDOW * 0.7:
            continue
        lowest = min(look.busy for look in seen)  # "stays": in every look of the window
        others = [other for other in recent if other != cell]
        others_busy = sum(busy[other] for other in others) / len(others)
        others_connections = sum(connections[other] for other in others) / len(others)
        if lowest - others_busy >= SPREAD:
            reason = f"{busy[cell] * 100:.0f} % busy, the others {others_busy * 100:.0f} %"
        elif lowest >= SATURATED and excess >= 2 and connections[cell] >= CROWDED * others_connections:
            reason = (f"{busy[cell] * 100:.0f} % busy with {connections[cell]} connections, the others "
                      f"{others_connections:.0f} on average")
        else:
            continue
        plan.append(Shed(cell, excess, reason))
    return plan
