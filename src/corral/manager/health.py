"""`/livez` and `/readyz` on `--admin-bind`, answered by the manager from its own state (never by a worker).

The listener opens as soon as the instance owns its name, before the pre-start steps: the checks are first the
startup's (alive; not ready, and why), then the supervisor's, swapped in the same `checks` mapping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.manager.admin import Request, Response, Route

Check = Callable[[], tuple[bool, dict[str, Any]]]


def routes(checks: dict[str, Check]) -> dict[str, Route]:
    """One route per check, read from `checks` at each request: 200 with its details when it passes, 503 when it
    fails."""

    def route(path: str) -> Route:
        def handler(_: Request) -> Response:
            ok, details = checks[path]()
            return Response.json(200 if ok else 503, {"ok": ok, **details})

        return Route(handler)

    return {path: route(path) for path in checks}
