"""Per-request figures and the access log.

Requests are counted by the HTTP protocol the worker runs, not by an ASGI layer around the app: a layer costs a
coroutine and a closure per request, measurable on a small endpoint (docs/benchmarks.md, "Metrics overhead").
`count_requests` makes uvicorn build its request-response cycles from subclasses whose `send` counts the
response as it starts, and has the protocol (`corral.worker.protocols`) stamp each cycle with the time its
request's headers were parsed: a request's latency runs from then to its response's start (status and headers
handed to the server).

A response is counted in the worker's cell (`corral.metrics_shm`) with two plain writes to a shared mapping, no
system call, no lock: one count in the table of status class by latency bucket, and the latency added to the sum.
Counting each response as it starts costs fewer instructions than batching the counts once per pass of the event
loop, which an earlier version did (docs/benchmarks.md). Requests in flight are not counted here but stamped
with the heartbeat (`stamp_in_flight`). The manager reads the cells for `/metrics` and `corral status`.

The access log, when on, is an ASGI layer: it writes one line per request with the worker id, status, bytes and
latency (to the response's end).
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

from uvicorn.protocols.http import h11_impl

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

try:
    from uvicorn.protocols.http import httptools_impl
except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
    httptools_impl = None  # type: ignore[assignment]

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

# Where this worker counts: set by `count_requests` (a worker serves one cell).
_words: memoryview[int]
_floats: memoryview[float]
_counts = 0
_latency = 0


def _counted(cycle_class: type[Any]) -> type[Any]:
    """A subclass of one of uvicorn's request-response cycles whose `send` counts the response as it starts.

    `send` returns the server's own coroutine rather than being one; the read time the protocol stamps lives in a
    slot rather than in each cycle's attribute dict."""
    server_send = cycle_class.send

    def send(self: Any, message: Message) -> Awaitable[None]:
        if not self.response_started and message["type"] == "http.response.start":
            elapsed = perf_counter() - self.read_at
            try:
                row = ROW_OF[message["status"]]
            except (KeyError, TypeError):  # uvicorn fails such a response: the count says 5xx
                row = OTHER
            _words[_counts + row + (0 if elapsed <= FIRST_BOUND else bisect_left(BOUNDS, elapsed))] += 1
            _floats[_latency] += elapsed
        return server_send(self, message)  # type: ignore[no-any-return]

    return type(f"Counted{cycle_class.__name__}", (cycle_class,), {"__slots__": ("read_at",), "send": send})


def count_requests(figures: RequestFigures, cell: int) -> None:
    """From now on, every HTTP request this worker answers counts into `cell`: uvicorn's cycles count, and the
    protocols stamp the read time they count from (one switch for both, so neither runs without the other)."""
    global _words, _floats, _counts, _latency
    _words, _floats = figures.words, figures.floats
    _counts, _latency = cell * CELL_WORDS + COUNTS, cell * CELL_WORDS + LATENCY_SUM
    for module in (h11_impl, httptools_impl):
        if module is not None:
            module.RequestResponseCycle = _counted(module.RequestResponseCycle)  # type: ignore[attr-defined]
    from corral.worker.protocols import _Draining  # imported here: the protocols import this module

    _Draining.timed = True  # the counted cycles need their read time: one switch for both


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
            self._log(scope, status or 500, sent, perf_counter() - start)

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


def stamp_in_flight(figures: RequestFigures, cell: int, requests: int) -> None:
    """The requests being answered now, written with the heartbeat (a gauge: a second old at most)."""
    figures.words[cell * CELL_WORDS + IN_FLIGHT] = requests


def record(status: int, elapsed: float) -> None:
    """Count one response of Corral's own protocol (`corral.worker.http`), `elapsed` seconds after its head was read."""
    row = ROW_OF.get(status, OTHER)
    _words[_counts + row + (0 if elapsed <= FIRST_BOUND else bisect_left(BOUNDS, elapsed))] += 1
    _floats[_latency] += elapsed
