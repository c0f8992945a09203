"""`--admin-bind`: a small HTTP/1.1 server on the manager's loop, answered from the manager's own state.

Endpoints are routes (`path -> handler`); `/livez` and `/readyz` live in `health.py`, and other features
(metrics, the dashboard) register their own. A handler gets a parsed `Request` and returns a `Response`,
never touching the connection: the connection layer here owns timeouts, sizes and errors (and
`connections.py` the number of connections), so no client can stop the manager.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from corral.manager import connections

log = logging.getLogger("corral")

REASONS = {
    200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large", 414: "URI Too Long",
    415: "Unsupported Media Type", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    503: "Service Unavailable",
}
REQUEST_TIMEOUT = 10.0  # from waiting for a request to having all of it: idle and slowloris clients end here
WRITE_TIMEOUT = 10.0  # a client that does not read its answer
MAX_LINE = 8192  # request line, each header line
MAX_HEADERS = 100
MAX_HEADERS_SIZE = 64 * 1024
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


async def serve(sock: socket.socket, routes: dict[str, Route]) -> connections.Server:
    """Answer HTTP/1.1 on `sock` from `routes`; the server is started and returned (close it when done)."""

    async def on_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: connections.Connection
    ) -> None:
        peer = writer.get_extra_info("peername")
        while True:
            connection.wait_for_request()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    request = await _read_request(reader, peer)
            except _BadRequest as bad:
                await _write(writer, bad.response, "GET", close=True)
                return
            if request is None:
                return
            connection.waiting = False
            response = await _answer(request, routes)
            close = request.headers.get("connection", "").lower() == "close"
            await _write(writer, response, request.method, close)
            if close:
                return

    server = connections.Server(
        sock, on_connection, name="admin listener", limit=connections.connection_limit(4, 16, 1024),
        line_limit=MAX_LINE,
    )
    server.start()
    return server


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = Response.json(status, {"error": message})


async def _read_line(reader: asyncio.StreamReader, status: int, what: str) -> bytes:
    try:
        return await reader.readline()
    except ValueError:  # longer than the reader's limit; asyncio has dropped what it read of it
        raise _BadRequest(status, f"{what} longer than {MAX_LINE} bytes") from None


async def _read_request(reader: asyncio.StreamReader, peer: Any) -> Request | None:
    """The next request, None at the end of the connection; `_BadRequest` for what HTTP/1.1 does not allow."""
    request_line = await _read_line(reader, 414, "request line")
    if not request_line:
        return None
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest(400, "malformed request line")
    method, target = parts[0], parts[1]
    headers: dict[str, str] = {}
    size = count = 0
    while (line := await _read_line(reader, 431, "header line")) not in (b"\r\n", b"\n"):
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        size, count = size + len(line), count + 1
        if size > MAX_HEADERS_SIZE or count > MAX_HEADERS:
            raise _BadRequest(431, f"headers larger than {MAX_HEADERS_SIZE} bytes or {MAX_HEADERS} fields")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name.strip():
            raise _BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _BadRequest(400, "chunked bodies are not accepted; send content-length")
    text = headers.get("content-length", "0") or "0"
    if not text.isdigit():
        raise _BadRequest(400, "malformed content-length")
    length = int(text)
    if length > MAX_BODY:
        raise _BadRequest(413, f"body larger than {MAX_BODY} bytes")
    body = await reader.readexactly(length) if length else b""
    url = urlsplit(target)
    return Request(method, url.path, parse_qs(url.query), headers, body, peer)


async def _write(writer: asyncio.StreamWriter, response: Response, method: str, close: bool) -> None:
    head = (
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}\r\n"
        f"content-type: {response.content_type}\r\ncontent-length: {len(response.body)}\r\n"
        "cache-control: no-store\r\n"
        + ("connection: close\r\n" if close else "")
        + "".join(f"{name}: {value}\r\n" for name, value in response.headers)
        + "\r\n"
    )
    writer.write(head.encode("latin-1") + (response.body if method != "HEAD" else b""))
    async with asyncio.timeout(WRITE_TIMEOUT):
        await writer.drain()


async def _answer(request: Request, routes: dict[str, Route]) -> Response:
    route = routes.get(request.path)
    if route is None:
        return Response.json(404, {"error": f"no such endpoint; try {', '.join(sorted(routes))}"})
    if request.method not in route.methods:
        return Response.json(405, {"error": f"use {' or '.join(route.methods)}"})
    try:
        result = route.handler(request)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:  # a failing endpoint answers 500; the listener and the manager go on
        log.error("admin listener: %s %s failed: %s: %s", request.method, request.path, type(exc).__name__, exc)
        return Response.json(500, {"error": "internal error"})
    return result
