"""`--admin-bind`: /livez and /readyz, answered by the manager from its own state (never by a worker).

A deliberately tiny HTTP/1.1 responder on the manager's loop: probes send one GET and read one answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from typing import Any

Check = Callable[[], tuple[bool, dict[str, Any]]]
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def serve(sock: socket.socket, checks: dict[str, Check]) -> asyncio.AbstractServer:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await asyncio.wait_for(reader.readline(), 10)
                if not request_line:
                    return
                while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                    pass
                parts = request_line.decode("latin-1").split()
                method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
                status, body = _answer(method, path, checks)
                payload = json.dumps(body).encode()
                writer.write(
                    f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(payload)}\r\ncache-control: no-store\r\n\r\n".encode()
                    + (payload if method != "HEAD" else b"")
                )
                await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(on_connection, sock=sock)


def _answer(method: str, path: str, checks: dict[str, Check]) -> tuple[int, dict[str, Any]]:
    check = checks.get(path)
    if check is None:
        return 404, {"error": f"no such endpoint; try {', '.join(sorted(checks))}"}
    if method not in ("GET", "HEAD"):
        return 405, {"error": "use GET"}
    ok, details = check()
    return (200 if ok else 503), {"ok": ok, **details}
