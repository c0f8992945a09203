"""Helpers shared by the benchmark apps: the readiness marker and a tiny raw-ASGI responder.

Every worker touches `$BENCH_READY_DIR/<pid>` when its ASGI lifespan starts. The lifespan runs in
each worker under every server measured (after the fork when the app is preloaded), so the benchmark
finds the worker processes and knows when they serve the same way for Corral and for each peer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

Message = dict[str, Any]


def mark_ready() -> None:
    directory = os.environ.get("BENCH_READY_DIR")
    if directory:
        Path(directory, str(os.getpid())).touch()


async def lifespan(receive: Any, send: Any) -> None:
    """Answer the ASGI lifespan protocol for the raw apps."""
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            mark_ready()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def respond(send: Any, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def pid_body() -> bytes:
    return str(os.getpid()).encode()


def fastapi_app() -> Any:
    """A FastAPI app whose lifespan touches the readiness marker (FastAPI is imported only by the apps using it)."""
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    @asynccontextmanager
    async def marked(_: FastAPI) -> AsyncIterator[None]:
        mark_ready()
        yield

    return FastAPI(lifespan=marked)
