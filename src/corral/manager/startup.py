"""The instance before its supervisor exists: the pre-start steps, then opening the sockets.

The control socket and the admin listener answer from the moment the instance owns its name, so this phase has
its own answers: `/livez` is alive, `/readyz` is not ready and says why, `status` shows the step running and for
how long, `stop` (and SIGTERM, SIGINT, SIGQUIT) kills the step's process group and ends the instance like any
other stop, `reload` and `scale` are refused with the reason. The steps run in a daemon thread (they block: a
subprocess, a lock); a stop that finds them waiting for another instance's lock does not wait for it (the lock
goes with the manager's descriptor or session).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from corral.manager.events import EventLog

if TYPE_CHECKING:
    from corral.options import Options
    from corral.prestart import Progress

log = logging.getLogger("corral")

STEP_END_GRACE = 10.0  # how long a stop waits for a killed step's guard and output (prestart.OUTPUT_GRACE is 5 s)


class Startup:
    def __init__(self, settings: Options, events: EventLog, workers: int, identity: dict[str, Any]) -> None:
        self.settings = settings
        self.events = events
        self.workers = workers
        self.identity = identity  # name and state directory, in every status
        self.stopping = False
        self.progress: Progress | None = None
        self._stop_requested = asyncio.Event()

    @property
    def phase(self) -> str:
        if self.stopping:
            return "stopping"
        return "prestart" if self.progress is not None else "starting"

    async def run_prestart(self) -> bool:
        """Run the pre-start steps; True if they succeeded (or there are none), False if a stop ended them.

        A failed step raises its CorralError (exit code 6)."""
        if not self.settings.prestart or self.stopping:
            return not self.stopping
        from corral.prestart import PrestartStopped, Progress, run_prestart

        loop = asyncio.get_running_loop()

        def note(message: str, fields: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(lambda: self.events.record("prestart", message, **fields))

        self.progress = Progress(len(self.settings.prestart), note)
        outcome: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                run_prestart(self.settings, progress=self.progress)
            except BaseException as exc:  # handed to the awaiting task, which raises it
                outcome.set_exception(exc)
            else:
                outcome.set_result(None)

        threading.Thread(target=run, name="prestart", daemon=True).start()
        steps = asyncio.wrap_future(outcome)
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait([steps, stop], return_when=asyncio.FIRST_COMPLETED)
            if not steps.done() and self.progress.snapshot()["waiting_for"] is None:
                await asyncio.wait({steps}, timeout=STEP_END_GRACE)  # a killed step's guard and output end soon
        finally:
            stop.cancel()
        if not steps.done():
            steps.cancel()  # still waiting for another instance's lock: not waited for
            return False
        try:
            steps.result()
        except PrestartStopped:
            return False
        finally:
            self.progress = None
        return not self.stopping

    def stop(self) -> None:
        """`corral stop`, SIGTERM, SIGINT, SIGQUIT before serving: nothing to drain, end the steps now."""
        if self.stopping:
            return
        self.stopping = True
        self.events.record("stop", "stopping", code=0)
        log.info("stopping%s", " the pre-start steps" if self.progress is not None else "")
        if self.progress is not None:
            self.progress.stop()
        self._stop_requested.set()

    def busy(self) -> str:
        """Why the instance cannot act yet, in a few words."""
        if self.stopping:
            return "corral is stopping"
        if self.progress is None:
            return "corral is starting: its workers are not started yet"
        now = self.progress.snapshot()
        if now["waiting_for"]:
            return f"the pre-start steps wait for the {now['waiting_for']} ({now['seconds']:.0f} s so far)"
        return (f"pre-start step {now['step']} of {now['steps']} is running ({now['seconds']:.0f} s so far); "
                "the workers start once the steps have succeeded")

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """`/livez` before the supervisor exists: this loop answers, and there is no worker to be stale."""
        return True, {"phase": self.phase, "stale_workers": []}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """`/readyz` before the supervisor exists: not ready, and why (a pre-start step running, say)."""
        return False, {"phase": self.phase, "ready_workers": 0, "draining": self.stopping, "reason": self.busy()}

    def refuse(self, action: str) -> str:
        return f"{action} refused: {self.busy()}"

    def status(self) -> dict[str, Any]:
        """`corral status` before the supervisor exists: the shape of the serving one, with no workers."""
        return {
            "phase": self.phase,
            "prestart": self.progress.snapshot() if self.progress is not None else None,
            "manager_pid": os.getpid(),
            "generation": 0,
            "target_workers": self.workers,
            "restarts": 0,
            "crashes": 0,
            "stopping": self.stopping,
            "workers": [],
            "templates": [],
            "pool": {"workers_ready": 0},
            **self.identity,
        }

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("cmd")
        if command == "status":
            return {"ok": True, **self.status()}
        if command == "events":
            return self.events.answer(request)
        if command == "stop":
            self.stop()
            return {"ok": True, "manager_pid": os.getpid()}
        if command == "reload":
            message = self.refuse("reload")
            self.events.record("reload", message, outcome="refused", cause=self.busy())
            return {"ok": False, "error": message}
        if command == "scale":
            return {"ok": False, "error": self.refuse("scale")}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def on_signal_reload(self) -> None:
        message = self.refuse("reload (SIGHUP)")
        self.events.record("reload", message, outcome="refused", cause=self.busy())
        log.warning("%s", message)

    def on_signal_scale(self) -> None:
        log.warning("%s", self.refuse("scale (SIGTTIN/SIGTTOU)"))
