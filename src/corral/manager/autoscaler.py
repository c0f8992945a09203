"""`--autoscale MIN:MAX`: gathers the pool's load, asks `policy.autoscale_decision`, and resizes the pool.

Every half second it reads each ready worker's utilisation (worker/busy.py) from the scoreboard, the time its
event loop waited for a CPU (`/proc/PID/schedstat`), the listeners' accept-queue depth (TCP_INFO), the CPU used by
the whole instance (manager, templates, workers) against what it may use (the cgroup's quota, else the CPUs it may
run on), and the machine's CPU use. Every few seconds it also measures memory, so the ceiling
follows the workers' private memory as it grows. It acts only through `Supervisor.scale`, which forks the new
slot or drains the highest one politely, the same way a reload does.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import psutil

from corral.manager import policy, resources
from corral.scoreboard import CellState

if TYPE_CHECKING:
    from corral.manager.supervisor import Supervisor

log = logging.getLogger("corral")

SAMPLE_EVERY = 0.5
MEMORY_EVERY = 5.0


class Autoscaler:
    def __init__(self, supervisor: Supervisor, limits: policy.AutoscaleLimits) -> None:
        self.supervisor = supervisor
        self.limits = limits
        quota = resources.cgroup_cpu_quota()
        self.cpus = min(float(resources.cpu_count()), quota) if quota else float(resources.cpu_count())
        self.samples: collections.deque[policy.LoadSample] = collections.deque()
        self.memory: policy.MemoryFigures | None = None
        self.ceiling = limits.maximum
        self.last_change = time.monotonic()  # the starting size counts as a change, from the first sample on
        self.last_action = "start"
        self.decision = policy.ScaleDecision(supervisor.target, "hold", "measuring")
        self.last_event: dict[str, Any] | None = None
        self._cpu = resources.ProcessSampler()
        self._waits: dict[int, tuple[int, int]] = {}  # pid: (ns waiting for a CPU, monotonic ns) at the last sample
        psutil.cpu_percent(None)  # starts the machine-wide measurement
        self._next_sample = 0.0
        self._next_memory = 0.0
        self._told_cpu_bound = -self.limits.cooldown  # a CPU-bound hold is told at most once per cool-down
        apps = [listener.fd for listener in supervisor.spec.listeners if listener.role == "app"]
        self._listeners = [socket.socket(fileno=os.dup(fd)) for fd in apps]

    def tick(self, now: float) -> None:
        if now < self._next_sample:
            return
        self._next_sample = now + SAMPLE_EVERY
        if now >= self._next_memory:
            self._next_memory = now + MEMORY_EVERY
            self._measure_memory()
        sample = self._sample(now)
        if sample is not None:
            if self.last_action == "start" and not self.samples:
                self.last_change = now
            self.samples.append(sample)
        keep = max(self.limits.cooldown, self.limits.grow_after) + 5
        while self.samples and self.samples[0].at < now - keep:
            self.samples.popleft()
        current = self.supervisor.target
        decision = policy.autoscale_decision(
            list(self.samples), current, self.limits, now, self.last_change, self.last_action, self.memory
        )
        previous, self.decision = self.decision, decision
        if decision.target != current:
            self._resize(now, current, decision)
        elif _worth_telling(decision, previous) and (
            not decision.cpu_bound or now - self._told_cpu_bound >= self.limits.cooldown
        ):
            if decision.cpu_bound:
                self._told_cpu_bound = now
            self._record(decision.reason, decision, current)

    def check_manual(self, target: int) -> None:
        """`corral scale N` while autoscaling is allowed inside the range only."""
        if not self.limits.minimum <= target <= self.limits.maximum:
            raise ValueError(
                f"autoscaling keeps {self.limits.minimum} to {self.limits.maximum} workers (--autoscale): "
                f"{target} is outside that range"
            )

    def manual(self, target: int) -> None:
        """`corral scale N` while autoscaling: the size holds until the next decision, judged from here."""
        self.last_change, self.last_action = time.monotonic(), "manual"
        self.samples.clear()
        self.decision = policy.ScaleDecision(target, "manual", f"corral scale {target}")
        self.last_event = {"time": time.time(), "action": "manual", "from": self.supervisor.target, "to": target,
                           "reason": "set by corral scale; the autoscaler decides again from here"}

    def _resize(self, now: float, current: int, decision: policy.ScaleDecision) -> None:
        try:
            self.supervisor.scale(decision.target, by_autoscaler=True)
        except ValueError as exc:  # the supervisor's own memory check disagreed: hold
            self.decision = policy.ScaleDecision(current, "hold", f"growth refused: {exc}")
            self._record(self.decision.reason, self.decision, current)
            self.last_change = now
            return
        self.last_change, self.last_action = now, decision.action
        self._record(f"{decision.action} {current} → {decision.target}: {decision.reason}", decision, current)

    def _record(self, message: str, decision: policy.ScaleDecision, current: int) -> None:
        log.info("autoscale: %s", message)
        if decision.target != current:
                self.last_event = {"time": time.time(), "action": decision.action, "from": current,
                               "to": decision.target, "reason": decision.reason}
        self.supervisor.events.record(
            "autoscale", message, action=decision.action, workers=current, target=decision.target,
            cpu_bound=decision.cpu_bound,
        )

    def _sample(self, now: float) -> policy.LoadSample | None:
        supervisor = self.supervisor
        busy, waits, waits_now = [], [], {}
        for worker in supervisor.workers.values():
            if worker.state != "ready" or worker.stop_reason is not None or not worker.pid:
                continue
            cell = supervisor.scoreboard.read(worker.cell)
            if cell.pid == worker.pid and cell.state is CellState.READY:
                busy.append(cell.busy)
                waited = resources.cpu_wait_ns(worker.pid)
                if waited is not None:
                    waits_now[worker.pid] = (waited, time.monotonic_ns())
                    before = self._waits.get(worker.pid)
                    if before is not None and waits_now[worker.pid][1] > before[1]:
                        waits.append((waited - before[0]) / (waits_now[worker.pid][1] - before[1]))
        self._waits = waits_now
        queued = 0
        for sock in self._listeners:
            depth = resources.accept_queue(sock)
            queued += depth[0] if depth else 0
        pids = [os.getpid(), *(g.process.pid for g in supervisor.generations.values())]
        pids += [w.pid for w in supervisor.workers.values() if w.pid]
        self._cpu.sample_cpu(pids)
        cpu = sum(self._cpu.cpu.values()) / 100 / self.cpus
        if not busy:
            return None
        return policy.LoadSample(
            now, len(busy), sum(busy) / len(busy), queued, min(1.0, cpu), self.cpus,
            cpu_wait=sum(waits) / len(waits) if waits else 0.0, machine_cpu=psutil.cpu_percent(None) / 100,
        )

    def _measure_memory(self) -> None:
        supervisor = self.supervisor
        if supervisor.current is None:
            return
        measured = [supervisor.sampler.memory(w.pid) for w in supervisor.workers.values() if w.pid and
                    w.state == "ready"]
        private = [m.uss for m in measured if m is not None]
        template = supervisor.sampler.memory(supervisor.current.process.pid)
        if not private or template is None:
            return
        available = resources.memory_available() + template.rss + sum(private)
        self.memory = policy.MemoryFigures(max(private), template.rss, available)
        ceiling, why = policy.memory_ceiling(self.limits, self.memory)
        if ceiling != self.ceiling:
            message = f"the maximum is now {ceiling} workers: {why or 'the range allows it and it fits'}"
            log.info("autoscale: %s", message)
            supervisor.events.record("autoscale", message, action="ceiling", ceiling=ceiling)
            self.ceiling = ceiling

    def status(self) -> dict[str, Any]:
        recent = [s for s in self.samples if s.at >= time.monotonic() - max(2.0, self.limits.grow_after)]
        return {
            "range": [self.limits.minimum, self.limits.maximum],
            "ceiling": self.ceiling,
            "band": [round(self.limits.low * 100), round(self.limits.high * 100)],
            "cooldown": self.limits.cooldown,
            "utilisation": policy.utilisation(recent) if recent else None,
            "cpu": sum(s.cpu for s in recent) / len(recent) if recent else None,
            "cpus": self.cpus,
            "cpu_wait": sum(s.cpu_wait for s in recent) / len(recent) if recent else None,
            "machine_cpu": sum(s.machine_cpu for s in recent) / len(recent) if recent else None,
            "queued": recent[-1].queued if recent else 0,
            "cpu_bound": self.decision.cpu_bound,
            "decision": {"action": self.decision.action, "target": self.decision.target,
                         "reason": self.decision.reason},
            "last_change": self.last_event,
        }


def _worth_telling(decision: policy.ScaleDecision, previous: policy.ScaleDecision) -> bool:
    """A hold is an event when it starts being CPU-bound or refused by memory, not on every changing figure."""
    if decision.cpu_bound:
        return not previous.cpu_bound
    return "refused" in decision.reason and "refused" not in previous.reason
