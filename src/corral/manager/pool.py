"""The worker slots and their lifecycle: fork, ready, drain, kill for a fault, forget.

A worker fills a slot (1..target) and a scoreboard cell; during a reload or a recycle, a slot holds its old
worker and the replacement at once, each in its own cell. The pool acts on one worker at a time; which ones
and when is the supervisor's business (with the policy's decisions).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from corral.manager import policy
from corral.manager.events import EventLog, Stall, read_stall, wait_channel
from corral.manager.generation import STACK_DUMP_WAIT, Generation
from corral.options import Options
from corral.process import DUMP_STACKS
from corral.scoreboard import CELLS, CellState, Scoreboard

log = logging.getLogger("corral")

SPARE_SLOT = 0  # the slot of a parked spare: none of 1..N until it is promoted


@dataclass
class Worker:
    slot: int
    cell: int
    generation: int
    forked_at: float
    pid: int | None = None
    state: str = "starting"  # starting, ready, draining; parked: a spare (slot 0) until promoted
    started_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    stop_reason: str | None = None  # set when the manager asked it to stop: its exit is not a crash
    kill_at: float | None = None
    fault: str | None = None  # why the manager killed it (hung, never ready): its exit counts as a crash
    replacing: str | None = None  # why a replacement was started; drain once the replacement is ready
    request_limit: int | None = None
    memory_uss: int | None = None
    memory_killed: bool = False


class Pool:
    def __init__(self, settings: Options, scoreboard: Scoreboard, events: EventLog) -> None:
        self.settings = settings
        self.scoreboard = scoreboard
        self.events = events
        self.workers: dict[int, Worker] = {}  # by scoreboard cell
        self.on_worker_forked: list[Callable[[Worker], object]] = []  # before the template is asked to fork
        self.on_worker_gone: list[Callable[[Worker], object]] = []

    def fork(self, slot: int, generation: Generation, spare: bool = False) -> Worker:
        """Ask the template for a worker in `slot`; a spare (slot 0) parks until the template promotes it."""
        used = set(self.workers)
        cell = next(i for i in range(CELLS) if i not in used)
        self.scoreboard.reset(cell, generation.number)
        limit = policy.request_limit(
            self.settings.max_requests, self.settings.max_requests_jitter, random.random()
        )
        worker = Worker(slot, cell, generation.number, time.monotonic(), request_limit=limit)
        if spare:
            worker.slot, worker.state = SPARE_SLOT, "parked"
        self.workers[cell] = worker
        for hook in self.on_worker_forked:
            hook(worker)
        generation.send({"op": "fork", "cell": cell, **({"spare": True} if spare else {})})
        return worker

    def promoted(self, spare: Worker | None, dead: Worker) -> None:
        """The template woke the spare in place of `dead` (its standing order): the spare takes the slot. If the
        slot needs no one (the manager had asked `dead` to stop, or another worker fills it), the spare drains."""
        if spare is None or spare.state != "parked":
            return
        spare.slot, spare.state, spare.forked_at = dead.slot, "starting", time.monotonic()
        log.info("worker %d (pid %s): the spare (pid %s) takes its place", dead.slot, dead.pid, spare.pid)
        filled = any(
            w.slot == dead.slot and w is not spare and w is not dead and w.generation == spare.generation
            and not w.replacing and w.stop_reason is None for w in self.workers.values()
        )
        if filled or (dead.stop_reason is not None and dead.fault is None):
            self.drain(spare, "its slot is filled")

    def became_ready(self, worker: Worker) -> bool:
        """A worker's `ready` message; False when it was not starting (a late or repeated message)."""
        if worker.state != "starting":
            return False
        worker.state = "ready"
        worker.ready_at = time.monotonic()
        log.info("worker %d (pid %s, generation %d) ready", worker.slot, worker.pid, worker.generation)
        self.events.record("start", f"worker {worker.slot} (pid {worker.pid}) ready, generation {worker.generation}",
                           worker=worker.slot, pid=worker.pid, generation=worker.generation)
        return True

    def answered(self, worker: Worker) -> int:
        """The requests a worker has answered, as its scoreboard cell counts them (0 for a cell not yet its)."""
        cell = self.scoreboard.read(worker.cell)
        return cell.requests if worker.pid and cell.pid == worker.pid else 0

    def forget(self, worker: Worker) -> None:
        if self.workers.pop(worker.cell, None) is not None:
            for hook in self.on_worker_gone:
                hook(worker)

    def of_generation(self, number: int) -> list[Worker]:
        return [w for w in self.workers.values() if w.generation == number]

    def spares(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.state == "parked"]

    def ready_workers(self) -> int:
        return sum(1 for w in self.workers.values() if w.state == "ready")

    def drain(self, worker: Worker, reason: str) -> None:
        if worker.stop_reason is not None:
            return
        worker.stop_reason = reason
        worker.state = "draining"
        worker.kill_at = time.monotonic() + self.settings.graceful_timeout
        log.info("worker %d (pid %s) draining: %s", worker.slot, worker.pid, reason)
        if worker.pid:
            send_signal(worker.pid, signal.SIGTERM)

    def drain_replaced(self, slot: int, current: int | None) -> None:
        """Once a slot has a ready worker of the current generation, its replaced workers drain."""
        if current is None:
            return
        fresh = [
            w for w in self.workers.values()
            if w.slot == slot and w.generation == current and w.state == "ready" and not w.replacing
        ]
        if not fresh:
            return
        for worker in list(self.workers.values()):
            outdated = worker.replacing or worker.generation != current
            if worker.slot == slot and worker not in fresh and outdated:
                self.drain(worker, worker.replacing or "replaced")

    def watchdog(self, now: float) -> None:
        """Kill (after a stack dump) the workers whose loop hung, and those not ready within --startup-timeout."""
        for worker in self.workers.values():
            if worker.pid is None or worker.fault or worker.state == "draining":
                continue
            cell = self.scoreboard.read(worker.cell)
            if cell.pid != worker.pid:
                continue
            if policy.is_hung(now, cell.heartbeat, self.settings.timeout, cell.state is CellState.IMPORTING):
                stall = read_stall(worker.pid)
                known = stall.request_thread
                if known is None and self.settings.interface == "asgi":
                    known = False  # no WSGI threads: only the loop stamps the heartbeat
                cause = policy.hang_cause(now - cell.heartbeat, self.settings.timeout, known)
                self.kill_for_fault(worker, now, cause, stall)
            elif worker.state == "starting" and now - worker.forked_at > self.settings.startup_timeout:
                self.kill_for_fault(worker, now, f"it was not ready within --startup-timeout "
                                    f"{self.settings.startup_timeout:g} s")

    def kill_for_fault(self, worker: Worker, now: float, fault: str, stall: Stall | None = None) -> None:
        """Log every thread's stack (faulthandler, in the worker), then kill: the blocking line is in the log."""
        log.error("worker %d (pid %s): %s; stack of every thread:", worker.slot, worker.pid, fault)
        frame = (stall or read_stall(worker.pid)).frame
        self.events.record("hang", f"worker {worker.slot} (pid {worker.pid}): {fault}"
                           + (f" at {frame.rpartition('/')[2]}" if frame else ""), worker=worker.slot,
                           pid=worker.pid, cause=fault, waiting_in=wait_channel(worker.pid), frame=frame)
        worker.fault = fault
        worker.stop_reason = fault
        if worker.pid:
            send_signal(worker.pid, DUMP_STACKS)
        worker.kill_at = now + STACK_DUMP_WAIT

    def enforce_deadlines(self, now: float) -> None:
        """SIGKILL the workers past their deadline: a drain past --graceful-timeout, a stack dump given its time."""
        for worker in self.workers.values():
            if worker.kill_at is not None and now >= worker.kill_at and worker.pid:
                if worker.fault is None:
                    log.warning(
                        "worker %d (pid %d) still busy after --graceful-timeout %g s: killed",
                        worker.slot, worker.pid, self.settings.graceful_timeout,
                    )
                send_signal(worker.pid, signal.SIGKILL)
                worker.kill_at = None

    def signal_all(self, sig: int) -> None:
        for worker in self.workers.values():
            if worker.pid:
                send_signal(worker.pid, sig)


def send_signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
