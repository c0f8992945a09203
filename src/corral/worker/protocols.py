"""How a worker's HTTP protocols drain (`_Draining`, shared by Corral's own, `corral.worker.http`, and uvicorn's,
`corral.worker.uvicorn_http`): they drain without losing a request, and note when each request was read for the
metrics.

uvicorn closes an idle keep-alive connection the moment shutdown starts; a request the client sent at that
instant is lost. Here an idle connection stays open for a short grace: a request arriving in it is answered
with `Connection: close`, then the connection closes; one that stays silent is closed when the grace ends.
uvloop runs its due timers before it reads the sockets: after a stall of the loop past the grace, a request that
arrived in time may still be unread when the grace ends. Such a connection waits a moment more, for one read.
A connection the protocol gets after the drain began (its TLS handshake or PROXY header ended later) drains
at once; until then the drain waits for it in `DrainState.arriving`, for at most `ARRIVAL_WAIT`.

With `--metrics`, each new request-response cycle is stamped with the time its request's headers were parsed;
the response is counted from then (`corral.worker.metrics`).

A worker the manager asked to shed keep-alive clients (`corral.worker.shedding`) answers that many requests that
would have kept their connection open with `Connection: close`; the clients reconnect through the shared accept
queue. The check is one integer read per request while nothing is asked.
"""

from __future__ import annotations

import asyncio
import select
from time import perf_counter
from typing import TYPE_CHECKING, Any

from uvicorn.server import ServerState

from corral.worker import shedding

READ_FIRST = 0.01  # seconds: a timer due later than now comes after the loop's next read of the sockets
PRUNE_AT = 64  # connections arriving: the least size at which `DrainState.arrive` prunes
# How long a draining worker waits for connections still arriving: as long as a PROXY header may take (a TLS
# handshake takes far less), not the 30 s handshake timeout, which a stalled handshake would add to every reload.
ARRIVAL_WAIT = 10.0


class DrainState(ServerState):
    """uvicorn's state shared by a worker's connections, with what its drain needs: the grace once the drain
    began, and the connections still arriving (TLS handshake or PROXY header in progress) by raw transport,
    with the HTTP protocol each will be handed to."""

    def __init__(self) -> None:
        super().__init__()
        self.drain_grace: float | None = None
        self.arriving: dict[asyncio.BaseTransport, asyncio.Protocol] = {}
        self._prune_at = PRUNE_AT

    def arrive(self, transport: asyncio.BaseTransport, protocol: asyncio.Protocol) -> None:
        """The router removes a connection it hands to uvicorn's protocol or loses while it has it; one it gave
        to the loop's SSL protocol goes in a pruning (once uvicorn's protocol has it, or it closed), here when
        the entries doubled since the last: they stay within twice the handshakes in progress (or PRUNE_AT)."""
        self.arriving[transport] = protocol
        if len(self.arriving) >= self._prune_at:
            self.still_arriving()
            self._prune_at = max(PRUNE_AT, 2 * len(self.arriving))

    def still_arriving(self) -> bool:
        for transport, protocol in list(self.arriving.items()):
            if transport.is_closing() or protocol in self.connections:
                del self.arriving[transport]
        return bool(self.arriving)

    def close_arriving(self) -> None:
        """Close the connections that have not arrived yet: they sent no request the drain could answer."""
        self.still_arriving()
        for transport in self.arriving:
            transport.close()
        self.arriving.clear()


class _Draining:
    """Mixin over uvicorn's HTTP protocols; `drain(grace)` replaces their `shutdown()`."""

    draining = False
    timed = False  # stamp each cycle with its read time: switched on by `corral.worker.metrics.count_requests`
    cycle: Any
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    server_state: Any  # a DrainState (uvicorn's own classes declare its base)
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
            self._close_after(self.cycle)

    def _after_connecting(self) -> None:
        """A connection the protocol gets after the drain began drains at once."""
        grace = self.server_state.drain_grace
        if grace is not None:
            self.drain(grace)

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
        if cycle is not previous and cycle is not None:
            if self.timed:
                cycle.read_at = perf_counter()
            if shedding.pending and self._keeps_alive(cycle) and shedding.take():
                self._close_after(cycle)
        if self.draining and cycle is not None:
            self._close_after(cycle)

    def _keeps_alive(self, cycle: Any) -> bool:
        """Whether the connection would stay open after `cycle`'s response (httptools' cycle knows)."""
        return bool(cycle.keep_alive)

    def _close_after(self, cycle: Any) -> None:
        """The connection closes once `cycle`'s response is sent; the response says so (httptools does)."""
        cycle.keep_alive = False



class ServedProtocol(_Draining, asyncio.Protocol):
    """The start of Corral's own protocols (HTTP/1.1, HTTP/2): what each connection takes from uvicorn's config
    and the server's state, as uvicorn's protocols do in their constructors."""

    def __init__(
        self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app: Any = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.app_state = app_state
        self.root_path: str = config.root_path
        self.asgi = {"version": config.asgi_version, "spec_version": "2.3"}  # one per connection
        self.limit_concurrency: int | None = config.limit_concurrency
        self.transport = None  # type: ignore[assignment]  # until connection_made
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.timeout_keep_alive_task = None

def _unread(transport: asyncio.BaseTransport) -> bool:
    """Whether bytes, or the end of the stream, wait to be read on the transport's socket."""
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing():
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))
