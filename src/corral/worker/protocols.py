"""uvicorn's HTTP protocols as a worker runs them: they drain without losing a request, and note when each
request was read for the metrics.

uvicorn closes an idle keep-alive connection the moment shutdown starts; a request the client sent at that
instant is lost. Here an idle connection stays open for a short grace: a request arriving in it is answered
with `Connection: close`, then the connection closes; one that stays silent is closed when the grace ends.
uvloop runs its due timers before it reads the sockets: after a stall of the loop past the grace, a request that
arrived in time may still be unread when the grace ends. Such a connection waits a moment more, for one read.

With `--metrics`, each new request-response cycle gets the time its request was read
(`corral.worker.metrics.request_read`); its `send` counts the response.
"""

from __future__ import annotations

import asyncio
import select
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from corral.worker.metrics import request_read

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    HAS_HTTPTOOLS = True
except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
    HAS_HTTPTOOLS = False

READ_FIRST = 0.01  # seconds: a timer due later than now comes after the loop's next read of the sockets


class _Draining:
    """Mixin over uvicorn's HTTP protocols; `drain(grace)` replaces their `shutdown()`."""

    draining = False
    timed = False  # note when each request was read: switched on by `corral.worker.metrics.count_requests`
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    timeout_keep_alive_task: asyncio.TimerHandle | None

    if TYPE_CHECKING:

        def _unset_keepalive_if_required(self) -> None: ...
        def timeout_keep_alive_handler(self) -> None: ...

    def drain(self, grace: float) -> None:
        self.draining = True
        if self.cycle is None or self.cycle.response_complete:
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(grace, self._grace_ended)
        else:
            self.cycle.keep_alive = False

    def _grace_ended(self) -> None:
        """Closes the connection, unless something waits unread: the read cancels the timer set here (as any
        arrival cancels the keep-alive timer), and a request is served with `Connection: close`."""
        if _unread(self.transport):
            self.timeout_keep_alive_task = self.loop.call_later(READ_FIRST, self.timeout_keep_alive_handler)
        else:
            self.timeout_keep_alive_handler()

    def _after_parsing(self, previous: Any) -> None:
        """Called once the server parsed what arrived; `previous` is the cycle it had before."""
        cycle = self.cycle
        if cycle is not previous and cycle is not None and self.timed:
            cycle.read_at = request_read(self.loop)
        if self.draining and cycle is not None:
            cycle.keep_alive = False


def _unread(transport: asyncio.BaseTransport) -> bool:
    """Whether bytes, or the end of the stream, wait to be read on the transport's socket."""
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing():
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class DrainingH11Protocol(_Draining, H11Protocol):
    def handle_events(self) -> None:
        previous = self.cycle
        super().handle_events()
        self._after_parsing(previous)


if HAS_HTTPTOOLS:

    class DrainingHttpToolsProtocol(_Draining, HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            previous = self.cycle
            super().on_headers_complete()
            self._after_parsing(previous)


def protocol_class(http: str) -> type[asyncio.Protocol]:
    if http != "h11" and HAS_HTTPTOOLS:
        return DrainingHttpToolsProtocol
    return DrainingH11Protocol
