"""uvicorn's HTTP protocols as a worker runs them for `--http h11|httptools`: they drain without losing a request
(`corral.worker.protocols._Draining`) and, with `--metrics`, their request-response cycles count each response as it
starts (`corral.worker.metrics.record`), from the time the protocol parsed the request's headers.

Imported only when one of them is chosen, so that a worker on Corral's own protocol carries neither uvicorn's
protocol modules nor h11.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from types import ModuleType
from typing import Any

from uvicorn.protocols.http import h11_impl
from uvicorn.protocols.http.h11_impl import H11Protocol

from corral.worker import metrics
from corral.worker.protocols import _Draining

httptools_impl: ModuleType | None
try:
    from uvicorn.protocols.http import httptools_impl
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    HAS_HTTPTOOLS = True
except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
    httptools_impl = None
    HAS_HTTPTOOLS = False

CLOSE = (b"connection", b"close")
_counting = False


def _counted(cycle_class: type[Any]) -> type[Any]:
    """A subclass of one of uvicorn's request-response cycles whose `send` counts the response as it starts.

    `send` returns the server's own coroutine rather than being one; the read time the protocol stamps lives in a
    slot rather than in each cycle's attribute dict."""
    server_send = cycle_class.send
    record = metrics.record

    def send(self: Any, message: Any) -> Any:
        if not self.response_started and message["type"] == "http.response.start":
            status = message["status"]
            record(status if type(status) is int else 0, perf_counter() - self.read_at)  # else uvicorn fails it: 5xx
        return server_send(self, message)

    return type(f"Counted{cycle_class.__name__}", (cycle_class,), {"__slots__": ("read_at",), "send": send})


def count_cycles() -> None:
    """uvicorn's cycles count from now on (`corral.worker.metrics.count_requests` switches it on)."""
    global _counting
    if _counting:
        return
    _counting = True
    for module in (h11_impl, httptools_impl):
        if module is not None:
            module.RequestResponseCycle = _counted(module.RequestResponseCycle)  # type: ignore[attr-defined]


class DrainingH11Protocol(_Draining, H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._after_connecting()

    def handle_events(self) -> None:
        previous = self.cycle
        super().handle_events()
        self._after_parsing(previous)

    def _keeps_alive(self, cycle: Any) -> bool:
        """h11 decides at the response; the request says it already: HTTP/1.1 without `Connection: close`."""
        if cycle.scope["http_version"] != "1.1":
            return False
        return not any(name == b"connection" and b"close" in value.lower() for name, value in self.headers)

    def _close_after(self, cycle: Any) -> None:
        """uvicorn's h11 cycle closes without a `Connection: close`, so a client could send its next request into
        a closing connection. With the header in the response, h11 closes after it, and the client knows."""
        cycle.keep_alive = False
        if not cycle.response_started and CLOSE not in cycle.default_headers:
            cycle.default_headers = [*cycle.default_headers, CLOSE]


if HAS_HTTPTOOLS:

    class DrainingHttpToolsProtocol(_Draining, HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._after_connecting()

        def on_headers_complete(self) -> None:
            previous = self.cycle
            super().on_headers_complete()
            self._after_parsing(previous)


def protocol_class(http: str) -> type[asyncio.Protocol]:
    if http == "httptools" and HAS_HTTPTOOLS:
        return DrainingHttpToolsProtocol
    return DrainingH11Protocol


if _Draining.timed:  # counting was switched on before this module was imported
    count_cycles()
