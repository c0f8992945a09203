"""`corral run`: check the input, bind the sockets, start the supervisor, and turn its end into an exit code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from corral import __version__, logs
from corral.binds import Bind, display_urls, open_socket, parse_bind, systemd_sockets
from corral.control_client import default_control_path
from corral.discovery import Target, resolve_target
from corral.manager import admin as admin_http
from corral.manager import control, health, policy, resources
from corral.manager.metrics import AppMetricsDirectory, PoolMetrics
from corral.manager.sd_notify import Notifier
from corral.manager.supervisor import Supervisor
from corral.metrics_shm import RequestFigures
from corral.options import Options
from corral.process import release_free_memory
from corral.scoreboard import Scoreboard
from corral.tls.plan import http_binds, https_enabled
from corral.worker.spec import ListenerSpec, TemplateSpec

log = logging.getLogger("corral")


def setup_logging(level: str, log_format: str = "text") -> None:
    logs.configure(log_format, level, "corral")


def worker_count(settings: Options) -> tuple[int, bool]:
    """The number of workers and whether the user chose it (an explicit count is never lowered)."""
    if settings.workers == "auto":
        return policy.auto_workers(resources.cpu_count(), resources.cgroup_cpu_quota()), False
    return int(settings.workers), True


def run(settings: Options) -> int:
    setup_logging(settings.log_level, settings.log_format)
    notifier = Notifier.from_environ()  # taken out of the environment: children must not speak for us
    target = resolve_target(settings.app, settings.app_dir, Path.cwd())
    control_path = Path(settings.control) if settings.control else default_control_path(settings.name)
    control.claim_path(control_path)
    if settings.prestart:
        from corral.prestart import run_prestart

        run_prestart(settings)
    state_dir = _state_dir(settings)
    opened: list[tuple[socket.socket, Bind | None]] = []  # everything to close (and unlink) at the end
    try:
        listeners = _open_listeners(settings, opened)
        plain = [_open(parse_bind(text), opened) for text in http_binds(settings)]
        admin = _open(parse_bind(settings.admin_bind), opened)[0] if settings.admin_bind else None
        if admin is not None:
            admin.set_inheritable(False)  # answered by the manager itself, never by a worker
        release_free_memory()  # the manager's imports are done; it runs as long as the service
        return asyncio.run(_serve(settings, target, listeners, plain, admin, control_path, state_dir, notifier))
    finally:
        for sock, bind in opened:
            sock.close()
            if bind is not None and bind.kind == "unix":
                with contextlib.suppress(OSError):
                    os.unlink(bind.path)
        with contextlib.suppress(OSError):
            control_path.unlink()


def _open(bind: Bind, opened: list[tuple[socket.socket, Bind | None]]) -> tuple[socket.socket, Bind | None]:
    entry: tuple[socket.socket, Bind | None] = (open_socket(bind), bind)
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
    return [_open(parse_bind(text), opened) for text in settings.bind]


async def _serve(
    settings: Options,
    target: Target,
    listeners: list[tuple[socket.socket, Bind | None]],
    plain: list[tuple[socket.socket, Bind | None]],
    admin_socket: socket.socket | None,
    control_path: Path,
    state_dir: Path | None,
    notifier: Notifier,
) -> int:
    scoreboard = Scoreboard.create()
    figures = RequestFigures.create(scoreboard.fd)
    app_metrics = AppMetricsDirectory(settings.user, settings.group) if settings.metrics else None
    spec = TemplateSpec(
        settings=settings.to_dict(),
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
    supervisor = Supervisor(settings, spec, scoreboard, count, explicit)
    pool_metrics = PoolMetrics(supervisor, figures, [sock for sock, _ in listeners], app_metrics)
    supervisor.on_ready.append(lambda: _banner(settings, target, listeners + plain, supervisor, control_path))
    supervisor.on_ready.append(
        lambda: notifier.ready(f"{supervisor.ready_workers()} workers ready, generation {spec.generation}")
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

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, supervisor.request_stop)
    loop.add_signal_handler(signal.SIGINT, _on_interrupt, supervisor)
    loop.add_signal_handler(signal.SIGQUIT, lambda: supervisor.stop(graceful=False))
    loop.add_signal_handler(signal.SIGTTIN, lambda: _scale_by_signal(supervisor, +1))
    loop.add_signal_handler(signal.SIGTTOU, lambda: _scale_by_signal(supervisor, -1))
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload_by_signal(supervisor))

    server = await control.serve(control_path, lambda request: _handle(supervisor, request, pool_metrics))
    renewals = asyncio.create_task(certificates.run()) if certificates else None
    sampling = asyncio.create_task(pool_metrics.run())
    pings = asyncio.create_task(_watchdog_pings(notifier)) if notifier.watchdog_interval else None
    admin = None
    if admin_socket is not None:
        routes = health.routes({"/livez": supervisor.liveness, "/readyz": supervisor.readiness})
        if settings.metrics:
            routes["/metrics"] = pool_metrics.route()
        admin = await admin_http.serve(admin_socket, routes)
    try:
        code = await supervisor.run()
    finally:
        for task in (renewals, pings, sampling):
            if task:
                task.cancel()
        notifier.close()
        if admin:
            admin.close()
        server.close()
        figures.close()
        scoreboard.close()
        if app_metrics:
            app_metrics.remove()
    return int(code)


async def _watchdog_pings(notifier: Notifier) -> None:
    """WATCHDOG=1 from the manager's loop: systemd restarts the service if this loop ever stalls."""
    interval = notifier.watchdog_interval or 1.0
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


def _on_interrupt(supervisor: Supervisor) -> None:
    """First Ctrl-C drains; a second one stops at once."""
    supervisor.stop(graceful=not supervisor.stopping)


def _scale_by_signal(supervisor: Supervisor, delta: int) -> None:
    try:
        supervisor.scale(max(1, supervisor.target + delta))
    except ValueError as exc:
        log.error("scale refused: %s", exc)


def _reload_by_signal(supervisor: Supervisor) -> None:
    future = supervisor.reload()
    future.add_done_callback(lambda f: f.exception())  # the outcome is logged by the supervisor


async def _handle(supervisor: Supervisor, request: dict[str, Any], pool_metrics: PoolMetrics) -> dict[str, Any]:
    command = request.get("cmd")
    if command == "status":
        status = supervisor.status()
        pool_metrics.annotate(status)
        return {"ok": True, **status}
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


def _banner(
    settings: Options,
    target: Target,
    listeners: list[tuple[socket.socket, Bind | None]],
    supervisor: Supervisor,
    control_path: Path,
) -> None:
    pids = sorted(w.pid for w in supervisor.workers.values() if w.pid)
    scheme = "https" if https_enabled(settings) else "http"
    urls = "  ".join(display_urls(sock, scheme if index < len(settings.bind) else "http")
                     for index, (sock, _) in enumerate(listeners))
    mode = "preload" if settings.preload else "no preload"
    lines = [
        f"corral {__version__} serving {target} (manager pid {os.getpid()})",
        f"  listening: {urls}",
        f"  workers:   {len(pids)} ({mode}), pids {', '.join(map(str, pids))}",
        f"  control:   {control_path}  (corral status --control {control_path})",
    ]
    if settings.log_format == "json":
        log.info("serving %s", target, extra={"listening": urls, "workers": pids, "control": str(control_path)})
        return
    print("\n".join(lines), file=sys.stderr, flush=True)



