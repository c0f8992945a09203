"""The banner `corral run` prints once its first workers are ready: where it serves, the admin listener and who
may read it, and the exact commands that work for this instance (control, `corral trust`, a curl)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from corral import __version__
from corral.binds import Bind, is_loopback, parse_admin_bind
from corral.discovery import Target
from corral.options import Options
from corral.tls.plan import https_enabled

log = logging.getLogger("corral")

ADMIN_PATHS = ("/livez", "/readyz", "/metrics", "/dashboard")


def print_banner(
    settings: Options,
    target: Target,
    listeners: list[tuple[socket.socket, Bind | None]],
    pids: list[int],
    control_path: Path,
    state_dir: Path | None,
    admin_socket: socket.socket | None,
    admin_paths: list[str],
) -> None:
    """What a newcomer needs: where it serves, and the exact commands that work for this instance."""
    scheme = "https" if https_enabled(settings) else "http"
    urls = [_listening(sock, scheme if index < len(settings.bind) else "http")
            for index, (sock, _) in enumerate(listeners)]
    mode = "preload" if settings.preload else "no preload"
    lines = [
        f"corral {__version__} serving {target} (manager pid {os.getpid()})",
        f"  listening: {'  '.join(urls)}",
        f"  workers:   {len(pids)} ({mode}), pids {', '.join(map(str, pids))}",
        f"  control:   {control_path}  (corral status --control {control_path})",
    ]
    if target.note:
        lines.insert(1, f"  app:       {target.note}")
    if admin_socket is not None:
        from corral.manager.admin_access import admin_access_text

        admin = _reachable(admin_socket, "http")
        token = bool(settings.admin_token or settings.admin_token_file)
        exposed = not is_loopback(parse_admin_bind(settings.admin_bind or ""))
        shown = [served for path in ADMIN_PATHS if (served := _served_path(path, admin_paths))]
        if exposed and not token:  # nobody may read them: no URL for them
            shown = [path for path in shown if path in ("/livez", "/readyz")]
        lines.append(f"  admin:     {'  '.join(admin + path for path in shown) or admin}")
        lines.append(f"  access:    {admin_access_text(token, exposed)}")
    lines += _try_lines(settings, listeners, state_dir)
    if settings.log_format == "json":
        log.info("serving %s", target, extra={"listening": urls, "workers": pids, "control": str(control_path),
                                              "banner": lines})
        return
    print("\n".join(lines), file=sys.stderr, flush=True)


def _served_path(path: str, routes: list[str]) -> str | None:
    """`path` if the admin listener serves it, else its first sub-path served (`/dashboard/`), else None."""
    if path in routes:
        return path
    return next((route for route in routes if route.startswith(path + "/")), None)


def _listening(sock: socket.socket, scheme: str) -> str:
    """A URL that works from this machine (and verifies with the local CA); a wildcard bind says so."""
    url = _reachable(sock, scheme)
    if sock.family != socket.AF_UNIX and sock.getsockname()[0] in ("0.0.0.0", "::"):
        return f"{url} (all addresses)"
    return url


def _reachable(sock: socket.socket, scheme: str) -> str:
    """The URL a client on this machine uses: a wildcard address becomes loopback."""
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _try_lines(
    settings: Options, listeners: list[tuple[socket.socket, Bind | None]], state_dir: Path | None
) -> list[str]:
    """`corral trust` and a curl that verifies, for the first app listener (HTTPS from the local CA)."""
    if not listeners or listeners[0][0].family == socket.AF_UNIX:
        return []
    if not https_enabled(settings):
        return [f"  try:       curl {_reachable(listeners[0][0], 'http')}/"]
    from corral.tls.plan import certificate_plans

    if state_dir is None or not any(plan.label == "local" for plan in certificate_plans(settings)):
        return []
    chosen = f"--state-dir {state_dir}" if settings.state_dir else f"--name {settings.name}"
    root = state_dir / "ca" / "root.pem"
    return [
        f"  trust:     corral trust {chosen}",
        f"  try:       curl --cacert {root} {_reachable(listeners[0][0], 'https')}/",
    ]
