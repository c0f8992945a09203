"""A generation's template: a fresh interpreter that imports the app once and forks workers on request.

Started by the manager as `python -m corral.worker.template` with a TemplateSpec in the environment. It is a
plain blocking process (no event loop) so that every fork starts from a clean state.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import importlib
import logging
import os
import selectors
import signal
import socket
import sys
from typing import Any

from corral import channel, logs
from corral.discovery import AppLoadError, Target, app_interface, clip, import_app
from corral.metrics_shm import RequestFigures
from corral.options import Options
from corral.process import (
    DUMP_STACKS,
    become_subreaper,
    children,
    die_with_parent,
    kill_adopted,
    kill_group,
    release_free_memory,
    set_process_title,
)
from corral.scoreboard import Cell, CellState, Scoreboard
from corral.tls.plan import https_enabled
from corral.worker.serve import run_worker
from corral.worker.spec import ENV_VAR, TemplateSpec

log = logging.getLogger("corral.template")

TEMPLATE_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP}  # handled by the template; a worker has its own


class Template:
    def __init__(self, spec: TemplateSpec, settings: Options) -> None:
        self.spec = spec
        self.settings = settings
        self.channel = socket.socket(fileno=spec.channel_fd)
        self.app: Any = None
        self.children: dict[int, int] = {}  # pid -> scoreboard cell
        self.exiting = False
        self.own: set[int] = set()  # processes the app started while it was imported here: not orphans
        self.caught: set[int] = set()  # signals caught since the loop last looked
        self.wakeup_read, self.wakeup_write = os.pipe()
        self.spares: dict[int, int] = {}  # pid of a parked spare -> the write end of its promotion pipe
        self.scoreboard = Scoreboard(spec.scoreboard_fd)
        self.figures = RequestFigures(spec.scoreboard_fd)  # each cell's slot, for the spare that takes its place

    def load(self) -> bool:
        if not self.settings.preload:
            preload_websockets(self.settings)  # each worker tells the interface for itself
            channel.send(self.channel, {"ev": "loaded"})
            return True
        try:
            target = Target(self.spec.module, self.spec.attr, self.spec.path)
            self.app = import_app(target, self.settings.factory)
            interface = app_interface(self.app, self.settings.interface, target)
        except AppLoadError as exc:
            channel.send(self.channel, {"ev": "load_failed", "error": str(exc), "traceback": clip(exc.details)})
            return False
        if interface == "wsgi":
            import corral.worker.wsgi  # noqa: F401  # shared by the workers

            log.info("%s is a WSGI app: each worker runs it in %d threads", target, self.settings.threads)
        else:
            preload_websockets(self.settings)
        self.own = set(children())
        gc.collect()
        gc.freeze()  # keep the collector from writing to the shared pages of the preloaded app
        release_free_memory()  # what the import freed goes back to the kernel before the workers inherit it
        channel.send(self.channel, {"ev": "loaded"})
        return True

    def serve(self) -> None:
        os.set_blocking(self.wakeup_write, False)
        signal.set_wakeup_fd(self.wakeup_write)
        for sig in TEMPLATE_SIGNALS:
            signal.signal(sig, self._caught)
        # From now on the template outlives the manager long enough to take the app's processes with it:
        # SIGHUP on the manager's death (instead of SIGKILL) kills every worker, then the orphans they leave.
        die_with_parent(self.spec.manager_pid, signal.SIGHUP)
        selector = selectors.DefaultSelector()
        selector.register(self.channel, selectors.EVENT_READ)
        selector.register(self.wakeup_read, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj is self.channel:
                    self._receive()
                else:
                    os.read(self.wakeup_read, 4096)
            self._act_on_signals()
            self._reap()
            if self.exiting and not self.children and not self._orphans():
                return

    def _caught(self, signum: int, _frame: object) -> None:
        """Only note the signal: the loop acts on it, so that no handler runs in the middle of a fork, a reap
        or a kill (the manager's death arrives twice, as SIGHUP and as the channel's end)."""
        self.caught.add(signum)

    def _act_on_signals(self) -> None:
        caught, self.caught = self.caught, set()
        if signal.SIGHUP in caught and os.getppid() != self.spec.manager_pid:  # not a reload meant for the manager
            self._manager_gone()
        elif signal.SIGTERM in caught:
            self._begin_exit()

    def _receive(self) -> None:
        try:
            data = self.channel.recv(channel.MAX_MESSAGE)
        except OSError:
            data = b""
        if not data:  # the manager is gone: nobody supervises the workers any more
            self._manager_gone()
            return
        message = channel.decode(data)
        if message["op"] == "fork" and not self.exiting:
            self._fork(int(message["cell"]), spare=bool(message.get("spare")))
        elif message["op"] == "exit":
            self._begin_exit()

    def _manager_gone(self) -> None:
        """Nobody will sweep after us: the workers' groups go, and what the app started during its import."""
        self.exiting = True
        for pid in self.children:
            kill_group(pid)
        for pid in self.own:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.own.clear()  # now orphans like any other, reaped and swept

    def _orphans(self) -> bool:
        """Kill what the app's processes left behind: any child of ours that is not a worker is an orphan of a
        worker that ended (a live worker is the subreaper of its own descendants). True while some remain."""
        return kill_adopted(set(self.children) | self.own) > 0 or any(
            pid not in self.children and pid not in self.own for pid in children()
        )

    def _begin_exit(self) -> None:
        self.exiting = True
        for pid in self.children:
            os.kill(pid, signal.SIGTERM)

    def _fork(self, cell: int, spare: bool = False) -> None:
        """Fork a worker into `cell`; a spare parks until `_reap` promotes it (worker/parking.py)."""
        park = os.pipe() if spare else None
        template_pid = os.getpid()
        # Blocked across the fork: a SIGTERM the template sends right away (an `exit` read just after this fork)
        # reaches the child only once its handler is the default one; it would else be noted by the template's
        # handler in the child, and lost, leaving a worker that never ends.
        signal.pthread_sigmask(signal.SIG_BLOCK, TEMPLATE_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker(cell, park, template_pid)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, TEMPLATE_SIGNALS)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also here, so that no kill of the group can come before the child's own call
        self.children[pid] = cell
        if park is not None:
            os.close(park[0])
            self.spares[pid] = park[1]
        channel.send(self.channel, {"ev": "forked", "cell": cell, "pid": pid})

    def _become_worker(self, cell: int, park: tuple[int, int] | None, template_pid: int) -> None:
        """The child's side of `_fork`, with the template's signals still blocked; never returns."""
        signal.set_wakeup_fd(-1)
        for sig in TEMPLATE_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, TEMPLATE_SIGNALS)  # a SIGTERM sent meanwhile ends it now
        for fd in (self.wakeup_read, self.wakeup_write, *self.spares.values(), *(park[1:] if park else ())):
            os.close(fd)
        os.setpgid(0, 0)  # the worker's group: killed as a whole when the worker ends
        become_subreaper()  # the app's orphans stay below this worker while it lives
        die_with_parent(template_pid)
        set_process_title(f"corral-w{self.spec.generation}")
        run_worker(self.spec, self.settings, self.app, cell, self.channel, park[0] if park else None)

    def _reap(self) -> None:
        """Collect ended workers and orphans, by pid: a child the app started while it was imported here keeps
        its status for whoever waits for it. A worker's end takes its process group and its orphans."""
        ended = False
        orphans = [pid for pid in children() if pid not in self.children and pid not in self.own]
        for pid in [*self.children, *orphans]:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self.children.pop(pid, None)
                continue
            if done == 0:
                continue
            cell = self.children.pop(pid, None)
            if cell is not None:
                spare = self._spare_for(pid, cell, status)
                ended = True
                kill_group(pid)
                promoted = {"promoted": spare[0]} if spare else {}
                with contextlib.suppress(OSError):
                    channel.send(self.channel, {"ev": "exited", "cell": cell, "pid": pid, "status": status, **promoted})
                if spare:  # after the message: the manager knows the spare's new place before it can say `ready`
                    with contextlib.suppress(OSError):  # a spare that died meanwhile: its own exit follows
                        os.write(spare[1], str(self.figures.slot(cell)).encode())
                    os.close(spare[1])
        if ended:
            self._orphans()


    def _spare_for(self, pid: int, cell: int, status: int) -> tuple[int, int] | None:
        """The manager's standing order, while it keeps spares: a worker that dies on its own after answering a
        request is replaced by the spare at once. Returns the spare's cell and pipe, or None."""
        own = self.spares.pop(pid, None)
        if own is not None:  # a spare ended (stopped by the manager, or died)
            os.close(own)
            return None
        if self.exiting or not self.spares or not serving_crash(self.scoreboard.read(cell), pid, status):
            return None
        spare_pid = next(iter(self.spares))  # the oldest: the likeliest to have parked already
        return self.children[spare_pid], self.spares.pop(spare_pid)


def serving_crash(cell: Cell, pid: int, status: int) -> bool:
    """The condition of the standing order: the worker had answered a request (its cell's count: the first proof
    of `manager/policy.proved`, which the manager applies to the same death), was not draining, and did not end
    cleanly (a drained or stopped worker exits with 0)."""
    clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return cell.pid == pid and cell.requests > 0 and cell.state is not CellState.DRAINING and not clean


def preload_server_modules(settings: Options) -> None:
    """Import what a worker would import later (event loop, protocols, TLS), so that workers share it, and
    before privileges are dropped, so that the service user needs no access to where Corral is installed."""
    import uvicorn

    config = uvicorn.Config(lambda *_: None, http=settings.http, log_config=None)
    config.get_loop_factory()
    names = ["uvicorn.lifespan.on", "uvicorn.lifespan.off"]
    # The HTTP protocol the workers run: Corral's, or uvicorn's (only then its modules and h11)
    names.append("corral.worker.http.protocol" if settings.http == "auto" else "corral.worker.uvicorn_http")
    if https_enabled(settings) or settings.hsts or settings.forwarded_allow_ips or settings.proxy_protocol:
        names += ["corral.tls.http_app", "corral.tls.store", "corral.tls.worker"]
    if settings.http2:  # h2 itself only for ALPN; on plain listeners a worker imports it at its first h2c
        names.append("corral.worker.http2.protocol" if https_enabled(settings) else "corral.worker.http2")
    _import_all(names)


def preload_websockets(settings: Options) -> None:
    """The WebSocket protocol's modules, for workers that may serve an ASGI app: a WSGI app's workers take no
    WebSocket and do without them (about 1.7 MiB of the template)."""
    names = ["uvicorn.protocols.websockets.auto"]
    ws_module = {"websockets": "websockets_impl", "websockets-sansio": "websockets_sansio_impl",
                 "wsproto": "wsproto_impl"}  # fmt: skip
    if settings.ws in ws_module:
        names.append(f"uvicorn.protocols.websockets.{ws_module[settings.ws]}")
    _import_all(names)


def _import_all(names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def main() -> None:
    spec = TemplateSpec.loads(os.environ.pop(ENV_VAR))
    die_with_parent(spec.manager_pid)  # SIGKILL while importing: the app's code may block any signal handler
    become_subreaper()
    set_process_title(f"corral-t{spec.generation}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.register(DUMP_STACKS, all_threads=True, chain=False)  # where an import is stuck, when asked
    settings = Options(**spec.settings)
    logs.configure_from(settings, f"template {spec.generation}", generation=spec.generation)
    preload_server_modules(settings)
    if settings.user or settings.group:
        from corral.privileges import drop_privileges

        preload_websockets(settings)  # the app's interface is not known yet, and the service user may not read them

        drop_privileges(settings.user, settings.group)
    template = Template(spec, settings)
    if not template.load():
        sys.exit(3)
    template.serve()


if __name__ == "__main__":
    main()
