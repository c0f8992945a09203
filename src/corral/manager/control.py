"""The control socket: a UNIX socket (mode 0600) speaking JSON lines; `corral status` & co. are its clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from corral.control_client import socket_is_live
from corral.errors import CorralError

log = logging.getLogger("corral")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def claim_path(path: Path) -> None:
    """Make sure no live instance owns `path`; remove a stale socket left by a killed one."""
    if path.exists() or path.is_symlink():
        if socket_is_live(path):
            raise CorralError(
                f"another corral instance is running with control socket {path} (use --name or --control)"
            )
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)


async def serve(path: Path, handler: Handler) -> asyncio.AbstractServer:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if line:
                try:
                    request = json.loads(line)
                    response = await handler(request)
                except (ValueError, KeyError, TypeError) as exc:
                    response = {"ok": False, "error": f"bad request: {exc}"}
                writer.write(json.dumps(response).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    old_umask = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(on_connection, path=str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return server
