"""The manager's loop: gather facts (channel messages, scoreboard, process figures), ask the policy, act.

It owns the generations (templates), the workers they fork, the slots the workers fill, and the
decisions taken on them: replace the dead, kill the hung, recycle, scale, roll a reload, stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral import channel
from corral.errors import CorralError, ExitCode
from corral.manager import policy, resources
from corral.manager.events import EventLog, stalled_frame, wait_channel
from corral.manager.generation import Generation, Phase, kill_orphans
from corral.manager.restarts import Restarts, Slot
from corral.options import Options
from corral.process import DUMP_STACKS, RELOAD_CERTIFICATES, describe_status, killed_by
from corral.scoreboard import CELLS, MAX_WORKERS, CellState, Scoreboard
from corral.text import plural
from corral.worker.spec import TemplateSpec

if TYPE_CHECKING:
    from corral.manager.autoscaler import Autoscaler

log = logging.getLogger("corral")

TICK = policy.TICK
STACK_DUMP_WAIT = 1.0


@dataclass
class Worker:
    slot: int
    cell: int
    generation: int
    forked_at: float
    pid: int | None = None
    state: str = "starting"  # starting, ready, draining
    started_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    stop_reason: str | None = None  # set when the manager asked it to stop: its exit is not a crash
    kill_at: float | None = None
    fault: str | None = None  # why the manager killed it (hung, never ready): its exit counts as a crash
    replacing: str | None = None  # why a replacement was started; drain once the replacement is ready
    request_limit: int | None = None
    memory_uss: int | None = None
    memory_killed: bool = False


class Fatal(Exception):
    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


class Supervisor:
    def __init__(
        self,
        settings: Options,
        spec: TemplateSpec,
        scoreboard: Scoreboard,
        target_workers: int,
        explicit_workers: bool,
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.scoreboard = scoreboard
        self.target = target_workers
        self.explicit_workers = explicit_workers
        self.book = Restarts(policy.Backoff(maximum=settings.backoff_max), settings.crash_limit, settings.crash_window)
        self.generations: dict[int, Generation] = {}
        self.current: Generation | None = None
        self.workers: dict[int, Worker] = {}  # by scoreboard cell
        self.slots: dict[int, Slot] = self.book.slots
        self.restarts = 0
        self.started = False  # the first generation has proven itself
        self.stopping = False
        self.draining_instance = False
        self.exit_code: ExitCode | None = None
        self.fatal_message: str | None = None
        self.sampler = resources.ProcessSampler()
        self.events = EventLog()
        self.on_ready: list[Callable[[], object]] = []
        self.on_status: list[Callable[[str], object]] = []
        self.on_worker_forked: list[Callable[[Worker], object]] = []  # before the template is asked to fork
        self.on_worker_gone: list[Callable[[Worker], object]] = []
        self.reloads = {"done": 0, "refused": 0}
        self._wakeup = asyncio.Event()
        self._next_cpu_sample = 0.0
        self._stop_deadline: float | None = None
        self._announced = False
        self.certificate_status: Callable[[], list[dict[str, Any]]] | None = None
        # Reloads whose pre-start steps run (--prestart-on-reload): their answer, and the task that holds it.
        self._reloads_in_prestart: dict[asyncio.Future[int], asyncio.Task[None]] = {}
        self._generations_started = 0
        self.autoscaler: Autoscaler | None = None

    # --- the loop -------------------------------------------------------------------------------

    async def run(self) -> ExitCode:
        self._start_generation()
        while True:
            try:
                self._tick()
            except Fatal as fatal:
                self._fail(str(fatal), fatal.code)
            if self.stopping and self._all_gone():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), TICK)
            self._wakeup.clear()
        for generation in self.generations.values():
            generation.channel.close()
        deadline = time.monotonic() + 5.0
        while kill_orphans([]) and time.monotonic() < deadline:  # what a killed template's workers left
            await asyncio.sleep(TICK)
        return self.exit_code or ExitCode.OK

    def _tick(self) -> None:
        now = time.monotonic()
        self._watch_templates()
        self._watch_imports(now)
        self._watchdog(now)
        self._enforce_deadlines(now)
        if now >= self._next_cpu_sample:
            self._next_cpu_sample = now + 1.0
            self.sampler.sample_cpu([w.pid for w in self.workers.values() if w.pid])
            kill_orphans(list(self.generations.values()))
        if not self.stopping:
            if self.settings.max_memory:
                self._measure_memory()
            self._recycle()
            if self.autoscaler is not None and self.started:
                self.autoscaler.tick(now)
            self._reconcile(now)
        self._retire_generations()

    # --- generations ----------------------------------------------------------------------------

    def _start_generation(self) -> Generation:
        self._generations_started += 1
        number = self._generations_started  # never reused, even after a refused reload
        self.spec.generation = number
        generation = Generation.start(self.spec)
        self.generations[number] = generation
        loop = asyncio.get_running_loop()
        loop.add_reader(generation.channel, self._on_readable, generation)
        log.debug("generation %d: template pid %d importing the app", number, generation.process.pid)
        return generation

    def reload(self) -> asyncio.Future[int]:
        """Start a rolling reload; the future ends with the new generation number or a RuntimeError."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.stopping:
            future.set_exception(RuntimeError("corral is stopping"))
        elif self.settings.prestart and self.settings.prestart_on_reload:
            self._reloads_in_prestart[future] = asyncio.create_task(self._prestart_then_reload(future))
        else:
            self._begin_reload(future)
        return future

    async def _prestart_then_reload(self, future: asyncio.Future[int]) -> None:
        from corral.prestart import run_prestart_for_reload

        try:
            await run_prestart_for_reload(self.settings)
        except CorralError as exc:
            if not future.done():
                log.error("reload refused: %s", exc)
                self.reloads["refused"] += 1
                future.set_exception(RuntimeError(str(exc)))
            return
        finally:
            self._reloads_in_prestart.pop(future, None)
        if not future.done():  # stop() answers the reloads whose steps were still running
            self._begin_reload(future)

    def _begin_reload(self, future: asyncio.Future[int]) -> None:
        pending = [g for g in self.generations.values() if g.phase in (Phase.LOADING, Phase.PROVING)]
        generation = pending[0] if pending else self._start_generation()
        generation.reload_waiters.append(future)
        log.info("reload: generation %d is starting", generation.number)
        self.events.record("reload", f"reload started: generation {generation.number}", generation=generation.number)

    def _on_readable(self, generation: Generation) -> None:
        while True:
            try:
                data = generation.channel.recv(channel.MAX_MESSAGE)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                asyncio.get_running_loop().remove_reader(generation.channel)
                break
            try:
                self._on_message(generation, channel.decode(data))
            except Fatal as fatal:
                self._fail(str(fatal), fatal.code)
        self._wakeup.set()

    def _on_message(self, generation: Generation, message: dict[str, Any]) -> None:
        event = message["ev"]
        worker = self.workers.get(int(message.get("cell", -1)))
        if event == "loaded":
            self._on_loaded(generation)
        elif event == "load_failed":
            generation.boot_error = str(message["error"])
            generation.boot_traceback = str(message.get("traceback", ""))
            self._generation_failed(generation, generation.boot_error)
        elif worker is None or worker.generation != generation.number:
            return
        elif event == "forked":
            worker.pid = int(message["pid"])
        elif event == "ready":
            self._on_worker_ready(worker)
        elif event == "boot_failed":
            generation.boot_error = str(message["error"])
            generation.boot_traceback = str(message.get("traceback", ""))
            if generation.phase is not Phase.PROVING:
                log.error("worker %d (pid %s) failed to start: %s", worker.slot, worker.pid, generation.boot_error)
        elif event == "exited":
            self._on_worker_exit(worker, int(message["status"]))

    def _on_loaded(self, generation: Generation) -> None:
        if generation.phase is not Phase.LOADING:
            return
        generation.phase = Phase.PROVING
        self._fork(1, generation)

    def _generation_failed(self, generation: Generation, cause: str) -> None:
        """A generation that cannot get one worker ready: fatal at start, refused on reload."""
        generation.phase = Phase.FAILED
        generation.kill()
        for worker in [w for w in self.workers.values() if w.generation == generation.number]:
            self._forget(worker)
        if not self.started and self.settings.reload:  # `corral dev`: the next save may fix it
            log.error("the app failed to start: %s", cause)
            _log_traceback(generation)
            log.error("waiting for a change to the source")
            self._refuse_waiters(generation, cause)
            return
        if not self.started:
            self.fatal_message = f"the app failed to start: {cause}"
            log.error("%s", self.fatal_message)  # the one line first, then the traceback, once
            _log_traceback(generation)
            raise Fatal(self.fatal_message, ExitCode.APP_FAILED_TO_START)
        if self.current is None:  # its template died and no generation serves
            self.fatal_message = f"a new template cannot start after the last one died: {cause}"
            log.error("%s", self.fatal_message)
            _log_traceback(generation)
            raise Fatal(self.fatal_message, ExitCode.CRASH_LOOP)
        log.error("reload refused: generation %d failed to start: %s", generation.number, cause)
        self.reloads["refused"] += 1
        _log_traceback(generation)
        self.events.record("reload", f"reload refused: generation {generation.number} failed to start: {cause}",
                           generation=generation.number, outcome="refused", cause=cause)
        log.error("generation %d keeps serving", self.current.number if self.current else 0)
        self._refuse_waiters(generation, cause)

    @staticmethod
    def _refuse_waiters(generation: Generation, cause: str) -> None:
        for waiter in generation.reload_waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError(f"the new code failed to start: {cause}"))

    def _promote(self, generation: Generation) -> None:
        previous = self.current
        generation.phase = Phase.CURRENT
        self.current = generation
        if previous is not None:
            previous.phase = Phase.RETIRING
            for worker in self.workers.values():
                if worker.generation == previous.number and not worker.replacing:
                    worker.replacing = f"reload to generation {generation.number}"
        if not self.started:
            self.started = True
            self._plan_memory_at_start()

    def _watch_templates(self) -> None:
        for generation in list(self.generations.values()):
            code = generation.process.poll()
            if code is None:
                continue
            self._drop_generation(generation)
            if generation.phase in (Phase.FAILED, Phase.RETIRING) or self.stopping:
                continue
            cause = f"its template process {describe_status_code(code)}"
            if generation.phase in (Phase.LOADING, Phase.PROVING):
                self._generation_failed(generation, generation.boot_error or cause)
                continue
            log.error("generation %d: %s; starting a new template", generation.number, cause)
            self.restarts += 1
            self.book.template_died(time.monotonic())
            self._check_crash_loop(time.monotonic(), f"the template {describe_status_code(code)}")
            self.current = None
            replacement = self._start_generation()
            replacement.reload_waiters.extend(generation.reload_waiters)

    def _watch_imports(self, now: float) -> None:
        """A template whose import of the app overruns --startup-timeout logs its stack, then is killed: the
        generation fails (exit 3 at start, a refused reload later) instead of waiting forever."""
        for generation in self.generations.values():
            if generation.phase is not Phase.LOADING or not generation.alive:
                continue
            if generation.kill_at is None and now - generation.started_at > self.settings.startup_timeout:
                generation.boot_error = (
                    f"importing the app took longer than --startup-timeout {self.settings.startup_timeout:g} s"
                )
                log.error("generation %d: %s; stack of the template:", generation.number, generation.boot_error)
                _signal(generation.process.pid, DUMP_STACKS)
                generation.kill_at = now + STACK_DUMP_WAIT
            elif generation.kill_at is not None and now >= generation.kill_at:
                generation.kill()

    def _drop_generation(self, generation: Generation) -> None:
        del self.generations[generation.number]
        asyncio.get_running_loop().remove_reader(generation.channel)
        generation.channel.close()
        for worker in [w for w in self.workers.values() if w.generation == generation.number]:
            self._forget(worker)

    def _retire_generations(self) -> None:
        for generation in list(self.generations.values()):
            has_workers = any(w.generation == generation.number for w in self.workers.values())
            if (generation.phase in (Phase.RETIRING, Phase.FAILED) or self.stopping) and not has_workers:
                generation.ask_to_exit()
        self._finish_reloads()

    def _finish_reloads(self) -> None:
        current = self.current
        if current is None or not current.reload_waiters:
            return
        older = any(w.generation != current.number for w in self.workers.values())
        ready = {w.slot for w in self.workers.values() if w.generation == current.number and w.state == "ready"}
        if older or not all(slot in ready for slot in range(1, self.target + 1)):
            return
        for waiter in current.reload_waiters:
            if not waiter.done():
                waiter.set_result(current.number)
        current.reload_waiters.clear()
        self.reloads["done"] += 1
        log.info("reload finished: generation %d serves with %d workers", current.number, self.target)
        self.events.record("reload", f"reload finished: generation {current.number} serves",
                           generation=current.number, outcome="finished")
        self._report(f"{plural(self.target, 'worker')}, generation {current.number}")

    # --- workers --------------------------------------------------------------------------------

    def _fork(self, slot: int, generation: Generation) -> Worker:
        used = set(self.workers)
        cell = next(i for i in range(CELLS) if i not in used)
        self.scoreboard.reset(cell, generation.number)
        limit = policy.request_limit(
            self.settings.max_requests, self.settings.max_requests_jitter, random.random()
        )
        worker = Worker(slot, cell, generation.number, time.monotonic(), request_limit=limit)
        self.workers[cell] = worker
        self.slots.setdefault(slot, Slot())
        for hook in self.on_worker_forked:
            hook(worker)
        generation.send({"op": "fork", "cell": cell})
        return worker

    def _on_worker_ready(self, worker: Worker) -> None:
        if worker.state != "starting":
            return
        worker.state = "ready"
        worker.ready_at = time.monotonic()
        log.info("worker %d (pid %s, generation %d) ready", worker.slot, worker.pid, worker.generation)
        self.events.record("start", f"worker {worker.slot} (pid {worker.pid}) ready, generation {worker.generation}",
                           worker=worker.slot, pid=worker.pid, generation=worker.generation)
        generation = self.generations.get(worker.generation)
        if generation is not None and generation.phase is Phase.PROVING:
            self._promote(generation)
        self._drain_replaced(worker.slot)
        self._announce_if_ready()

    def _on_worker_exit(self, worker: Worker, status: int) -> None:
        self._forget(worker)
        what = describe_status(status)
        if worker.stop_reason is not None and worker.fault is None:
            log.debug("worker %d (pid %s) %s after: %s", worker.slot, worker.pid, what, worker.stop_reason)
            self.events.record("exit", f"worker {worker.slot} (pid {worker.pid}) {what} after: {worker.stop_reason}",
                               worker=worker.slot, pid=worker.pid, cause=worker.stop_reason)
            return
        generation = self.generations.get(worker.generation)
        if generation is not None and generation.phase is Phase.PROVING and worker.ready_at is None:
            cause = f"the first worker was killed: {worker.fault}" if worker.fault else f"the first worker {what}"
            self._generation_failed(generation, generation.boot_error or cause)
            return
        hint = ""
        if killed_by(status) == signal.SIGKILL and worker.fault is None:
            hint = " (SIGKILL usually comes from the kernel's out-of-memory killer: check `dmesg`)"
        cause = f"killed because {worker.fault}" if worker.fault else what
        log.warning("worker %d (pid %s) %s%s", worker.slot, worker.pid, cause, hint)
        now = time.monotonic()
        ready_for = None if worker.ready_at is None else now - worker.ready_at
        verdict = self.book.worker_died(worker.slot, ready_for, now)
        self.restarts += 1
        fields = {"worker": worker.slot, "pid": worker.pid, "cause": cause, "ready_for": ready_for}
        if verdict.crash:
            self.events.record("crash", f"worker {worker.slot} {cause}; replaced at once", **fields)
            return
        self.events.record("crash", f"worker {worker.slot} {cause} before proving itself", failed_start=True, **fields)
        if verdict.delay > 0:
            log.warning("worker %d: %d failed starts in a row; next start in %.1f s", worker.slot, verdict.failures,
                        verdict.delay)
            self.events.record("backoff", f"worker {worker.slot} waits {verdict.delay:.1f} s", worker=worker.slot,
                               seconds=verdict.delay, failures=verdict.failures)
        self._check_crash_loop(now, f"worker {worker.slot} {cause}")

    def _check_crash_loop(self, now: float, last: str) -> None:
        """Exit 4 once more than --crash-limit starts failed in --crash-window with no worker proving itself."""
        self.book.saw_ready([w.ready_at for w in self.workers.values() if w.ready_at and w.state == "ready"], now)
        if self.book.crash_loop(now):
            raise Fatal(
                f"crash loop: {self.book.recent_failed_starts(now)} workers failed to start within "
                f"{self.settings.crash_window:g} s and none stayed ready {self.book.backoff.proving_time:g} s "
                f"(--crash-limit {self.settings.crash_limit}; last: {last}); stopping",
                ExitCode.CRASH_LOOP,
            )

    def _forget(self, worker: Worker) -> None:
        if self.workers.pop(worker.cell, None) is not None:
            for hook in self.on_worker_gone:
                hook(worker)

    def _drain(self, worker: Worker, reason: str) -> None:
        if worker.stop_reason is not None:
            return
        worker.stop_reason = reason
        worker.state = "draining"
        worker.kill_at = time.monotonic() + self.settings.graceful_timeout
        log.info("worker %d (pid %s) draining: %s", worker.slot, worker.pid, reason)
        if worker.pid:
            _signal(worker.pid, signal.SIGTERM)

    def _drain_replaced(self, slot: int) -> None:
        """Once a slot has a ready worker of the current generation, its replaced workers drain."""
        current = self.current
        if current is None:
            return
        fresh = [
            w for w in self.workers.values()
            if w.slot == slot and w.generation == current.number and w.state == "ready" and not w.replacing
        ]
        if not fresh:
            return
        for worker in list(self.workers.values()):
            outdated = worker.replacing or worker.generation != current.number
            if worker.slot == slot and worker not in fresh and outdated:
                self._drain(worker, worker.replacing or "replaced")

    def _watchdog(self, now: float) -> None:
        for worker in self.workers.values():
            if worker.pid is None or worker.fault or worker.state == "draining":
                continue
            cell = self.scoreboard.read(worker.cell)
            if cell.pid != worker.pid:
                continue
            if policy.is_hung(now, cell.heartbeat, self.settings.timeout, cell.state is CellState.IMPORTING):
                blocked = now - cell.heartbeat
                self._kill_for_fault(worker, now, f"its event loop hung (blocked {blocked:.1f} s, --timeout "
                                     f"{self.settings.timeout:g})")
            elif worker.state == "starting" and now - worker.forked_at > self.settings.startup_timeout:
                self._kill_for_fault(worker, now, f"it was not ready within --startup-timeout "
                                     f"{self.settings.startup_timeout:g} s")

    def _kill_for_fault(self, worker: Worker, now: float, fault: str) -> None:
        """Log every thread's stack (faulthandler, in the worker), then kill: the blocking line is in the log."""
        log.error("worker %d (pid %s): %s; stack of every thread:", worker.slot, worker.pid, fault)
        frame = stalled_frame(worker.pid)
        self.events.record("hang", f"worker {worker.slot} (pid {worker.pid}): {fault}"
                           + (f" at {frame.rpartition('/')[2]}" if frame else ""), worker=worker.slot,
                           pid=worker.pid, cause=fault, waiting_in=wait_channel(worker.pid), frame=frame)
        worker.fault = fault
        worker.stop_reason = fault
        if worker.pid:
            _signal(worker.pid, DUMP_STACKS)
        worker.kill_at = now + STACK_DUMP_WAIT

    def _enforce_deadlines(self, now: float) -> None:
        for worker in self.workers.values():
            if worker.kill_at is not None and now >= worker.kill_at and worker.pid:
                if worker.fault is None:
                    log.warning(
                        "worker %d (pid %d) still busy after --graceful-timeout %g s: killed",
                        worker.slot, worker.pid, self.settings.graceful_timeout,
                    )
                _signal(worker.pid, signal.SIGKILL)
                worker.kill_at = None
        if self._stop_deadline is not None and now >= self._stop_deadline:
            for generation in self.generations.values():
                generation.kill()

    def _reconcile(self, now: float) -> None:
        current = self.current
        if current is None or current.phase is not Phase.CURRENT:
            return
        for slot_number in range(1, self.target + 1):
            active = [
                w for w in self.workers.values()
                if w.slot == slot_number and w.generation == current.number
                and not w.replacing and w.stop_reason is None
            ]
            if not active and now >= self.book.slot(slot_number).next_start:
                self._fork(slot_number, current)
        waiting = self.book.waiting(range(1, self.target + 1), now)
        serving = sum(1 for w in self.workers.values() if w.state != "draining" and w.stop_reason is None)
        if policy.start_despite_backoff(serving, len(waiting)):
            slot_number = min(waiting, key=lambda n: self.book.slot(n).next_start)
            log.warning("worker %d: starting before its backoff ends: no worker is ready", slot_number)
            self._fork(slot_number, current)
        for worker in list(self.workers.values()):
            if worker.slot > self.target:
                self._drain(worker, "scaled down")

    def _recycle(self) -> None:
        if self.settings.max_requests is None and self.settings.max_memory is None:
            return
        for worker in self.workers.values():
            if worker.state != "ready" or worker.replacing or worker.stop_reason:
                continue
            requests = self.scoreboard.read(worker.cell).requests
            reason = policy.recycle_reason(
                requests, worker.request_limit, worker.memory_uss, self.settings.max_memory
            )
            if reason:
                log.info("worker %d (pid %s) recycled: %s; starting its replacement", worker.slot, worker.pid, reason)
                self.events.record("recycle", f"worker {worker.slot} (pid {worker.pid}) recycled: {reason}",
                                   worker=worker.slot, pid=worker.pid, cause=reason)
                worker.replacing = reason

    def _measure_memory(self) -> None:
        """Every tick: RSS (one small read) as a pre-filter, USS only above the limit, a kill far above it
        (draining workers too: keep-alive clients still reach them)."""
        limit = self.settings.max_memory
        for worker in self.workers.values():
            if not worker.pid or worker.state == "starting" or worker.memory_killed or worker.fault:
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
                _signal(worker.pid, signal.SIGKILL)

    # --- scale, memory budget -------------------------------------------------------------------

    def scale(self, target: int, by_autoscaler: bool = False) -> str:
        if target > MAX_WORKERS:
            raise ValueError(f"at most {MAX_WORKERS} workers per instance (asked for {target})")
        if self.autoscaler is not None and not by_autoscaler:
            self.autoscaler.check_manual(target)
        if target > self.target:
            plan = self._memory_plan(target, explicit=True)
            if plan is not None and not plan.fits:
                raise ValueError(f"not enough memory: {plan.explanation}")
        if self.autoscaler is not None and not by_autoscaler:
            self.autoscaler.manual(target)
        previous, self.target = self.target, target
        log.info("scale: %d → %d workers", previous, target)
        self.events.record("scale", f"scale: {previous} → {plural(target, 'worker')}", previous=previous, target=target)
        self._report(f"scaling to {plural(target, 'worker')}")
        self._wakeup.set()
        return f"scaled from {previous} to {plural(target, 'worker')}"

    def _memory_plan(self, wanted: int, explicit: bool) -> policy.MemoryPlan | None:
        ready = [w for w in self.workers.values() if w.state == "ready" and w.pid]
        if not ready or self.current is None:
            return None
        measured = [self.sampler.memory(w.pid) for w in ready if w.pid]
        private = [m.uss for m in measured if m is not None]
        template = self.sampler.memory(self.current.process.pid)
        shared = template.rss if template else 0
        pool = shared + sum(private)
        available = resources.memory_available() + pool
        return policy.plan_memory(wanted, explicit, max(private, default=0), shared, available)

    def _plan_memory_at_start(self) -> None:
        plan = self._memory_plan(self.target, self.explicit_workers)
        if plan is None:
            return
        if not plan.fits:
            raise Fatal(f"not enough memory for --workers {self.target}: {plan.explanation}", ExitCode.NO_MEMORY)
        if plan.workers < self.target:
            log.warning("memory budget: %s", plan.explanation)
            self.target = plan.workers

    # --- stopping -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """SIGTERM: fail /readyz at once, keep serving --drain-delay seconds (load balancers notice), then drain."""
        if self.stopping or self.draining_instance:
            return
        self.draining_instance = True
        self._report("stopping")
        if self.settings.drain_delay > 0:
            log.info("stopping: /readyz fails now; draining in %g s (--drain-delay)", self.settings.drain_delay)
            asyncio.get_running_loop().call_later(self.settings.drain_delay, self.stop)
        else:
            self.stop()

    def stop(self, code: ExitCode = ExitCode.OK, graceful: bool = True) -> None:
        if self.stopping and graceful:
            return
        self.stopping = True
        if self.exit_code is None:
            self.exit_code = code
        self.events.record("stop", "stopping" + ("" if graceful else " now"), code=int(code))
        waiting = [*self._reloads_in_prestart]
        for generation in self.generations.values():
            waiting += generation.reload_waiters
            generation.reload_waiters.clear()
        for waiter in waiting:  # a waiting `corral reload` gets its answer now
            if not waiter.done():
                waiter.set_exception(RuntimeError("corral is stopping"))
        if not self.draining_instance:  # request_stop() has told already
            self._report("stopping")
        if not graceful:
            for worker in self.workers.values():
                if worker.pid:
                    _signal(worker.pid, signal.SIGQUIT)
            for generation in self.generations.values():
                generation.kill()
            self._stop_deadline = time.monotonic()
            return
        for worker in list(self.workers.values()):
            self._drain(worker, "stopping")
            if worker.pid is None:
                self._forget(worker)
        for generation in self.generations.values():
            if generation.phase is Phase.LOADING:  # still importing: no worker to drain, nobody reads the channel
                generation.kill()
            else:
                generation.ask_to_exit()
        self._stop_deadline = time.monotonic() + self.settings.graceful_timeout + 5
        self._wakeup.set()

    def _fail(self, message: str, code: ExitCode) -> None:
        if self.fatal_message is None:
            self.fatal_message = message
            log.error("%s", message)
        self.exit_code = code
        self.stop(code)

    def _all_gone(self) -> bool:
        return not self.generations

    # --- reporting ------------------------------------------------------------------------------

    def _report(self, text: str) -> None:
        for status in self.on_status:
            status(text)

    def _announce_if_ready(self) -> None:
        if self._announced or self.current is None:
            return
        ready = [w for w in self.workers.values() if w.state == "ready"]
        if len(ready) < self.target:
            return
        self._announced = True
        for callback in self.on_ready:
            callback()

    def status(self) -> dict[str, Any]:
        workers = []
        for worker in sorted(self.workers.values(), key=lambda w: (w.slot, w.generation)):
            cell = self.scoreboard.read(worker.cell)
            memory = self.sampler.memory(worker.pid) if worker.pid else None
            workers.append(
                {
                    "id": worker.slot,
                    "pid": worker.pid,
                    "state": worker.state,
                    "generation": worker.generation,
                    "requests": cell.requests if cell.pid == worker.pid else 0,
                    "connections": cell.connections if cell.pid == worker.pid else 0,
                    "busy": cell.busy if cell.pid == worker.pid else None,  # utilisation: worker/busy.py
                    "restarts": self.book.slot(worker.slot).restarts,
                    "cpu_percent": self.sampler.cpu.get(worker.pid or -1, 0.0),
                    "memory_uss": memory.uss if memory else None,
                    "memory_pss": memory.pss if memory else None,
                    "memory_rss": memory.rss if memory else None,
                    "started_at": worker.started_at,
                    "ready_for": None if worker.ready_at is None else time.monotonic() - worker.ready_at,
                    "heartbeat_age": max(0.0, time.monotonic() - cell.heartbeat) if cell.pid == worker.pid else None,
                    "ready": cell.state is CellState.READY,
                }
            )
        templates = [
            {"generation": g.number, "pid": g.process.pid, "phase": g.phase.value, **self._memory_of(g.process.pid)}
            for g in self.generations.values()
        ]
        manager: dict[str, Any] = {"pid": os.getpid(), **self._memory_of(os.getpid())}
        tree = resources.tree_pss(os.getpid())
        listed = {p["pid"] for p in [manager, *templates, *workers]}
        return {
            "manager_pid": os.getpid(),
            "manager": manager,
            # the whole tree; "other" is what the app's processes started (not listed above)
            "memory_pss_total": sum(tree.values()),
            "memory_pss_other": sum(pss for pid, pss in tree.items() if pid not in listed),
            "generation": self.current.number if self.current else 0,
            "target_workers": self.target,
            "restarts": self.restarts,
            "crashes": self.book.crashes,
            "failed_starts": self.book.failed,
            "backoff": self.book.status(range(1, self.target + 1), time.monotonic()),
            "stopping": self.stopping,
            "templates": templates,
            "workers": workers,
            "certificates": self.certificate_status() if self.certificate_status else [],
            "autoscaler": self.autoscaler.status() if self.autoscaler else None,
        }

    def _memory_of(self, pid: int) -> dict[str, int | None]:
        memory = self.sampler.memory(pid)
        return {
            "memory_uss": memory.uss if memory else None,
            "memory_pss": memory.pss if memory else None,
            "memory_rss": memory.rss if memory else None,
        }

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Alive: this loop answers, and no serving worker's heartbeat is older than --timeout."""
        now = time.monotonic()
        stale = [
            worker.slot
            for worker in self.workers.values()
            if worker.pid
            and worker.state == "ready"
            and policy.is_hung(now, self.scoreboard.read(worker.cell).heartbeat, self.settings.timeout)
        ]
        return not stale, {"stale_workers": stale}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: at least one worker ready and the instance not draining."""
        ready = self.ready_workers()
        draining = self.stopping or self.draining_instance
        return ready > 0 and not draining, {"ready_workers": ready, "draining": draining}

    def reload_certificates(self) -> None:
        """New certificate material is in the state directory: every worker loads it for new handshakes."""
        for worker in self.workers.values():
            if worker.pid:
                _signal(worker.pid, RELOAD_CERTIFICATES)

    def ready_workers(self) -> int:
        return sum(1 for w in self.workers.values() if w.state == "ready")


def describe_status_code(code: int) -> str:
    """Popen.returncode in words (negative: killed by that signal)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _log_traceback(generation: Generation) -> None:
    if generation.boot_traceback:
        log.error("traceback of the failed start:\n%s", generation.boot_traceback.rstrip())
        generation.boot_traceback = ""


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
