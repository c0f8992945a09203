"""The web dashboard on `--admin-bind`: static files under `/dashboard`, JSON under `/api/...`.

The API answers through the control socket's own handler, so the page, `corral top` and `corral status` see
the same data and take the same actions. The page keeps its own history of the figures (the manager keeps
none), and its files are read from disk per request: the manager holds nothing for it between requests.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from corral.manager.admin import Request, Response, Route

STATIC = Path(__file__).resolve().parent.parent / "dashboard"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css",
         ".svg": "image/svg+xml"}
SECURITY = (
    ("content-security-policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
)

Control = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def routes(control: Control, static: Path = STATIC) -> dict[str, Route]:
    table = {"/dashboard": Route(_file(static / "index.html"))}
    for path in sorted(static.iterdir()) if static.is_dir() else []:
        if path.suffix in TYPES and path.name != "index.html":
            table[f"/dashboard/{path.name}"] = Route(_file(path))

    async def status(_: Request) -> Response:
        return _answer(await control({"cmd": "status"}))

    async def events(request: Request) -> Response:
        try:
            since = int(request.query.get("since", ["0"])[0])
            limit = int(request.query.get("limit", ["100"])[0])
        except ValueError:
            return Response.json(400, {"ok": False, "error": "since and limit are whole numbers"})
        return _answer(await control({"cmd": "events", "since": since, "limit": limit}))

    async def reload(_: Request) -> Response:
        return _answer(await control({"cmd": "reload"}))

    async def scale(request: Request) -> Response:
        try:
            body = json.loads(request.body or b"{}")
            to = str(body["to"])
        except (ValueError, KeyError, TypeError):
            return Response.json(400, {"ok": False, "error": 'expected a JSON body {"to": "N|+K|-K"}'})
        return _answer(await control({"cmd": "scale", "to": to}))

    table["/api/status"] = Route(status)
    table["/api/events"] = Route(events)
    table["/api/reload"] = Route(reload, ("POST",))
    table["/api/scale"] = Route(scale, ("POST",))
    return table


def _file(path: Path) -> Callable[[Request], Response]:
    content_type = TYPES.get(path.suffix, "application/octet-stream")

    def handler(_: Request) -> Response:
        try:
            return Response(200, path.read_bytes(), content_type, SECURITY)
        except OSError:
            return Response.json(404, {"error": f"{path.name} is missing from the installation"})

    return handler


def _answer(result: dict[str, Any]) -> Response:
    return Response.json(200 if result.get("ok") else 409, result)
