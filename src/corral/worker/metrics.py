"""Per-request figures and the access log, as an ASGI wrapper around the app a worker serves.

Each HTTP request adds to the worker's own cell in shared memory (`corral.metrics_shm`): its status class, its
latency bucket, the latency sum and the body bytes sent, once it has ended. These are four writes to a shared
mapping (the clock is read through the vDSO): no system call, no lock. Requests in flight are not counted here
but stamped with the heartbeat (`stamp_in_flight`), which keeps two writes per request off the hot path. The
manager reads the cells for `/metrics` and `corral status`. The access log, when on, writes one line per request
with the worker id, status, bytes and latency.

The wrapper is on every request's path, so it is written for speed: the app's `send` is wrapped in a plain
function that returns the server's own awaitable (a closure, no coroutine of its own: measured cheaper than a
coroutine or a small object), and the status class is a lookup.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

from corral.metrics_shm import (
    BOUNDS,
    BUCKETS,
    BYTES,
    CELL_WORDS,
    IN_FLIGHT,
    LATENCY_SUM,
    STATUS,
    STATUS_CLASSES,
    RequestFigures,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("corral.access")

OTHER = len(STATUS_CLASSES) - 1  # where a request without a valid status counts: with the 5xx (no answer is an error)
# The status class's word for each status code below 600: 1xx is 0 ... 5xx is 4, and anything else 5xx.
CLASS_OF = tuple(code // 100 - 1 if code >= 100 else OTHER for code in range(600))


class Instrumented:
    """Counts every HTTP request into `cell`; logs it when `log_access`. Other scopes pass through untouched."""

    def __init__(self, app: ASGIApp, figures: RequestFigures, cell: int, count: bool, log_access: bool) -> None:
        self.app = app
        self.words = figures.words
        self.floats = figures.floats
        base = cell * CELL_WORDS
        self.status_word = base + STATUS
        self.bucket_word = base + BUCKETS
        self.latency_word = base + LATENCY_SUM
        self.bytes_word = base + BYTES
        self.worker = figures.slot(cell)
        self.count = count
        self.log_access = log_access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        sent = 0

        def counted(message: Message) -> Awaitable[None]:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
            return send(message)

        start = perf_counter()
        try:
            await self.app(scope, receive, counted)
        finally:
            elapsed = perf_counter() - start
            if self.count:
                words = self.words
                words[self.status_word + (CLASS_OF[status] if status < 600 else OTHER)] += 1
                words[self.bucket_word + bisect_left(BOUNDS, elapsed)] += 1
                self.floats[self.latency_word] += elapsed
                words[self.bytes_word] += sent
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


def stamp_in_flight(figures: RequestFigures, cell: int, requests: int) -> None:
    """The requests being answered now, written with the heartbeat (a gauge: a second old at most)."""
    figures.words[cell * CELL_WORDS + IN_FLIGHT] = requests
