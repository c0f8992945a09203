"""Rolling reloads as `corral reload` sees them: the request (the pre-start steps first, with
--prestart-on-reload), the answer once the new generation serves in every slot, the refusal when it cannot
start, and "corral is stopping". Starting, promoting and retiring the generations is the supervisor's job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from corral.errors import CorralError
from corral.manager.events import EventLog
from corral.manager.generation import Generation, LaunchError
from corral.manager.pool import Worker
from corral.options import Options

log = logging.getLogger("corral")


class Reloads:
    def __init__(self, settings: Options, events: EventLog, generation: Callable[[], Generation]) -> None:
        self.settings = settings
        self.events = events
        self._generation = generation  # the generation a reload waits for: one starting already, or a new one
        self.counts = {"done": 0, "refused": 0}
        # Reloads whose pre-start steps run (--prestart-on-reload): their answer, and the task that holds it.
        self.in_prestart: dict[asyncio.Future[int], asyncio.Task[None]] = {}

    def request(self, stopping: bool) -> asyncio.Future[int]:
        """Start a rolling reload; the future ends with the new generation number or a RuntimeError."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if stopping:
            future.set_exception(RuntimeError("corral is stopping"))
        elif self.settings.prestart and self.settings.prestart_on_reload:
            self.in_prestart[future] = asyncio.create_task(self._prestart_then_reload(future))
        else:
            self._begin(future)
        return future

    async def _prestart_then_reload(self, future: asyncio.Future[int]) -> None:
        from corral.prestart import run_prestart_for_reload

        try:
            await run_prestart_for_reload(self.settings)
        except CorralError as exc:
            if not future.done():
                log.error("reload refused: %s", exc)
                self.counts["refused"] += 1
                future.set_exception(RuntimeError(str(exc)))
            return
        finally:
            self.in_prestart.pop(future, None)
        if not future.done():  # stop() answers the reloads whose steps were still running
            self._begin(future)

    def _begin(self, future: asyncio.Future[int]) -> None:
        try:
            generation = self._generation()
        except LaunchError as exc:
            log.error("reload refused: %s; the current generation keeps serving", exc)
            self.counts["refused"] += 1
            self.events.record("reload", f"reload refused: {exc}", outcome="refused", cause=str(exc))
            future.set_exception(RuntimeError(str(exc)))
            return
        generation.reload_waiters.append(future)
        log.info("reload: generation %d is starting", generation.number)
        self.events.record("reload", f"reload started: generation {generation.number}", generation=generation.number)

    def refused(self, generation: Generation, cause: str) -> None:
        """The generation a reload started cannot get a worker ready: its callers get the cause."""
        self.counts["refused"] += 1
        self.events.record("reload", f"reload refused: generation {generation.number} failed to start: {cause}",
                           generation=generation.number, outcome="refused", cause=cause)
        for waiter in generation.reload_waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError(f"the new code failed to start: {cause}"))

    def finish(self, current: Generation | None, workers: Iterable[Worker], target: int) -> bool:
        """Answer the reloads waiting for `current` once it is ready in every slot and no older worker is left."""
        if current is None or not current.reload_waiters:
            return False
        workers = list(workers)
        older = any(w.generation != current.number for w in workers)
        ready = {w.slot for w in workers if w.generation == current.number and w.state == "ready"}
        if older or not all(slot in ready for slot in range(1, target + 1)):
            return False
        for waiter in current.reload_waiters:
            if not waiter.done():
                waiter.set_result(current.number)
        current.reload_waiters.clear()
        self.counts["done"] += 1
        log.info("reload finished: generation %d serves with %d workers", current.number, target)
        self.events.record("reload", f"reload finished: generation {current.number} serves",
                           generation=current.number, outcome="finished")
        return True

    def answer_stopping(self, generations: Iterable[Generation]) -> None:
        """Every waiting `corral reload` gets its answer now: corral is stopping."""
        waiting = [*self.in_prestart]
        for generation in generations:
            waiting += generation.reload_waiters
            generation.reload_waiters.clear()
        for waiter in waiting:
            if not waiter.done():
                waiter.set_exception(RuntimeError("corral is stopping"))
