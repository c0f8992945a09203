"""`--admin-bind`: a small HTTP/1.1 server on the manager's loop, answered from the manager's own state.

Endpoints are routes (`path -> handler`); `/livez` and `/readyz` live in `health.py`, and other features
(metrics, the dashboard) register their own. A handler gets a parsed `Request` and returns a `Response`,
never touching the connection: the connection layer here owns timeouts, sizes and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

REASONS = {
    200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type",
    431: "Request Header Fields Too Large", 503: "Service Unavailable",
}
IDLE_TIMEOUT = 10.0
MAX_BODY = 64 * 1024  # the API's bodies are a few bytes


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    peer: Any = None


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @classmethod
    def json(cls, status: int, data: Any) -> Response:
        return cls(status, json.dumps(data).encode())


Handler = Callable[[Request], Response | Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    handler: Handler
    methods: tuple[str, ...] = ("GET", "HEAD")


async def serve(sock: socket.socket, routes: dict[str, Route]) -> asyncio.AbstractServer:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                request_line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
                if not request_line:
                    return
                headers: dict[str, str] = {}
                while (line := await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                parts = request_line.decode("latin-1").split()
                method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
                length = int(headers.get("content-length", "0") or 0)
                if length > MAX_BODY:
                    writer.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    return
                body = await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT) if length > 0 else b""
                url = urlsplit(target)
                request = Request(method, url.path, parse_qs(url.query), headers, body, peer)
                response = await _answer(request, routes)
                head = (
                    f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}\r\n"
                    f"content-type: {response.content_type}\r\ncontent-length: {len(response.body)}\r\n"
                    "cache-control: no-store\r\n"
                    + "".join(f"{name}: {value}\r\n" for name, value in response.headers)
                    + "\r\n"
                )
                writer.write(head.encode("latin-1") + (response.body if method != "HEAD" else b""))
                await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(on_connection, sock=sock)


async def _answer(request: Request, routes: dict[str, Route]) -> Response:
    route = routes.get(request.path)
    if route is None:
        return Response.json(404, {"error": f"no such endpoint; try {', '.join(sorted(routes))}"})
    if request.method not in route.methods:
        return Response.json(405, {"error": f"use {' or '.join(route.methods)}"})
    result = route.handler(request)
    if inspect.isawaitable(result):
        result = await result
    return result
