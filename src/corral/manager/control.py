"""The control socket: a UNIX socket (mode 0600) speaking JSON lines; `corral status` & co. are its clients.

One request per connection: a JSON object on one line (at most `MAX_LINE` bytes, within `READ_TIMEOUT`),
answered by one JSON object on one line. Anything else gets `{"ok": false, "error": ...}`, never a traceback.
A request with `"follow": true` (`corral events --follow`) is answered by a line per batch of events instead, on
the same connection, until the instance's final event: a follower misses nothing between two polls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from corral import paths
from corral.manager import connections

log = logging.getLogger("corral")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Follower = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]

MAX_LINE = 64 * 1024
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0


def claim_path(path: Path, default: bool = False) -> socket.socket:
    """Bind the control socket at `path` (not listening yet), or one clear line (exit 2) on why it cannot be.

    A stale socket left by a killed instance is replaced; anything else at `path` is never removed.
    `default` paths live in the per-user runtime directory, which must be private (see `paths.py`).
    """
    paths.prepare_control_path(path, default)
    old_umask = os.umask(0o177)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise paths.unusable("--control", path, exc) from None
    finally:
        os.umask(old_umask)  # the socket was made 0600 by it: no chmod, which would follow a swapped-in symlink
    return sock


async def serve(sock: socket.socket, handler: Handler, follower: Follower | None = None) -> connections.Server:
    async def on_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: connections.Connection
    ) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                line = await reader.readline()
        except ValueError:  # longer than MAX_LINE
            response: dict[str, Any] = {"ok": False, "error": f"bad request: longer than {MAX_LINE} bytes"}
        else:
            if not line:
                return
            connection.waiting = False
            request, response = _parse(line)
            if request is not None and follower is not None and request.get("follow") is True:
                try:
                    async for answer in follower(request):
                        await _write(writer, answer)
                    return
                except (ValueError, KeyError, TypeError) as exc:  # a bad `since` or `limit`: the first answer
                    response = {"ok": False, "error": f"bad request: {exc}"}
                    request = None
            if request is not None:
                response = await _answer(request, handler)
        await _write(writer, response)

    sock.listen(64)
    server = connections.Server(
        sock, on_connection, name="control socket", limit=connections.connection_limit(16, 8, 64),
        line_limit=MAX_LINE,
    )
    server.start()
    return server


async def _write(writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
    writer.write(json.dumps(response).encode() + b"\n")
    async with asyncio.timeout(WRITE_TIMEOUT):
        await writer.drain()


def _parse(line: bytes) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The request, or None and the answer that says what is wrong with it."""
    try:
        request = json.loads(line)
    except ValueError as exc:
        return None, {"ok": False, "error": f"bad request: not JSON ({exc})"}
    if not isinstance(request, dict):
        return None, {"ok": False, "error": "bad request: expected a JSON object, like {\"cmd\": \"status\"}"}
    return request, {}


async def _answer(request: dict[str, Any], handler: Handler) -> dict[str, Any]:
    try:
        return await handler(request)
    except (ValueError, KeyError, TypeError) as exc:
        return {"ok": False, "error": f"bad request: {exc}"}
