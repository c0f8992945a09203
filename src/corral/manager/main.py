"""`corral run`: check the input, bind the sockets, start the supervisor, and turn its end into an exit code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from corral import logs
from corral.binds import Bind, open_socket, parse_admin_bind, parse_bind, systemd_sockets
from corral.control_client import default_control_path
from corral.discovery import Target, resolve_target
from corral.errors import ConfigError, CorralError, ExitCode
from corral.manager import admin as admin_http
from corral.manager import connections, control, policy, resources
from corral.manager.admin_routes import AdminRoutes
from corral.manager.banner import print_banner
from corral.manager.events import FINAL, EventLog
from corral.manager.metrics import AppMetricsDirectory, PoolMetrics
from corral.manager.overview import pool_totals
from corral.manager.sd_notify import Notifier
from corral.manager.startup import Startup
from corral.manager.supervisor import Supervisor
from corral.metrics_shm import RequestFigures
from corral.options import Options
from corral.process import MANAGER_SIGNALS, release_free_memory
from corral.scoreboard import Scoreboard
from corral.text import plural
from corral.tls.plan import http_binds, https_enabled
from corral.worker.spec import ListenerSpec, TemplateSpec

log = logging.getLogger("corral")
INTERRUPTED = 130  # 128 + SIGINT


def setup_logging(level: str, log_format: str = "text") -> None:
    logs.configure(log_format, level, "corral")


def worker_count(settings: Options) -> tuple[int, bool]:
    """The number of workers and whether the user chose it (an explicit count is never lowered).

    With --autoscale, --workers is the starting size, clamped to the range (the minimum for auto)."""
    if settings.autoscale:
        limits = autoscale_limits(settings)
        return policy.autoscale_start(None if settings.workers == "auto" else int(settings.workers), limits), False
    if settings.workers == "auto":
        return policy.auto_workers(resources.cpu_count(), resources.cgroup_cpu_quota()), False
    return int(settings.workers), True


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{rest:02d}s" if hours else f"{minutes}m{rest:02d}s"


def autoscale_limits(settings: Options) -> policy.AutoscaleLimits:
    return policy.parse_autoscale(settings.autoscale or "", settings.target_utilisation, settings.autoscale_cooldown)


def run(settings: Options) -> int:
    if settings.log_config:
        from corral import paths

        paths.check_readable_file("--log-config", settings.log_config)
    logs.configure_from(settings, "corral")
    notifier = Notifier.from_environ()  # taken out of the environment: children must not speak for us
    before, after = connections.raise_fd_limit()
    if after != before:
        log.debug("open files limit raised from %d to %d", before, after)
    target = resolve_target(settings.app, settings.app_dir, Path.cwd())
    for name in ("CORRAL_ADMIN_TOKEN", "CORRAL_PRESTART_LOCK"):
        os.environ.pop(name, None)  # read already; the app's processes inherit this environment
    if settings.admin_bind:
        from corral.manager.admin_access import load_token

        load_token(settings)  # an unreadable token file stops the start here, in one line
    state_dir = _state_dir(settings)
    _check_startup(settings, state_dir)
    control_path = Path(settings.control) if settings.control else default_control_path(settings.name)
    control_socket = control.claim_path(control_path, default=not settings.control)
    opened: list[tuple[socket.socket, Bind | None]] = [(control_socket, None)]  # to close (and unlink) at the end
    try:
        return asyncio.run(_run(settings, target, opened, control_path, control_socket, state_dir, notifier))
    finally:
        for sock, bind in opened:
            sock.close()
            if bind is not None and bind.kind == "unix":
                with contextlib.suppress(OSError):
                    os.unlink(bind.path)
        with contextlib.suppress(OSError):
            control_path.unlink()


async def _run(
    settings: Options,
    target: Target,
    opened: list[tuple[socket.socket, Bind | None]],
    control_path: Path,
    control_socket: socket.socket,
    state_dir: Path | None,
    notifier: Notifier,
) -> int:
    """The instance from the moment it owns its name: the control socket answers, signals stop it, through the
    pre-start steps and the serving; its end is the final event and the final log line."""
    started = time.monotonic()
    events = EventLog()
    identity = {"name": settings.name, "state_dir": str(state_dir) if state_dir else None}
    startup = Startup(settings, events, worker_count(settings)[0], identity)
    handlers: list[control.Handler] = [startup.handle]  # the supervisor's, once it exists
    server = await control.serve(control_socket, lambda request: handlers[-1](request), events.follow)
    admin = AdminRoutes(settings, startup, lambda request: handlers[-1](request), time.time())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        loop.add_signal_handler(signum, startup.stop)
    loop.add_signal_handler(signal.SIGHUP, startup.on_signal_reload)
    for signum in (signal.SIGTTIN, signal.SIGTTOU):
        loop.add_signal_handler(signum, startup.on_signal_scale)
    # Blocked since `corral run` exec'd the manager (entry.py): one that came meanwhile is handled now. Before any
    # thread or child exists, as they would inherit the mask.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, MANAGER_SIGNALS)
    try:
        code: int = ExitCode.OK
        if settings.admin_bind:  # the probes answer during the pre-start steps too: alive, not ready
            admin.socket = _open(parse_admin_bind(settings.admin_bind), opened)[0]
            admin.socket.set_inheritable(False)  # answered by the manager itself, never by a worker
            admin.server = await admin_http.serve(admin.socket, admin.routes())
        if await startup.run_prestart():
            listeners = _open_listeners(settings, opened)
            plain = [_open(parse_bind(text), opened) for text in http_binds(settings)]
            release_free_memory()  # the manager's imports are done; it runs as long as the service
            code = await _serve(settings, target, listeners, plain, admin, control_path, state_dir, notifier,
                                startup, handlers)
    except CorralError as exc:
        events.record(FINAL, f"not started: {exc}; exit code {int(exc.exit_code)}", code=int(exc.exit_code))
        raise
    else:
        message = f"stopped after {_duration(time.monotonic() - started)}, exit code {code}"
        events.record(FINAL, message, code=code)
        log.info("%s", message)
        return code
    finally:
        notifier.close()
        await admin.close()
        await server.shutdown()  # answers being written (a reload's "corral is stopping", the final event) go out


def _check_startup(settings: Options, state_dir: Path | None) -> None:
    """Everything that can be checked before a process is started: one line and exit 2 for what is wrong."""
    from corral import paths
    from corral.privileges import check_owner, resolve_owner

    check_owner(settings.user, settings.group)
    paths.check_directory("--app-dir", settings.app_dir)
    paths.check_readable_file("--certfile", settings.certfile)
    paths.check_readable_file("--keyfile", settings.keyfile)
    paths.check_readable_file("--acme-ca-bundle", settings.acme_ca_bundle)
    paths.check_readable_file("--ssl-ca-certs", settings.ssl_ca_certs)
    for directory in settings.reload_dir:
        paths.check_directory("--reload-dir", directory)
    if settings.ssl_ca_certs and not https_enabled(settings):
        raise ConfigError("--ssl-ca-certs needs HTTPS (--https or --certfile): it asks HTTPS clients for a certificate")
    if state_dir is not None:
        paths.check_state_dir(state_dir, owner=resolve_owner(settings.user, settings.group))


def _open(
    bind: Bind, opened: list[tuple[socket.socket, Bind | None]], backlog: int = 2048
) -> tuple[socket.socket, Bind | None]:
    entry: tuple[socket.socket, Bind | None] = (open_socket(bind, backlog), bind)
    opened.append(entry)
    return entry


def _state_dir(settings: Options) -> Path | None:
    """Only HTTPS keeps state; its modules (cryptography, acme) are imported only when it is on."""
    if settings.state_dir:
        return Path(settings.state_dir)
    if not https_enabled(settings):
        return None
    from corral.tls.store import default_state_dir

    return default_state_dir(settings.name)


def _open_listeners(
    settings: Options, opened: list[tuple[socket.socket, Bind | None]]
) -> list[tuple[socket.socket, Bind | None]]:
    """The app's sockets: handed over by systemd socket activation, or bound from --bind."""
    inherited: list[tuple[socket.socket, Bind | None]] = [(sock, None) for sock in systemd_sockets()]
    for sock, _ in inherited:
        sock.set_inheritable(True)
    opened.extend(inherited)
    if inherited:
        return inherited
    return [_open(parse_bind(text), opened, settings.backlog) for text in settings.bind]


async def _serve(
    settings: Options,
    target: Target,
    listeners: list[tuple[socket.socket, Bind | None]],
    plain: list[tuple[socket.socket, Bind | None]],
    admin: AdminRoutes,
    control_path: Path,
    state_dir: Path | None,
    notifier: Notifier,
    startup: Startup,
    handlers: list[control.Handler],
) -> int:
    scoreboard = Scoreboard.create()
    figures = RequestFigures.create(scoreboard.fd)
    app_metrics = AppMetricsDirectory(settings.user, settings.group) if settings.metrics else None
    spec = TemplateSpec(
        # The app's processes never see the manager's secrets: a forked worker's /proc/PID/environ still holds
        # the spec the template was started with, even after the template took it out of os.environ.
        settings={**settings.to_dict(), "admin_token": None, "prestart_lock": None},
        module=target.module,
        attr=target.attr,
        path=target.path,
        generation=0,
        manager_pid=os.getpid(),
        channel_fd=-1,
        scoreboard_fd=scoreboard.fd,
        listeners=[ListenerSpec(sock.fileno(), "app", https_enabled(settings)) for sock, _ in listeners]
        + [ListenerSpec(sock.fileno(), "http") for sock, _ in plain],
        state_dir=str(state_dir) if state_dir else "",
    )
    count, explicit = worker_count(settings)
    # One event log from the start: a follower sees the steps, then the pool.
    supervisor = Supervisor(settings, spec, scoreboard, count, explicit, startup.events)
    if settings.autoscale:
        from corral.manager.autoscaler import Autoscaler

        supervisor.autoscaler = Autoscaler(autoscale_limits(settings), spec.listeners, supervisor.events, count)
    pool_metrics = PoolMetrics(supervisor, figures, [sock for sock, _ in listeners], app_metrics, admin.started_at)
    supervisor.on_ready.append(
        lambda: print_banner(
            settings, target, listeners + plain,
            sorted(w.pid for w in supervisor.workers.values() if w.pid and w.state != "parked"),
            control_path, state_dir, admin.socket, admin.paths,
        )
    )
    supervisor.on_ready.append(
        lambda: notifier.ready(f"{plural(supervisor.ready_workers(), 'worker')} ready, generation {spec.generation}")
    )
    supervisor.on_status.append(lambda text: notifier.stopping(text) if text == "stopping" else notifier.status(text))
    certificates = None
    if https_enabled(settings) and state_dir is not None:
        from corral.privileges import resolve_owner
        from corral.tls.service import CertificateService

        owner = resolve_owner(settings.user, settings.group)
        certificates = CertificateService(settings, state_dir, supervisor.reload_certificates, owner)
        await certificates.start()
        supervisor.certificate_status = certificates.status
        certificates.events = supervisor.events
    if startup.stopping:  # a stop came while the certificates were prepared: nothing was started
        figures.close()
        scoreboard.close()
        if app_metrics:
            app_metrics.remove()
        return ExitCode.OK

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, supervisor.request_stop)
    abandoned = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, _on_interrupt, supervisor, abandoned)
    loop.add_signal_handler(signal.SIGQUIT, lambda: supervisor.stop(graceful=False))
    loop.add_signal_handler(signal.SIGTTIN, lambda: _scale_by_signal(supervisor, +1))
    loop.add_signal_handler(signal.SIGTTOU, lambda: _scale_by_signal(supervisor, -1))
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload_by_signal(supervisor))

    identity = startup.identity
    handlers.append(lambda request: _handle(supervisor, request, identity, pool_metrics))
    admin.serving(supervisor.liveness, supervisor.readiness, pool_metrics.render)
    renewals = asyncio.create_task(certificates.run()) if certificates else None
    sampling = asyncio.create_task(pool_metrics.run())
    pings = asyncio.create_task(_watchdog_pings(notifier)) if notifier.watchdog_interval else None
    watcher = None
    if settings.reload:  # `corral dev`: watchfiles is imported only then
        from corral.manager.dev import start_watcher

        watcher = start_watcher(settings, target, state_dir, supervisor.reload)
    try:
        code = await supervisor.run()
    finally:
        if watcher is not None:
            watcher.stop()
        for task in (renewals, pings, sampling):
            if task:
                task.cancel()
        await admin.close()  # its routes read the scoreboard and the figures, closed next
        figures.close()
        scoreboard.close()
        if app_metrics:
            app_metrics.remove()
    return INTERRUPTED if abandoned.is_set() else int(code)


async def _watchdog_pings(notifier: Notifier) -> None:
    """WATCHDOG=1 from the manager's loop: systemd restarts the service if this loop ever stalls."""
    interval = notifier.watchdog_interval or 1.0
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


def _on_interrupt(supervisor: Supervisor, abandoned: asyncio.Event) -> None:
    """First Ctrl-C drains; a second one stops at once, abandoning in-flight requests: exit 130, as a shell
    reports a command ended by Ctrl-C."""
    if supervisor.stopping:
        abandoned.set()
    supervisor.stop(graceful=not supervisor.stopping)


def _scale_by_signal(supervisor: Supervisor, delta: int) -> None:
    try:
        supervisor.scale(max(1, supervisor.target + delta))
    except ValueError as exc:
        log.error("scale refused: %s", exc)


def _reload_by_signal(supervisor: Supervisor) -> None:
    future = supervisor.reload()
    future.add_done_callback(lambda f: f.exception())  # the outcome is logged by the supervisor


async def _handle(
    supervisor: Supervisor, request: dict[str, Any], identity: dict[str, Any], pool_metrics: PoolMetrics
) -> dict[str, Any]:
    command = request.get("cmd")
    if command == "status":
        status = supervisor.status()
        totals = pool_totals(status)
        pool_metrics.annotate(status)
        phase = "stopping" if supervisor.stopping or supervisor.draining_instance else "serving"
        return {"ok": True, "phase": phase, **status, "pool": {**totals, **status.get("pool", {})}, **identity}
    if command == "events":
        return supervisor.events.answer(request)
    if command == "scale":
        try:
            target = policy.parse_scale(str(request.get("to", "")), supervisor.target)
            return {"ok": True, "message": supervisor.scale(target), "target": target}
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
    if command == "reload":
        try:
            generation = await supervisor.reload()
        except RuntimeError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "generation": generation, "message": f"generation {generation} is serving"}
    if command == "stop":
        supervisor.stop(graceful=not request.get("now"))
        return {"ok": True, "manager_pid": os.getpid()}
    return {"ok": False, "error": f"unknown command {command!r}"}
