"""A raw ASGI "hello": measures the server, not a framework. `/pid` answers the worker's pid."""

from __future__ import annotations

from typing import Any

from _common import lifespan, pid_body, respond


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await respond(send, pid_body() if scope["path"] == "/pid" else b"hello")
