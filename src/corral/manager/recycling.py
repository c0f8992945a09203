"""Recycling: a worker past its request limit (--max-requests) or over --max-memory is replaced, its replacement
first, then it drains; one far over --max-memory is killed at once."""

from __future__ import annotations

import logging
import signal

from corral.manager import policy, resources
from corral.manager.events import EventLog
from corral.manager.pool import Pool, send_signal
from corral.options import Options

log = logging.getLogger("corral")


class Recycler:
    def __init__(self, pool: Pool, sampler: resources.ProcessSampler, settings: Options, events: EventLog) -> None:
        self.pool = pool
        self.sampler = sampler
        self.settings = settings
        self.events = events

    def tick(self) -> None:
        if self.settings.max_memory:
            self.measure_memory()
        self.recycle()

    def recycle(self) -> None:
        if self.settings.max_requests is None and self.settings.max_memory is None:
            return
        for worker in self.pool.workers.values():
            if worker.state != "ready" or worker.replacing or worker.stop_reason:
                continue
            requests = self.pool.scoreboard.read(worker.cell).requests
            reason = policy.recycle_reason(
                requests, worker.request_limit, worker.memory_uss, self.settings.max_memory
            )
            if reason:
                log.info("worker %d (pid %s) recycled: %s; starting its replacement", worker.slot, worker.pid, reason)
                self.events.record("recycle", f"worker {worker.slot} (pid {worker.pid}) recycled: {reason}",
                                   worker=worker.slot, pid=worker.pid, cause=reason)
                worker.replacing = reason

    def measure_memory(self) -> None:
        """Every tick: RSS (one small read) as a pre-filter, USS only above the limit, a kill far above it
        (draining workers too: keep-alive clients still reach them)."""
        limit = self.settings.max_memory
        for worker in self.pool.workers.values():
            if not worker.pid or worker.state in ("starting", "parked") or worker.memory_killed or worker.fault:
                continue
            if not policy.memory_check(resources.rss(worker.pid), limit):
                worker.memory_uss = None
                continue
            memory = self.sampler.memory(worker.pid)
            worker.memory_uss = memory.uss if memory else None
            if policy.memory_kill(worker.memory_uss, limit):
                reason = policy.recycle_reason(0, None, worker.memory_uss, limit) or "memory"
                log.warning("worker %d (pid %s) killed: %s, over %g times the limit", worker.slot, worker.pid, reason,
                            policy.KILL_FACTOR)
                self.events.record("recycle", f"worker {worker.slot} killed: {reason}", worker=worker.slot,
                                   pid=worker.pid, memory_uss=worker.memory_uss)
                worker.memory_killed = True
                worker.replacing = worker.replacing or f"killed: {reason}"
                worker.stop_reason = worker.stop_reason or f"killed: {reason}"
                send_signal(worker.pid, signal.SIGKILL)
