"""`/livez` and `/readyz` on `--admin-bind`, answered by the manager from its own state (never by a worker)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.manager.admin import Request, Response, Route

Check = Callable[[], tuple[bool, dict[str, Any]]]


def routes(checks: dict[str, Check]) -> dict[str, Route]:
    """One route per check: 200 with its details when it passes, 503 when it fails."""

    def route(check: Check) -> Route:
        def handler(_: Request) -> Response:
            ok, details = check()
            return Response.json(200 if ok else 503, {"ok": ok, **details})

        return Route(handler)

    return {path: route(check) for path, check in checks.items()}
