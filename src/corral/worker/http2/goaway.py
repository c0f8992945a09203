"""How an HTTP/2 connection goes away: idle, or drained (a mixin of `H2Protocol`).

An idle connection (no stream) is closed after the keep-alive timeout, or the header timeout before its first
request, with a GOAWAY. The drain (`drain`, called as on the HTTP/1.1 protocols, and when the worker sheds keep-alive
clients) is RFC 9113's graceful shutdown: a GOAWAY naming the largest stream id and a PING; once the PING comes back
(every stream the client sent before it saw the GOAWAY has arrived), or after the drain's grace, a second GOAWAY
names the last stream that will be served. Those streams finish; the connection closes once none is left.

The GOAWAY frames are written beside h2's state machine: after its own GOAWAY, h2 refuses to send or receive
anything more, and the streams still running must be answered.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import h2.connection
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from corral.worker.http2.limits import H2Limits

if TYPE_CHECKING:
    from corral.worker.http2.stream import Stream

LAST_STREAM = 2**31 - 1


class GoingAway:
    h2: h2.connection.H2Connection
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    limits: H2Limits
    server_state: Any
    streams: dict[int, Stream]
    draining: bool
    _closed: bool
    _served_any: bool
    _going_away: bool  # the first GOAWAY went out
    _last_stream: int | None  # set by the final GOAWAY: streams above it are refused
    _idle_timer: asyncio.TimerHandle | None
    _ping_timer: asyncio.TimerHandle | None

    if TYPE_CHECKING:

        def _flush(self) -> None: ...
        def _close(self) -> None: ...

    def _arm_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        timeout = self.limits.keep_alive if self._served_any else self.limits.header_timeout
        self._idle_timer = self.loop.call_later(timeout, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        if not self.streams and not self._closed:
            self._goaway(self.h2.highest_inbound_stream_id, ErrorCodes.NO_ERROR)
            self._close()

    def _goaway(self, last_stream: int, code: ErrorCodes) -> None:
        """A GOAWAY written beside h2's state machine, which would refuse to send anything after its own."""
        self._flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream
        frame.error_code = code
        if not self._closed:
            self.transport.write(frame.serialize())

    def _goaway_gracefully(self) -> None:
        self._going_away = True
        self._goaway(LAST_STREAM, ErrorCodes.NO_ERROR)
        self.h2.ping(b"corral\x00\x00")
        self._flush()
        self._ping_timer = self.loop.call_later(self.server_state.drain_grace or 2.0, self._final_goaway)

    def _final_goaway(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        if self._closed or self._last_stream is not None:
            return
        self._last_stream = self.h2.highest_inbound_stream_id
        self._goaway(self._last_stream, ErrorCodes.NO_ERROR)
        if not self.streams:
            self._close()

    def drain(self, grace: float) -> None:
        self.draining = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if not self._closed and not self._going_away:
            self._goaway_gracefully()
