"""Per-request figures and the access log.

Requests are counted by the HTTP protocol the worker runs, not by an ASGI layer around the app: a layer costs a
coroutine and a closure per request, measurable on a small endpoint (docs/benchmarks.md, "Metrics overhead").
Corral's own protocol (`corral.worker.http`) calls `record` where it writes a response's head; with
`--http h11|httptools`, uvicorn's cycles count through `corral.worker.uvicorn_http`. A request's latency runs
from the parse of its headers to its response's start (status and headers handed to the server).

A response is counted in a plain list of this process (`TABLE`: one count in the table of status class by latency
bucket, and the latency added to the sum at its end), the cheapest write Python has: no shared memory, no
system call, no lock per request. `publish`, called with each heartbeat and as the worker exits, copies the table
into the worker's cell (`corral.metrics_shm`), where the manager reads it for `/metrics` and `corral status`: the
figures there are up to one heartbeat old. Requests in flight are stamped with the same heartbeat.

The access log, when on, writes one line per request with the worker id, status, bytes and latency (to the app's
end). It is an ASGI layer around the app (`Logged`), which Corral's own HTTP/1.1 protocol takes off and replaces:
it logs where its cycle ends (`Logged.log`), with no closure per request.
"""

from __future__ import annotations

import logging
import sys
from array import array
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

# The row of the counts table where each status code counts: 1xx is the first ... 5xx the last. A response
# without a valid status counts with the 5xx.
OTHER = (len(STATUS_CLASSES) - 1) * CLASS_STRIDE
ROW_OF = {code: (code // 100 - 1) * CLASS_STRIDE for code in range(100, 600)}
FIRST_BOUND = BOUNDS[0]  # a response within it skips the search: the common case where the cost shows most

# This process's counts, laid out as the cell's table (rows of CLASS_STRIDE words), then the latency sum.
TABLE_WORDS = len(STATUS_CLASSES) * CLASS_STRIDE
SUM = TABLE_WORDS
TABLE: list[Any] = [0] * TABLE_WORDS + [0.0]

# Where this worker publishes: set by `count_requests` (a worker serves one cell).
_figures: RequestFigures | None = None
_cell = 0


def record(status: int, elapsed: float) -> None:
    """Count one response, `elapsed` seconds after its request's head was parsed (any HTTP protocol of the
    worker calls this where the response starts)."""
    TABLE[ROW_OF.get(status, OTHER) + (0 if elapsed <= FIRST_BOUND else bisect_left(BOUNDS, elapsed))] += 1
    TABLE[SUM] += elapsed


def count_requests(figures: RequestFigures, cell: int) -> None:
    """From now on, every HTTP request this worker answers counts, and `publish` writes the counts to `cell`.
    The protocols stamp each request with its read time, uvicorn's cycles count (when `--http h11|httptools`
    loaded them): one switch for all, so that none runs without the others."""
    global _figures, _cell
    _figures, _cell = figures, cell
    from corral.worker.protocols import _Draining  # imported here: the protocols import this module

    _Draining.timed = True
    uvicorn_http = sys.modules.get("corral.worker.uvicorn_http")
    if uvicorn_http is not None:  # else it counts as it is imported
        uvicorn_http.count_cycles()


def publish(in_flight: int) -> None:
    """Copy the counts into the worker's cell, with the requests in flight (a gauge): called with the heartbeat
    and as the worker exits. Each word is written whole, so a reader never sees a torn value; it may see a
    request counted a moment before its latency is added to the sum, which the next read fixes."""
    if _figures is None:
        return
    base = _cell * CELL_WORDS
    _figures.words[base + COUNTS : base + COUNTS + TABLE_WORDS] = array("q", TABLE[:TABLE_WORDS])
    _figures.floats[base + LATENCY_SUM] = TABLE[SUM]
    _figures.words[base + IN_FLIGHT] = in_flight


class Logged:
    """Logs every HTTP request in the access log, with its body bytes. Other scopes pass through untouched."""

    def __init__(self, app: ASGIApp, worker: int) -> None:
        self.app = app
        self.worker = worker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        sent = 0

        def logged(message: Message) -> Awaitable[None]:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
            return send(message)

        start = perf_counter()
        try:
            await self.app(scope, receive, logged)
        finally:
            self.log(scope, status or 500, sent, perf_counter() - start)

    def log(self, scope: Scope, status: int, sent: int, elapsed: float) -> None:
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
