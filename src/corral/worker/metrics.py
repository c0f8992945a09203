"""Per-request figures and the access log.

Requests are counted by the HTTP protocol the worker runs, not by an ASGI layer around the app: a layer costs a
coroutine and a closure per request, measurable on a small endpoint (docs/benchmarks.md, "Metrics overhead").
`count_requests` makes uvicorn build its request-response cycles from subclasses whose `send` notes the
response's start: its status and the time. The protocol (`corral.worker.protocols`) notes when each request was
read, through `request_read`.

The clock is read once per request, plus once per pass of the event loop that reads requests: every request
read in the same pass shares that reading, so a request's latency runs from the pass that read it (it was in the
socket by then) to its response's start (status and headers handed to the server). The counting itself is
done once per pass too, for all the responses started in it: one count in the worker's cell (`corral.metrics_shm`)
in the table of status class by latency bucket, and the latencies added to the sum. These are plain writes to a
shared mapping: no system call, no lock. Requests in flight are not counted here but stamped with the heartbeat
(`stamp_in_flight`). The manager reads the cells for `/metrics` and `corral status`.

The access log, when on, is an ASGI layer: it writes one line per request with the worker id, status, bytes and
latency (to the response's end).
"""

from __future__ import annotations

import asyncio
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

# The row of the counts table where each status code below 600 counts: 1xx is the first ... 5xx the last. A
# response without a valid status counts with the 5xx.
OTHER = (len(STATUS_CLASSES) - 1) * CLASS_STRIDE
ROW_OF = tuple((code // 100 - 1) * CLASS_STRIDE if code >= 100 else OTHER for code in range(600))

# A worker serves one event loop, so the state of the pass being run is the module's. Set by `count_requests`.
_words: memoryview[int]
_floats: memoryview[float]
_counts = 0
_latency = 0
_loop: asyncio.AbstractEventLoop | None = None
_read_at: float | None = None  # the clock as the current pass read its first request
_answered: list[Any] = []  # cycles whose response started in the current pass


def request_read(loop: asyncio.AbstractEventLoop) -> float:
    """When a request was read: the clock is read for the first request of a pass, the others share it."""
    global _read_at, _loop
    read_at = _read_at
    if read_at is None:
        read_at = _read_at = perf_counter()
        _loop = loop
        loop.call_soon(_end_pass)
    return read_at


def _end_pass() -> None:
    """Counts the responses started in the pass; the next pass reads the clock afresh."""
    global _read_at
    _read_at = None
    if not _answered:
        return
    words, counts, total = _words, _counts, 0.0
    try:
        for cycle in _answered:
            elapsed = cycle.answered_at - cycle.read_at
            status = cycle.status
            row = ROW_OF[status] if type(status) is int and 0 <= status < 600 else OTHER
            words[counts + row + bisect_left(BOUNDS, elapsed)] += 1
            total += elapsed
    finally:
        _answered.clear()
        _floats[_latency] += total


def _counted(cycle_class: type[Any]) -> type[Any]:
    """A subclass of one of uvicorn's request-response cycles whose `send` notes the response's start.

    `send` returns the server's own coroutine rather than being one. Its notes, and the read time the protocol
    sets, live in slots rather than in each cycle's attribute dict."""
    server_send = cycle_class.send

    def send(self: Any, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start" and not self.response_started:
            self.status = message["status"]
            self.answered_at = perf_counter()
            if not _answered and _loop is not None:
                _loop.call_soon(_end_pass)
            _answered.append(self)
        return server_send(self, message)  # type: ignore[no-any-return]

    return type(f"Counted{cycle_class.__name__}", (cycle_class,),
                {"__slots__": ("read_at", "answered_at", "status"), "send": send})


def count_requests(figures: RequestFigures, cell: int) -> None:
    """From now on, every HTTP request this worker answers counts into `cell`: uvicorn's cycles count, and the
    protocols note the read time they count from."""
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
