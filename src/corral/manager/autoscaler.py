"""`--autoscale MIN:MAX`: judges the pool's load from the facts it is given and says what to do; the supervisor
does it.

Every half second the supervisor hands over what it holds (`PoolFacts`: each ready worker's utilisation and open
connections from the scoreboard, the pool's size, the instance's processes). The autoscaler adds what it measures
itself: the time each worker's event loop waited for a CPU (`/proc/PID/schedstat`), the listeners' accept-queue
depth (TCP_INFO), the CPU used by the whole instance (manager, templates, workers) against what it may use (the
cgroup's quota, else the CPUs it may run on), the machine's CPU use and, every few seconds, memory, so the
ceiling follows the workers' private memory as it grows. It asks `policy.autoscale_decision` for the pool's size
and `balance.shed_plan` for the workers that should let some keep-alive clients go, and returns both as an
`AutoscaleDecision`. The supervisor resizes through its `scale` (the new slot forked, or the highest one drained
politely, as a reload does), says how that went (`resized`), and writes the shed orders to the workers.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from corral.manager import balance, policy, resources
from corral.manager.events import EventLog
from corral.manager.generation import Generation
from corral.scoreboard import CellState, Scoreboard
from corral.worker.spec import ListenerSpec

log = logging.getLogger("corral")

SAMPLE_EVERY = 0.5
MEMORY_EVERY = 5.0
LOOKS = 8  # samples of each worker kept for the balance: 4 s, twice its window


class Serving(Protocol):
    """What the autoscaler reads of a worker the supervisor keeps."""

    slot: int
    cell: int
    pid: int | None
    state: str
    stop_reason: str | None
    replacing: str | None


@dataclass(frozen=True)
class WorkerFacts:
    slot: int
    cell: int
    pid: int
    busy: float  # utilisation, from its scoreboard cell
    connections: int
    leaving: bool  # replaced (a reload, a recycle): it drains once its successor is ready


@dataclass(frozen=True)
class PoolFacts:
    now: float  # monotonic seconds
    target: int  # the pool's size as the supervisor keeps it
    workers: tuple[WorkerFacts, ...]  # ready, not asked to stop
    pids: tuple[int, ...]  # every process of the instance: manager, templates, workers
    template: int | None  # the current generation's template


@dataclass(frozen=True)
class AutoscaleDecision:
    target: int  # the pool's size: the supervisor scales to it when it differs from the facts' target
    shed: tuple[balance.Shed, ...] = ()  # shed orders for the supervisor to write


def pool_facts(
    now: float, target: int, workers: Iterable[Serving], scoreboard: Scoreboard, generations: Iterable[Generation],
    current: Generation | None,
) -> PoolFacts:
    ready, pids = [], [os.getpid(), *(generation.process.pid for generation in generations)]
    for worker in workers:
        if worker.pid:
            pids.append(worker.pid)
        if worker.state != "ready" or worker.stop_reason is not None or not worker.pid:
            continue
        cell = scoreboard.read(worker.cell)
        if cell.pid == worker.pid and cell.state is CellState.READY:
            ready.append(WorkerFacts(worker.slot, worker.cell, worker.pid, cell.busy, cell.connections,
                                     bool(worker.replacing)))
    return PoolFacts(now, target, tuple(ready), tuple(pids), current.process.pid if current else None)


class Autoscaler:
    def __init__(self, limits: policy.AutoscaleLimits, listeners: Sequence[ListenerSpec], events: EventLog,
                 target: int) -> None:
        self.limits = limits
        self.events = events
        quota = resources.cgroup_cpu_quota()
        self.cpus = min(float(resources.cpu_count()), quota) if quota else float(resources.cpu_count())
        self.samples: collections.deque[policy.LoadSample] = collections.deque()
        self.memory: policy.MemoryFigures | None = None
        self.ceiling = limits.maximum
        self.last_change = time.monotonic()  # the starting size counts as a change, from the first sample on
        self.last_action = "start"
        self.decision = policy.ScaleDecision(target, "hold", "measuring")
        self.last_event: dict[str, Any] | None = None
        self._target = target  # the pool's size as last known: from the facts, a resize or `corral scale`
        self._cpu = resources.ProcessSampler()
        self._waits: dict[int, tuple[int, int]] = {}  # pid: (ns waiting for a CPU, monotonic ns) at the last sample
        psutil.cpu_percent(None)  # starts the machine-wide measurement
        self._next_sample = 0.0
        self._next_memory = 0.0
        self._told_cpu_bound = -self.limits.cooldown  # a CPU-bound hold is told at most once per cool-down
        self._listeners = [socket.socket(fileno=os.dup(spec.fd)) for spec in listeners if spec.role == "app"]
        self._looks: dict[tuple[int, int], collections.deque[balance.Look]] = {}  # by (cell, pid)
        self._last_order = -math.inf
        self._told_shed = -math.inf  # shed orders become events at most once per cool-down (they repeat)
        self._shed_orders = 0
        self._shed_connections = 0
        self._last_shed: dict[str, Any] | None = None

    def due(self, now: float) -> bool:
        return now >= self._next_sample

    def decide(self, facts: PoolFacts) -> AutoscaleDecision:
        now = facts.now
        self._next_sample = now + SAMPLE_EVERY
        self._target = current = facts.target
        if now >= self._next_memory:
            self._next_memory = now + MEMORY_EVERY
            self._measure_memory(facts)
        sample = self._sample(facts)
        if sample is not None:
            if self.last_action == "start" and not self.samples:
                self.last_change = now
            self.samples.append(sample)
        keep = max(self.limits.cooldown, self.limits.grow_after) + 5
        while self.samples and self.samples[0].at < now - keep:
            self.samples.popleft()
        decision = policy.autoscale_decision(
            list(self.samples), current, self.limits, now, self.last_change, self.last_action, self.memory
        )
        previous, self.decision = self.decision, decision
        if decision.target == current and _worth_telling(decision, previous) and (
            not decision.cpu_bound or now - self._told_cpu_bound >= self.limits.cooldown
        ):
            if decision.cpu_bound:
                self._told_cpu_bound = now
            self._record(decision.reason, decision, current)
        return AutoscaleDecision(decision.target, self._balance(facts))

    def resized(self, now: float, previous: int, refused: str | None = None) -> None:
        """How the resize the last decision asked for went: done, or refused by the supervisor's memory check."""
        if refused is not None:
            self.decision = policy.ScaleDecision(previous, "hold", f"growth refused: {refused}")
            self._record(self.decision.reason, self.decision, previous)
            self.last_change = now
            return
        decision = self.decision
        self.last_change, self.last_action, self._target = now, decision.action, decision.target
        self._record(f"{decision.action} {previous} → {decision.target}: {decision.reason}", decision, previous)

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
        self.last_event = {"time": time.time(), "action": "manual", "from": self._target, "to": target,
                           "reason": "set by corral scale; the autoscaler decides again from here"}
        self._target = target

    def _record(self, message: str, decision: policy.ScaleDecision, current: int) -> None:
        log.info("autoscale: %s", message)
        if decision.target != current:
            self.last_event = {"time": time.time(), "action": decision.action, "from": current,
                               "to": decision.target, "reason": decision.reason}
        self.events.record(
            "autoscale", message, action=decision.action, workers=current, target=decision.target,
            cpu_bound=decision.cpu_bound,
        )

    def _balance(self, facts: PoolFacts) -> tuple[balance.Shed, ...]:
        """Looks at each staying worker; shed orders when one carries more than its share of the clients."""
        staying = {(w.cell, w.pid): w for w in facts.workers if not w.leaving}
        for key in [key for key in self._looks if key not in staying]:
            del self._looks[key]
        for key, worker in staying.items():
            seen = self._looks.setdefault(key, collections.deque(maxlen=LOOKS))
            seen.append(balance.Look(facts.now, worker.busy, worker.connections))
        plan = balance.shed_plan({cell: seen for (cell, _), seen in self._looks.items()}, facts.now, self._last_order)
        if not plan:
            return ()
        self._last_order = facts.now
        tell = facts.now - self._told_shed >= self.limits.cooldown
        if tell:
            self._told_shed = facts.now
        by_cell = {w.cell: w for w in staying.values()}
        for order in plan:
            worker = by_cell[order.cell]
            message = (f"worker {worker.slot} (pid {worker.pid}) lets {order.count} of its {worker.connections} "
                       f"keep-alive connections go: {order.reason}")
            self._shed_orders += 1
            self._shed_connections += order.count
            self._last_shed = {"time": time.time(), "worker": worker.slot, "pid": worker.pid,
                                  "count": order.count, "connections": worker.connections, "reason": order.reason}
            if tell:
                log.info("autoscale: %s", message)
                self.events.record("autoscale", message, action="shed", worker=worker.slot, pid=worker.pid,
                                   count=order.count, connections=worker.connections)
            else:
                log.debug("autoscale: %s", message)
        return tuple(plan)

    def _sample(self, facts: PoolFacts) -> policy.LoadSample | None:
        busy, waits, waits_now = [], [], {}
        for worker in facts.workers:
            busy.append(worker.busy)
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
        self._cpu.sample_cpu(list(facts.pids))
        cpu = sum(self._cpu.cpu.values()) / 100 / self.cpus
        if not busy:
            return None
        return policy.LoadSample(
            facts.now, len(busy), sum(busy) / len(busy), queued, min(1.0, cpu), self.cpus,
            cpu_wait=sum(waits) / len(waits) if waits else 0.0, machine_cpu=psutil.cpu_percent(None) / 100,
            busiest=max(busy),
        )

    def _measure_memory(self, facts: PoolFacts) -> None:
        if facts.template is None:
            return
        measured = [resources.ProcessSampler.memory(w.pid) for w in facts.workers]
        private = [m.uss for m in measured if m is not None]
        template = resources.ProcessSampler.memory(facts.template)
        if not private or template is None:
            return
        available = resources.memory_available() + template.rss + sum(private)
        self.memory = policy.MemoryFigures(max(private), template.rss, available)
        ceiling, why = policy.memory_ceiling(self.limits, self.memory)
        if ceiling != self.ceiling:
            message = f"the maximum is now {ceiling} workers: {why or 'the range allows it and it fits'}"
            log.info("autoscale: %s", message)
            self.events.record("autoscale", message, action="ceiling", ceiling=ceiling)
            self.ceiling = ceiling

    def status(self) -> dict[str, Any]:
        recent = [s for s in self.samples if s.at >= time.monotonic() - max(2.0, self.limits.grow_after)]
        return {
            "range": [self.limits.minimum, self.limits.maximum],
            "ceiling": self.ceiling,
            "band": [round(self.limits.low * 100), round(self.limits.high * 100)],
            "cooldown": self.limits.cooldown,
            "utilisation": policy.utilisation(recent) if recent else None,
            "busiest": policy.busiest(recent) if recent else None,
            "cpu": sum(s.cpu for s in recent) / len(recent) if recent else None,
            "cpus": self.cpus,
            "cpu_wait": sum(s.cpu_wait for s in recent) / len(recent) if recent else None,
            "machine_cpu": sum(s.machine_cpu for s in recent) / len(recent) if recent else None,
            "queued": recent[-1].queued if recent else 0,
            "cpu_bound": self.decision.cpu_bound,
            "decision": {"action": self.decision.action, "target": self.decision.target,
                         "reason": self.decision.reason},
            "last_change": self.last_event,
            "shed": {"orders": self._shed_orders, "connections": self._shed_connections, "last": self._last_shed},
        }


def _worth_telling(decision: policy.ScaleDecision, previous: policy.ScaleDecision) -> bool:
    """A hold is an event when it starts being CPU-bound or refused by memory, not on every changing figure."""
    if decision.cpu_bound:
        return not previous.cpu_bound
    return "refused" in decision.reason and "refused" not in previous.reason
