"""A worker: uvicorn's Server on the inherited sockets, a heartbeat from the event loop, and a careful drain.

This runs in a freshly forked child of the template and never returns: it ends with os._exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from corral import channel, logs
from corral.discovery import AppLoadError, Target, app_interface, clip, format_traceback, import_app
from corral.errors import ExitCode
from corral.heartbeat import heartbeat_interval
from corral.metrics_shm import RequestFigures
from corral.options import Options
from corral.process import DUMP_STACKS, RELOAD_CERTIFICATES
from corral.scoreboard import Cell, CellState, Scoreboard
from corral.shed_orders import ShedOrders
from corral.tls.plan import https_enabled, https_port
from corral.worker import metrics
from corral.worker.busy import WorkerLoad
from corral.worker.first_answer import stamp_on_first_answer
from corral.worker.http import protocol_class
from corral.worker.http.limits import Limits
from corral.worker.metrics import Logged, count_requests
from corral.worker.parking import wait_for_promotion
from corral.worker.protocols import ARRIVAL_WAIT, DrainState, _Draining
from corral.worker.shedding import Orders
from corral.worker.spec import TemplateSpec
from corral.worker.stall import StallRecorder
from corral.worker.task_dump import dump_tasks_too

if TYPE_CHECKING:
    from corral.tls.worker import WorkerTLS
    from corral.worker.wsgi import WSGIApp

log = logging.getLogger("corral.worker")


class WorkerServer(uvicorn.Server):
    """uvicorn's Server with Corral's signals and drain; the manager decides when a worker stops."""

    drain_grace = 2.0
    on_started: Callable[[], None] = staticmethod(lambda: None)
    server_state: DrainState

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.server_state = DrainState()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.begin_drain)
        yield

    def begin_drain(self) -> None:
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = self.server_state
        state.drain_grace = self.drain_grace  # a connection handed to the protocol from now on drains at once
        for server in self.servers:
            server.close()
        await asyncio.sleep(0)  # a connection accepted just before has its connection_made queued: let it run
        connections = list(state.connections)
        others = [c for c in connections if not isinstance(c, _Draining)]
        for connection in connections:
            if isinstance(connection, _Draining):
                connection.drain(self.drain_grace)
        if others:
            await self._wait(lambda: any(c in state.connections for c in others), self.drain_grace)
            for connection in others:
                if connection in state.connections:
                    connection.shutdown()
        await self._wait(state.still_arriving, ARRIVAL_WAIT)
        state.close_arriving()
        await self._wait(lambda: bool(state.connections or state.tasks), None)
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _wait(self, pending: Callable[[], bool], limit: float | None) -> None:
        deadline = None if limit is None else time.monotonic() + limit
        while pending() and not self.force_exit:
            if deadline is not None and time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.05)


class StartupErrors(logging.Filter):
    """Holds back uvicorn's startup error logs so the manager can print the cause once, in one line."""

    def __init__(self) -> None:
        super().__init__()
        self.cause: str | None = None
        self.traceback = ""  # the full one, sent beside the cause: the manager prints it once

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            frames = traceback.extract_tb(exc.__traceback__)
            where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
            self.cause = f"{type(exc).__name__}: {exc}{where}"
            self.traceback = format_traceback(exc)
        elif self.cause is None:
            message = record.getMessage()
            self.cause = _summarise(message)
            if "Traceback (most recent call last)" in message:
                self.traceback = message
        return False


def _summarise(message: str) -> str:
    """A formatted traceback (Starlette sends one in lifespan.startup.failed) as its last line and location."""
    if "Traceback (most recent call last)" not in message:
        return message
    lines = [line for line in message.strip().splitlines() if line.strip()]
    frames = [line.strip() for line in lines if line.strip().startswith('File "')]
    where = ""
    if frames:
        filename, _, rest = frames[-1].removeprefix('File "').partition('", line ')
        where = f" ({filename}, line {rest.split(',')[0]})"
    return f"{lines[-1].strip()}{where}"


def header_pairs(value: list[str]) -> list[tuple[str, str]]:
    """--header NAME:VALUE as (name, value) (checked when the options were read)."""
    return [(name.strip(), text.strip()) for name, _, text in (item.partition(":") for item in value)]


def with_root_path(app: Any, root_path: str) -> Any:
    """--root-path: the prefix a proxy serves the app under, in the scope as uvicorn puts it (`root_path`, and
    `path` starting with it), whatever the HTTP or WebSocket protocol."""
    prefix = root_path.encode("ascii", "replace")

    async def rooted(scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "root_path": root_path + scope.get("root_path", ""),
                     "path": root_path + scope["path"], "raw_path": prefix + scope.get("raw_path", b"")}
        return await app(scope, receive, send)

    return rooted


def run_worker(
    spec: TemplateSpec, settings: Options, app: Any, cell: int, channel_sock: socket.socket, park: int | None = None
) -> None:
    """Body of a forked worker; ends the process. `park`: a spare's end of its promotion pipe (`worker/parking.py`)."""
    code: int = ExitCode.ERROR
    try:
        code = _serve(spec, settings, app, cell, channel_sock, park)
    except BaseException:
        log.exception("the worker stopped on an unexpected error")
    finally:
        metrics.publish(0)  # the requests counted since the last heartbeat (nothing if metrics are off)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))


def _https_layer(
    spec: TemplateSpec, settings: Options, app: Any
) -> tuple[Any, type[asyncio.Protocol], list[socket.socket], WorkerTLS | None]:
    """The app and HTTP protocol as served: TLS routing, the plain-HTTP listener, HSTS, proxy headers.

    The TLS modules are imported only when one of these is on, so a plain-HTTP worker does not carry them.
    """
    plain = [socket.socket(fileno=listener.fd) for listener in spec.listeners if listener.role == "http"]
    limits = Limits(
        settings.max_request_line, settings.max_request_head, settings.max_headers, settings.header_timeout
    )
    h2_class = None
    if settings.http2:
        from corral.worker.http2 import enable

        h2_class = enable(settings, tls=https_enabled(settings))
    if not (https_enabled(settings) or settings.hsts or settings.forwarded_allow_ips or settings.proxy_protocol):
        return app, protocol_class(settings.http, limits), plain, None
    from corral.tls.http_app import wrap_app
    from corral.tls.store import Store
    from corral.tls.worker import WorkerTLS, router_class

    state_dir = Path(spec.state_dir) if spec.state_dir else None
    tls = WorkerTLS.from_settings(settings, state_dir) if state_dir and https_enabled(settings) else None
    if tls is not None or settings.hsts or settings.forwarded_allow_ips:
        app = wrap_app(
            app,
            https=tls is not None,
            hsts=settings.hsts,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            store=Store(state_dir) if tls is not None and state_dir else None,
            https_port=https_port(settings),
        )
    http_class = protocol_class(settings.http, limits)
    if tls is not None:
        http_class = tls.protocol_class(http_class, plain, h2_class)
    elif settings.proxy_protocol:
        http_class = router_class(http_class, None, [], True)
    return app, http_class, plain, tls


def _quit(*_: object) -> None:
    metrics.publish(0)  # the requests counted since the last heartbeat
    os._exit(0)


def lower_priority(levels: int) -> None:
    """--worker-nice: the worker's process group (its threads, and the app's processes) that many nice levels below
    the template's, which needs no privilege."""
    if levels:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PGRP, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + levels))


def _serve(
    spec: TemplateSpec, settings: Options, app: Any, cell: int, channel_sock: socket.socket, park: int | None
) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the manager, which drains us
    signal.signal(signal.SIGQUIT, _quit)
    signal.signal(signal.SIGHUP, lambda *_: None)  # a reload meant for the manager (`pkill -HUP corral`)
    faulthandler.register(DUMP_STACKS, all_threads=True, chain=False)
    scoreboard = Scoreboard(spec.scoreboard_fd)
    pid = os.getpid()
    started_at = time.time()
    state = CellState.IMPORTING if app is None else CellState.STARTING
    scoreboard.write(cell, Cell(pid, spec.generation, state, time.monotonic(), started_at, 0, 0))

    def report(event: str, **fields: Any) -> None:
        with contextlib.suppress(OSError):
            channel.send(channel_sock, {"ev": event, "cell": cell, "pid": pid, **fields})

    target = Target(spec.module, spec.attr, spec.path)
    wsgi: WSGIApp | None = None
    try:
        if app is None:
            app = import_app(target, settings.factory)
        if app_interface(app, settings.interface, target) == "wsgi":
            from corral.worker.wsgi import WSGIApp

            app = wsgi = WSGIApp(app, settings.threads)
            if not settings.preload:  # else the template said it
                log.info("%s is a WSGI app: this worker runs it in %d threads", target, settings.threads)
    except AppLoadError as exc:
        report("boot_failed", error=str(exc), traceback=clip(exc.details))
        return ExitCode.APP_FAILED_TO_START

    if park is None:
        lower_priority(settings.worker_nice)
    app, http_class, plain_sockets, tls = _https_layer(spec, settings, app)
    figures = RequestFigures(spec.scoreboard_fd)
    logs.reconfigure(f"worker {figures.slot(cell)}", worker=figures.slot(cell))
    if settings.metrics:
        count_requests(figures, cell)
    if settings.root_path:
        app = with_root_path(app, settings.root_path)
    logged = Logged(app, figures.slot(cell)) if settings.access_log else None
    app = logged or app
    config = uvicorn.Config(
        app,
        http=http_class,
        lifespan=settings.lifespan,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's lines go through Corral's format (corral.logs)
        access_log=False,  # Corral's own access log (worker id, status, bytes, latency): corral.worker.metrics
        timeout_keep_alive=settings.keep_alive,  # type: ignore[arg-type] # annotated int; only given to call_later
        timeout_graceful_shutdown=None,
        proxy_headers=False,  # the Forwarded/X-Forwarded-* handling lives in corral.tls.http_app
        server_header=False,  # Corral's own `Server: corral`, with --server-header
        headers=[("server", "corral")] * settings.server_header + header_pairs(settings.header),
        date_header=settings.date_header,
        limit_concurrency=settings.limit_concurrency,
        backlog=settings.backlog,  # the loop's create_server listens again with it
        ws=settings.ws if wsgi is None else "none",  # WSGI has no WebSocket: an upgrade request is a plain request
        ws_max_size=settings.ws_max_size,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        ws_per_message_deflate=settings.ws_per_message_deflate,
    )
    if settings.log_level != "debug":
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    startup_errors = StartupErrors()
    logging.getLogger("uvicorn.error").addFilter(startup_errors)
    server = WorkerServer(config)
    server.drain_grace = min(2.0, settings.keep_alive)
    sockets = [socket.socket(fileno=listener.fd) for listener in spec.listeners if listener.role == "app"]
    sockets += plain_sockets
    interval = heartbeat_interval(settings.timeout, request_limit=settings.max_requests is not None)
    load = WorkerLoad()  # the loop runs in this thread
    stall = StallRecorder(settings.timeout)
    orders = Orders(ShedOrders(spec.scoreboard_fd), cell) if settings.autoscale else None  # the autoscaler balances

    def stamp() -> None:
        state = CellState.DRAINING if server.should_exit else CellState.READY if server.started else CellState.STARTING
        connections = len(server.server_state.connections)
        requests = server.server_state.total_requests
        busy = load.sample()
        if settings.metrics:
            metrics.publish(len(server.server_state.tasks))
        heartbeat = time.monotonic() if wsgi is None else stuck_since(wsgi)
        scoreboard.write(cell, Cell(pid, spec.generation, state, heartbeat, started_at, requests, connections, busy))
        stall.arm()
        if orders is not None:
            orders.poll(time.monotonic())

    stamp_on_first_answer(stamp)

    def stuck_since(wsgi: WSGIApp) -> float:
        """The heartbeat of a WSGI worker: the start of a request stuck past --timeout, if any, so that the
        manager's watchdog replaces the worker as hung; its thread's stack is logged and kept for the manager."""
        stuck = wsgi.stuck(settings.timeout)
        if stuck is None:
            return time.monotonic()
        ident, since = stuck
        if ident not in wsgi.reported:
            from corral.worker.wsgi import thread_stack

            wsgi.reported.add(ident)
            text, frames = thread_stack(ident)
            stall.record_thread(ident, frames)
            log.error("a request has sent nothing for %.1f s in thread %#x, more than --timeout %g s: the worker "
                      "will be replaced; the thread's stack:\n%s", time.monotonic() - since, ident, settings.timeout,
                      text)
        return since

    def started() -> None:
        logging.getLogger("uvicorn.error").removeFilter(startup_errors)
        # in the server's task: AnyIO's thread limiter is per loop
        load.threadpool.start(None if wsgi is None else wsgi.occupancy)
        stamp()
        report("ready")

    server.on_started = started

    async def heartbeat() -> None:
        while True:
            stamp()
            await asyncio.sleep(interval)

    stopped_parked: list[bool] = []  # a spare told to stop before it served

    async def main() -> None:
        loop = asyncio.get_running_loop()
        dump_tasks_too(loop)
        if tls is not None:
            loop.add_signal_handler(RELOAD_CERTIFICATES, tls.reload)
        beat = asyncio.create_task(heartbeat())
        try:
            if park is not None:  # a spare: all is ready but the app's lifespan startup and the listeners
                config.load()
                slot = await wait_for_promotion(park, server.begin_drain)
                if slot is None:
                    stopped_parked.append(True)
                    return
                lower_priority(settings.worker_nice)  # parked, it kept the template's: woken without a wait
                figures.set_slot(cell, slot)  # the slot it now fills: the next spare takes it from here
                logs.reconfigure(f"worker {slot}", worker=slot)
                if logged is not None:
                    logged.worker = slot
            await server.serve(sockets=sockets)
        finally:
            beat.cancel()

    loop_factory = config.get_loop_factory()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())
    except SystemExit as exc:
        if not server.started:
            report("boot_failed", error=startup_errors.cause or "lifespan startup failed",
                   traceback=clip(startup_errors.traceback))
            return ExitCode.APP_FAILED_TO_START
        return int(exc.code or 0) if isinstance(exc.code, int) else ExitCode.ERROR
    if stopped_parked:
        return ExitCode.OK
    if not server.started:
        report("boot_failed", error=startup_errors.cause or "the server did not start",
               traceback=clip(startup_errors.traceback))
        return ExitCode.APP_FAILED_TO_START
    return ExitCode.OK
