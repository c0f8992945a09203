"""The raw hello with what the HTTP/2 attack clients need besides `/`: `/pid` answers the worker's pid, `/big` sends
256 KiB in 16 KiB chunks (what a zero-window reader holds back), `/echo` reads the whole request body before
answering its length (a stream that stays open while the client sends nothing)."""

from __future__ import annotations

from typing import Any

from _common import lifespan, pid_body, respond

CHUNK = b"x" * 16384


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/big":
        headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(16 * len(CHUNK)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index in range(16):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": index < 15})
    elif path == "/echo":
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await respond(send, str(size).encode())
    else:
        await respond(send, pid_body() if path == "/pid" else b"hello")
