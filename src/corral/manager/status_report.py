"""What `corral status` (and the dashboard, `corral top`) shows: the pool, process by process, with its figures.

Read from the scoreboard, the process sampler and the restart book; nothing is asked of any worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from corral.manager import policy, resources
from corral.manager.generation import Generation
from corral.manager.pool import Pool
from corral.manager.restarts import Restarts
from corral.scoreboard import CellState


def pool_status(
    pool: Pool,
    sampler: resources.ProcessSampler,
    book: Restarts,
    generations: Iterable[Generation],
    *,
    current: Generation | None,
    target: int,
    restarts: int,
    stopping: bool,
    certificates: list[dict[str, Any]],
    autoscaler: dict[str, Any] | None,
) -> dict[str, Any]:
    workers = worker_rows(pool, sampler, book)
    spares = worker_rows(pool, sampler, book, parked=True)
    templates = [
        {"generation": g.number, "pid": g.process.pid, "phase": g.phase.value, **memory_of(sampler, g.process.pid)}
        for g in generations
    ]
    manager: dict[str, Any] = {"pid": os.getpid(), **memory_of(sampler, os.getpid())}
    tree = resources.tree_pss(os.getpid())
    listed = {p["pid"] for p in [manager, *templates, *workers, *spares]}
    return {
        "manager_pid": os.getpid(),
        "manager": manager,
        # the whole tree; "other" is what the app's processes started (not listed above)
        "memory_pss_total": sum(tree.values()),
        "memory_pss_other": sum(pss for pid, pss in tree.items() if pid not in listed),
        "generation": current.number if current else 0,
        "target_workers": target,
        "restarts": restarts,
        "crashes": book.crashes,
        "failed_starts": book.failed,
        "backoff": book.status(range(1, target + 1), time.monotonic()),
        "stopping": stopping,
        "templates": templates,
        "workers": workers,
        "spares": spares,  # parked while workers crash while serving: not serving, replaces a crashed one at once
        "certificates": certificates,
        "autoscaler": autoscaler,
    }


def worker_rows(
    pool: Pool, sampler: resources.ProcessSampler, book: Restarts, parked: bool = False
) -> list[dict[str, Any]]:
    """The workers (`parked`: the spares), by slot."""
    rows = []
    for worker in sorted(pool.workers.values(), key=lambda w: (w.slot, w.generation)):
        if (worker.state == "parked") != parked:
            continue
        cell = pool.scoreboard.read(worker.cell)
        memory = sampler.memory(worker.pid) if worker.pid else None
        rows.append(
            {
                "id": worker.slot,
                "pid": worker.pid,
                "state": worker.state,
                "generation": worker.generation,
                "requests": cell.requests if cell.pid == worker.pid else 0,
                "connections": cell.connections if cell.pid == worker.pid else 0,
                "busy": cell.busy if cell.pid == worker.pid else None,  # utilisation: worker/busy.py
                "restarts": book.slot(worker.slot).restarts,
                "cpu_percent": sampler.cpu.get(worker.pid or -1, 0.0),
                "memory_uss": memory.uss if memory else None,
                "memory_pss": memory.pss if memory else None,
                "memory_rss": memory.rss if memory else None,
                "started_at": worker.started_at,
                "ready_for": None if worker.ready_at is None else time.monotonic() - worker.ready_at,
                "heartbeat_age": max(0.0, time.monotonic() - cell.heartbeat) if cell.pid == worker.pid else None,
                "ready": cell.state is CellState.READY,
            }
        )
    return rows


def memory_of(sampler: resources.ProcessSampler, pid: int) -> dict[str, int | None]:
    memory = sampler.memory(pid)
    return {
        "memory_uss": memory.uss if memory else None,
        "memory_pss": memory.pss if memory else None,
        "memory_rss": memory.rss if memory else None,
    }


def stale_workers(pool: Pool, timeout: float, now: float) -> list[int]:
    """The slots of serving workers whose heartbeat is older than --timeout (for /livez)."""
    return [
        worker.slot
        for worker in pool.workers.values()
        if worker.pid
        and worker.state == "ready"
        and policy.is_hung(now, pool.scoreboard.read(worker.cell).heartbeat, timeout)
    ]
