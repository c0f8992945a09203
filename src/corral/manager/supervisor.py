"""The manager's loop: gather facts (channel messages, scoreboard, process figures), ask the policy, act.

It owns the generations (templates: start, promote, retire, replace a dead one), reads their channels, and
drives the pieces that each own one job: the worker slots (`pool`), deaths and the crash-loop verdict
(`crashes`, over the `restarts` book), recycling, scaling, reload requests (`reloads`) and `status_report`.
Its public methods (run, scale, reload, status, stop, request_stop, liveness, readiness, reload_certificates,
ready_workers) are what the rest of the manager calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral import channel
from corral.errors import ExitCode
from corral.heartbeat import TICK
from corral.manager import policy, resources, scaling, status_report
from corral.manager.crashes import Crashes, Fatal, describe_status_code
from corral.manager.events import EventLog
from corral.manager.generation import Generation, LaunchError, Phase, kill_orphans
from corral.manager.pool import Pool, Worker
from corral.manager.recycling import Recycler
from corral.manager.reloads import Reloads
from corral.manager.restarts import Restarts
from corral.options import Options
from corral.process import RELOAD_CERTIFICATES, describe_status
from corral.scoreboard import MAX_WORKERS, Scoreboard
from corral.shed_orders import ShedOrders
from corral.text import plural
from corral.worker.spec import TemplateSpec

if TYPE_CHECKING:
    from corral.manager.autoscaler import Autoscaler

log = logging.getLogger("corral")


class Supervisor:
    def __init__(
        self,
        settings: Options,
        spec: TemplateSpec,
        scoreboard: Scoreboard,
        target_workers: int,
        explicit_workers: bool,
        events: EventLog,
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.scoreboard = scoreboard
        self.target = target_workers
        self.explicit_workers = explicit_workers
        self.book = Restarts(policy.Backoff(maximum=settings.backoff_max), settings.crash_limit, settings.crash_window)
        self.generations: dict[int, Generation] = {}
        self.current: Generation | None = None
        self.restarts = 0
        self.started = False  # the first generation has proven itself
        self.stopping = False
        self.draining_instance = False
        self.exit_code: ExitCode | None = None
        self.fatal_message: str | None = None
        self.sampler = resources.ProcessSampler()
        self.events = events
        self.pool = Pool(settings, scoreboard, self.events)
        self.workers = self.pool.workers  # by scoreboard cell
        self.crashes = Crashes(self.book, self.pool, self.events, settings)
        self.recycler = Recycler(self.pool, self.sampler, settings, self.events)
        self.on_ready: list[Callable[[], object]] = []
        self.on_status: list[Callable[[str], object]] = []
        self.on_worker_forked = self.pool.on_worker_forked  # before the template is asked to fork
        self.on_worker_gone = self.pool.on_worker_gone
        self.reloading = Reloads(settings, self.events, self._generation_for_reload)
        self.reloads = self.reloading.counts  # done, refused
        self._wakeup = asyncio.Event()
        self._next_cpu_sample = 0.0
        self._stop_deadline: float | None = None
        self._announced = False
        self.certificate_status: Callable[[], list[dict[str, Any]]] | None = None
        self._generations_started = 0
        self.autoscaler: Autoscaler | None = None
        self.shed_orders = ShedOrders.create(scoreboard.fd) if settings.autoscale else None

    # --- the loop -------------------------------------------------------------------------------

    async def run(self) -> ExitCode:
        try:
            self._start_generation()
        except LaunchError as exc:
            self._fail(str(exc), exc.exit_code)
        while True:
            try:
                self._tick()
            except Fatal as fatal:
                self._fail(str(fatal), fatal.code)
            if self.stopping and not self.generations:  # all gone
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
        for generation in self.generations.values():
            generation.watch_import(now, self.settings.startup_timeout)
        self.pool.watchdog(now)
        self._enforce_deadlines(now)
        if now >= self._next_cpu_sample:
            self._next_cpu_sample = now + 1.0
            self.sampler.sample_cpu([w.pid for w in self.workers.values() if w.pid])
            kill_orphans(list(self.generations.values()))
        if not self.stopping:
            self.recycler.tick()
            if self.autoscaler is not None and self.started and self.autoscaler.due(now):
                self._autoscale(self.autoscaler, now)
            if self.current is not None and self.current.phase is Phase.CURRENT:
                scaling.reconcile(self.pool, self.book, self.target, self.current, now, self._fork)
                scaling.tend_spare(self.pool, self.book, self.current, self.target, now)
        self._retire_generations()

    def _autoscale(self, autoscaler: Autoscaler, now: float) -> None:
        from corral.manager.autoscaler import pool_facts  # imported with --autoscale only

        facts = pool_facts(now, self.target, self.workers.values(), self.scoreboard, self.generations.values(),
                           self.current)
        scaling.carry_out(autoscaler, autoscaler.decide(facts), now, self.target, self.scale, self.shed_orders)

    # --- generations ----------------------------------------------------------------------------

    def _start_generation(self) -> Generation:
        number = self._generations_started + 1  # never reused, even after a refused reload
        previous, self.spec.generation = self.spec.generation, number
        try:
            generation = Generation.start(self.spec)
        except LaunchError:
            self.spec.generation = previous  # the number stays free for the next start
            raise
        self._generations_started = number
        self.generations[number] = generation
        loop = asyncio.get_running_loop()
        loop.add_reader(generation.channel, self._on_readable, generation)
        log.debug("generation %d: template pid %d importing the app", number, generation.process.pid)
        return generation

    def reload(self) -> asyncio.Future[int]:
        """Start a rolling reload; the future ends with the new generation number or a RuntimeError."""
        return self.reloading.request(self.stopping)

    def _generation_for_reload(self) -> Generation:
        pending = [g for g in self.generations.values() if g.phase in (Phase.LOADING, Phase.PROVING)]
        return pending[0] if pending else self._start_generation()

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
            self.pool.promoted(self.workers.get(int(message.get("promoted", -1))), worker)  # the template's spare
            self._on_worker_exit(worker, int(message["status"]))

    def _on_loaded(self, generation: Generation) -> None:
        if generation.phase is not Phase.LOADING:
            return
        generation.phase = Phase.PROVING
        self._fork(1, generation)

    def _generation_failed(self, generation: Generation, cause: str) -> None:
        """A generation that cannot get one worker ready: fatal at start (`corral dev` waits for the next save),
        refused on reload."""
        generation.phase = Phase.FAILED
        generation.kill()
        for worker in self.pool.of_generation(generation.number):
            self.pool.forget(worker)
        fatal = None
        if not self.started and not self.settings.reload:  # (`corral dev` waits: the next save may fix it)
            fatal = Fatal(f"the app failed to start: {cause}", ExitCode.APP_FAILED_TO_START)
        elif self.started and self.current is None:  # its template died and no generation serves
            fatal = Fatal(f"a new template cannot start after the last one died: {cause}", ExitCode.CRASH_LOOP)
        if fatal is not None:
            self.fatal_message = str(fatal)
            log.error("%s", fatal)  # the one line first, then the traceback, once
            generation.log_traceback()
            raise fatal
        if self.current is None:
            log.error("the app failed to start: %s", cause)
        else:
            log.error("reload refused: generation %d failed to start: %s", generation.number, cause)
        generation.log_traceback()
        self.reloading.refused(generation, cause)
        if self.current is None:
            log.error("waiting for a change to the source")
        else:
            log.error("generation %d keeps serving", self.current.number)

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
            self.crashes.template_died(code)
            self.current = None
            try:
                replacement = self._start_generation()
            except LaunchError as exc:
                raise Fatal(f"a new template cannot start after the last one died: {exc}", ExitCode.CRASH_LOOP
                            ) from None
            replacement.reload_waiters.extend(generation.reload_waiters)

    def _drop_generation(self, generation: Generation) -> None:
        del self.generations[generation.number]
        asyncio.get_running_loop().remove_reader(generation.channel)
        generation.channel.close()
        for worker in self.pool.of_generation(generation.number):
            self.pool.forget(worker)

    def _retire_generations(self) -> None:
        for generation in list(self.generations.values()):
            has_workers = bool(self.pool.of_generation(generation.number))
            if (generation.phase in (Phase.RETIRING, Phase.FAILED) or self.stopping) and not has_workers:
                generation.ask_to_exit()
        current = self.current
        if self.reloading.finish(current, self.workers.values(), self.target) and current is not None:
            self._report(f"{plural(self.target, 'worker')}, generation {current.number}")

    # --- workers --------------------------------------------------------------------------------

    def _fork(self, slot: int, generation: Generation) -> Worker:
        self.book.slot(slot)
        return self.pool.fork(slot, generation)

    def _on_worker_ready(self, worker: Worker) -> None:
        if not self.pool.became_ready(worker):
            return
        generation = self.generations.get(worker.generation)
        if generation is not None and generation.phase is Phase.PROVING:
            self._promote(generation)
        self.pool.drain_replaced(worker.slot, self.current.number if self.current else None)
        self._announce_if_ready()

    def _on_worker_exit(self, worker: Worker, status: int) -> None:
        answered = self.pool.answered(worker)
        self.pool.forget(worker)
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
        self.restarts += 1
        self.crashes.worker_died(worker, status, what, answered)

    def _enforce_deadlines(self, now: float) -> None:
        self.pool.enforce_deadlines(now)
        if self._stop_deadline is not None and now >= self._stop_deadline:
            for generation in self.generations.values():
                generation.kill()

    # --- scale, memory budget -------------------------------------------------------------------

    def scale(self, target: int, by_autoscaler: bool = False) -> str:
        if target > MAX_WORKERS:
            raise ValueError(f"at most {MAX_WORKERS} workers per instance (asked for {target})")
        if self.autoscaler is not None and not by_autoscaler:
            self.autoscaler.check_manual(target)
        if target > self.target:
            plan = scaling.memory_plan(self.pool, self.sampler, self.current, target, explicit=True)
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

    def _plan_memory_at_start(self) -> None:
        plan = scaling.memory_plan(self.pool, self.sampler, self.current, self.target, self.explicit_workers)
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
        self.reloading.answer_stopping(self.generations.values())
        if not self.draining_instance:  # request_stop() has told already
            self._report("stopping")
        if not graceful:
            self.pool.signal_all(signal.SIGQUIT)
            for generation in self.generations.values():
                generation.kill()
            self._stop_deadline = time.monotonic()
            return
        for worker in list(self.workers.values()):
            self.pool.drain(worker, "stopping")
            if worker.pid is None:
                self.pool.forget(worker)
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
        return status_report.pool_status(
            self.pool, self.sampler, self.book, self.generations.values(),
            current=self.current, target=self.target, restarts=self.restarts, stopping=self.stopping,
            certificates=self.certificate_status() if self.certificate_status else [],
            autoscaler=self.autoscaler.status() if self.autoscaler else None,
        )

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Alive: this loop answers, and no serving worker's heartbeat is older than --timeout."""
        stale = status_report.stale_workers(self.pool, self.settings.timeout, time.monotonic())
        return not stale, {"stale_workers": stale}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: at least one worker ready and the instance not draining."""
        ready = self.ready_workers()
        draining = self.stopping or self.draining_instance
        return ready > 0 and not draining, {"ready_workers": ready, "draining": draining}

    def reload_certificates(self) -> None:
        """New certificate material is in the state directory: every worker loads it for new handshakes."""
        self.pool.signal_all(RELOAD_CERTIFICATES)

    def ready_workers(self) -> int:
        return self.pool.ready_workers()

