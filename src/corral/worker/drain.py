"""HTTP protocols that drain without losing a request.

uvicorn closes an idle keep-alive connection the moment shutdown starts; a request the client sent at that
instant is lost. Here an idle connection stays open for a short grace: a request arriving in it is answered
with `Connection: close`, then the connection closes; one that stays silent is closed when the grace ends.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    HAS_HTTPTOOLS = True
except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
    HAS_HTTPTOOLS = False


class _Draining:
    """Mixin over uvicorn's HTTP protocols; `drain(grace)` replaces their `shutdown()`."""

    draining = False
    cycle: Any
    loop: asyncio.AbstractEventLoop
    timeout_keep_alive_task: asyncio.TimerHandle | None

    if TYPE_CHECKING:

        def _unset_keepalive_if_required(self) -> None: ...
        def timeout_keep_alive_handler(self) -> None: ...

    def drain(self, grace: float) -> None:
        self.draining = True
        if self.cycle is None or self.cycle.response_complete:
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(grace, self.timeout_keep_alive_handler)
        else:
            self.cycle.keep_alive = False

    def _close_after_this_request(self) -> None:
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False


class DrainingH11Protocol(_Draining, H11Protocol):
    def handle_events(self) -> None:
        super().handle_events()
        self._close_after_this_request()


if HAS_HTTPTOOLS:

    class DrainingHttpToolsProtocol(_Draining, HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._close_after_this_request()


def protocol_class(http: str) -> type[asyncio.Protocol]:
    if http == "h11" or not HAS_HTTPTOOLS:
        return DrainingH11Protocol
    return DrainingHttpToolsProtocol
