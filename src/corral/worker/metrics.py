"""Per-request figures and the access log, as an ASGI wrapper around the app a worker serves.

Each HTTP request, once it has ended, adds to the worker's own cell in shared memory (`corral.metrics_shm`): one
count in the table of status class by latency bucket, and its latency to the sum. These are two writes to a
shared mapping (the clock is read through the vDSO): no system call, no lock. Requests in flight are not counted
here but stamped with the heartbeat (`stamp_in_flight`). The manager reads the cells for `/metrics` and
`corral status`. The access log, when on, writes one line per request with the worker id, status, bytes and
latency.

`Counted` is on every request's path, so it is written for speed: the app's `send` is wrapped in a closure that
returns the server's own awaitable (no coroutine of its own), the status class's row is a lookup, and nothing
else is counted. Measured in a real worker, not in-process, where the cost looks several times smaller
(docs/benchmarks.md, "Metrics overhead").
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

from corral.metrics_shm import (
    BOUNDS,
    CELL_WORDS,
    CLASS_STRIDE,
    COUNTS,
    IN_FLIGHT,
    LATENCY_SUM,
    STATUS_CLASSES,
    RequestFigures,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("corral.access")

# The row of the counts table where each status code below 600 counts: 1xx is the first ... 5xx the last. A request
# without a valid status (the app failed before answering) counts with the 5xx: no answer is an error.
OTHER = (len(STATUS_CLASSES) - 1) * CLASS_STRIDE
ROW_OF = tuple((code // 100 - 1) * CLASS_STRIDE if code >= 100 else OTHER for code in range(600))


class Counted:
    """Counts every HTTP request into `cell`. Other scopes pass through untouched."""

    def __init__(self, app: ASGIApp, figures: RequestFigures, cell: int) -> None:
        self.app = app
        self.words = figures.words
        self.floats = figures.floats
        self.counts = cell * CELL_WORDS + COUNTS
        self.latency = cell * CELL_WORDS + LATENCY_SUM

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        def counted(message: Message) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        start = perf_counter()
        try:
            await self.app(scope, receive, counted)
        finally:
            elapsed = perf_counter() - start
            # Written out here and in `Logged` rather than shared: a call would cost on every request.
            row = ROW_OF[status] if status < 600 else OTHER
            self.words[self.counts + row + bisect_left(BOUNDS, elapsed)] += 1
            self.floats[self.latency] += elapsed


class Logged:
    """Logs every HTTP request in the access log, with its body bytes; counts it too unless `--no-metrics`."""

    def __init__(self, app: ASGIApp, figures: RequestFigures, cell: int, count: bool) -> None:
        self.app = app
        self.figures = figures
        self.counts = cell * CELL_WORDS + COUNTS
        self.latency = cell * CELL_WORDS + LATENCY_SUM
        self.worker = figures.slot(cell)
        self.count = count

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
                row = ROW_OF[status] if status < 600 else OTHER
                self.figures.words[self.counts + row + bisect_left(BOUNDS, elapsed)] += 1
                self.figures.floats[self.latency] += elapsed
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
    if log_access:
        return Logged(app, figures, cell, count)
    return Counted(app, figures, cell) if count else app


def stamp_in_flight(figures: RequestFigures, cell: int, requests: int) -> None:
    """The requests being answered now, written with the heartbeat (a gauge: a second old at most)."""
    figures.words[cell * CELL_WORDS + IN_FLIGHT] = requests
