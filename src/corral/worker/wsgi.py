"""A WSGI app served as an ASGI app: a2wsgi's adapter over a pool of threads per worker.

The WSGI callable runs in one of `--threads` threads; the event loop only moves bytes, so whatever serves ASGI
in the worker (its HTTP protocol, TLS, proxy headers, metrics, access log, drain) serves WSGI the same way.
a2wsgi builds the environ (`wsgi.input` streams the request body from the loop, `SCRIPT_NAME` from the scope's
`root_path` or the `SCRIPT_NAME` variable, `REMOTE_ADDR` and `wsgi.url_scheme` from the scope after Corral's
proxy-header layer); this module completes it (`wsgi.errors` on stderr, `wsgi.file_wrapper`) and keeps, for the
worker's heartbeat, when each running request started: the loop stays free while a thread is stuck, so the
heartbeat alone would not see it.

Made in the worker, after the fork: the template holds no threads.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from a2wsgi.wsgi import WSGIResponder
from a2wsgi.wsgi_typing import Environ, StartResponse


class FileWrapper:
    """`wsgi.file_wrapper` (PEP 3333): the file in blocks; closing the response closes the file."""

    def __init__(self, filelike: IO[bytes], block_size: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        while block := self.filelike.read(self.block_size):
            yield block

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


class _Responder(WSGIResponder):
    """One request: a2wsgi's, with the environ completed and the request's thread and start noted."""

    pool: WSGIApp

    def wsgi(self, environ: Environ, start_response: StartResponse) -> None:
        script, path = environ["SCRIPT_NAME"], environ["PATH_INFO"]
        if script and path.startswith(script) and path[len(script) : len(script) + 1] in ("", "/"):
            environ["PATH_INFO"] = path[len(script) :]  # a SCRIPT_NAME from the environment: the path is below it
        environ["wsgi.errors"] = sys.stderr
        environ["wsgi.file_wrapper"] = FileWrapper  # type: ignore[typeddict-unknown-key]  # optional in PEP 3333
        ident = threading.get_ident()
        self.pool.running[ident] = time.monotonic()
        try:
            super().wsgi(environ, start_response)
        finally:
            self.pool.running.pop(ident, None)


class WSGIApp:
    """The ASGI app a worker serves for a WSGI callable."""

    def __init__(self, app: Any, threads: int, send_queue_size: int = 10) -> None:
        self.app = app
        self.threads = threads
        self.send_queue_size = send_queue_size
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="corral-wsgi")
        self.running: dict[int, float] = {}  # thread id: when its request started (monotonic)
        self.in_flight = 0  # requests handed to the pool, running or waiting for a thread (changed on the loop)
        self.reported: set[int] = set()  # threads already reported stuck

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":  # a WebSocket: WSGI has none; closing before accepting refuses it (403)
            await send({"type": "websocket.close", "code": 1000})
            return
        responder = _Responder(self.app, self.executor, self.send_queue_size)
        responder.pool = self
        self.in_flight += 1
        try:
            await responder(scope, receive, send)  # type: ignore[arg-type]  # an http scope
        finally:
            self.in_flight -= 1

    def occupancy(self) -> float:
        """Threads busy over threads; 1.0 when a request waits for a thread."""
        return min(1.0, self.in_flight / self.threads)

    def stuck(self, timeout: float) -> tuple[int, float] | None:
        """The thread whose request has run longest, and its start, once that is more than `timeout` ago."""
        running = list(self.running.items())
        if not running:
            return None
        ident, started = min(running, key=lambda item: item[1])
        return (ident, started) if time.monotonic() - started > timeout else None


def thread_stack(ident: int) -> tuple[str, list[tuple[str, int, str]]]:
    """A thread's stack as Python prints a traceback, and its frames innermost first (file, line, function)."""
    frame = sys._current_frames().get(ident)
    if frame is None:
        return "", []
    summary = traceback.extract_stack(frame)
    frames = [(f.filename, f.lineno or 0, f.name) for f in reversed(summary)]
    return "".join(summary.format()), frames
