"""What `--admin-bind` serves for the whole life of the instance.

The listener opens as soon as the instance owns its name, like the control socket, so a platform's liveness
probe passes during a long pre-start step (a migration) instead of killing the instance. Until the supervisor
exists, the startup answers: `/livez` 200 (the manager's loop answers), `/readyz` 503 with the reason (the step
running, for how long), `/metrics` what is known (no worker yet), the dashboard's API the startup's status.
`serving` then hands the same routes the supervisor's checks and the pool's metrics.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from corral.binds import is_loopback, parse_admin_bind
from corral.manager import connections, health, metrics
from corral.manager.admin import Route
from corral.manager.startup import Startup
from corral.options import Options

log = logging.getLogger("corral")

Control = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class AdminRoutes:
    def __init__(self, settings: Options, startup: Startup, control: Control, started_at: float) -> None:
        self.settings = settings
        self.control = control  # the control socket's current handler: the startup's, then the supervisor's
        self.checks: dict[str, health.Check] = {"/livez": startup.liveness, "/readyz": startup.readiness}
        self.started_at = started_at
        self.render: Callable[[], Awaitable[bytes]] = lambda: metrics.startup_exposition(startup.workers, started_at)
        self.paths: list[str] = []  # for the banner
        self.socket: socket.socket | None = None
        self.server: connections.Server | None = None

    def routes(self) -> dict[str, Route]:
        """Every route, behind the token when the listener is reachable from other machines."""
        from corral.manager import admin_access, dashboard  # only with --admin-bind

        routes = health.routes(self.checks) | dashboard.routes(self.control)
        if self.settings.metrics:
            routes["/metrics"] = metrics.route(lambda: self.render())
        self.paths[:] = list(routes)
        token = admin_access.load_token(self.settings)
        exposed = not is_loopback(parse_admin_bind(self.settings.admin_bind or ""))
        if exposed and token is None:
            log.warning("--admin-bind %s is reachable from other machines and has no token: it serves only /livez "
                        "and /readyz (give --admin-token-file for the rest)", self.settings.admin_bind)
        return admin_access.protect(routes, token, exposed)

    def serving(self, liveness: health.Check, readiness: health.Check, render: Callable[[], Awaitable[bytes]]
                ) -> None:  # fmt: skip
        """The supervisor exists: its checks and the pool's metrics answer from now on."""
        self.checks.update({"/livez": liveness, "/readyz": readiness})
        self.render = render

    async def close(self) -> None:
        """Stop answering (once): before the pool's figures go, or at the end of a start that never served."""
        server, self.server = self.server, None
        if server is not None:
            await server.shutdown()
