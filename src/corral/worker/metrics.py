"""Per-request figures and the access log, as an ASGI wrapper around the app a worker serves.

Each HTTP request adds to the worker's own cell in shared memory (`corral.metrics_shm`): in flight while it
runs, then its status class, its latency bucket, the latency sum and the body bytes sent. These are writes to
a shared mapping (the clock is read through the vDSO): no system call, no lock. The manager reads the cells
for `/metrics` and `corral status`. The access log, when on, writes one line per request with the worker id,
status, bytes and latency.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

from corral.metrics_shm import BOUNDS, BUCKETS, BYTES, CELL_WORDS, IN_FLIGHT, LATENCY_SUM, STATUS, RequestFigures

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("corral.access")


class Instrumented:
    """Counts every HTTP request into `cell`; logs it when `log_access`. Other scopes pass through untouched."""

    def __init__(self, app: ASGIApp, figures: RequestFigures, cell: int, count: bool, log_access: bool) -> None:
        self.app = app
        self.words = figures.words
        self.floats = figures.floats
        self.base = cell * CELL_WORDS
        self.worker = figures.slot(cell)
        self.count = count
        self.log_access = log_access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        words, base = self.words, self.base
        status = 0
        sent = 0

        async def counted_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if self.count:
            words[base + IN_FLIGHT] += 1
        start = perf_counter()
        try:
            await self.app(scope, receive, counted_send)
        finally:
            elapsed = perf_counter() - start
            if self.count:
                words[base + IN_FLIGHT] -= 1
                words[base + STATUS + (status // 100 - 1 if 100 <= status < 600 else 4)] += 1
                words[base + BUCKETS + bisect_left(BOUNDS, elapsed)] += 1
                self.floats[base + LATENCY_SUM] += elapsed
                words[base + BYTES] += sent
            if self.log_access:
                self._log(scope, status or 500, sent, elapsed)

    def _log(self, scope: Scope, status: int, sent: int, elapsed: float) -> None:
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "-"
        path = scope.get("raw_path", b"").decode("latin-1") or scope.get("path", "")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        method = scope.get("method", "")
        version = scope.get("http_version", "1.1")
        access_log.info(
            '%s "%s %s HTTP/%s" %d %dB %.1fms worker %d',
            peer, method, path, version, status, sent, elapsed * 1000, self.worker,
            extra={
                "worker": self.worker,
                "client": peer,
                "method": method,
                "path": path,
                "http_version": version,
                "status": status,
                "bytes": sent,
                "duration_seconds": round(elapsed, 6),
            },
        )


def instrument(app: ASGIApp, figures: RequestFigures, cell: int, count: bool, log_access: bool) -> ASGIApp:
    if not (count or log_access):
        return app
    return Instrumented(app, figures, cell, count, log_access)
