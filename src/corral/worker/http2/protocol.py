"""Corral's HTTP/2 server protocol: one connection, the `h2` state machine (python-hyper), a `Stream` per request.

A connection comes here by ALPN (`h2`) from the TLS router, or from the HTTP/1.1 protocol when a plain connection
opens with the HTTP/2 preface (h2c by prior knowledge). The scope is HTTP/1.1's with `http_version` "2" and the
`:authority` as `host`. Everything a worker counts is counted per stream: in-flight tasks, `total_requests` (the
heartbeat's count for `--max-requests`), the first answer, the metrics (`corral.worker.metrics.record`).

How a connection goes away (idle, drained, refusing the streams after its last): `corral.worker.http2.goaway`.

Defences: the budgets of `corral.worker.http2.limits`, a response that cannot be written for `send_timeout`
reset, reading paused while the client does not read, an idle connection closed (header timeout, then keep-alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from corral.worker import shedding
from corral.worker.http.head import service_unavailable
from corral.worker.http.protocol import HttpProtocol
from corral.worker.http2.goaway import GoingAway
from corral.worker.http2.hpack_cache import CachingDecoder, CachingEncoder
from corral.worker.http2.limits import (
    CONTROL_WINDOW,
    RESET_WINDOW,
    Budget,
    H2Limits,
    LocalSettings,
    header_block_pending,
)
from corral.worker.http2.scope import CheckedHeaders, request_scope
from corral.worker.http2.stream import Stream
from corral.worker.protocols import ServedProtocol

log = logging.getLogger("uvicorn.error")
LINGER = 2.0  # seconds a connection ended for an error still reads (and discards) before it closes
ENCODER_TABLE = 4096  # bytes of HPACK table for response headers, whatever size the client allows (RFC 7541, 4.2)
SMALL = 4096  # a DATA frame up to this size waits for the end of the loop's pass to be written with others
CONTROL_EVENTS = (
    h2.events.RemoteSettingsChanged, h2.events.PingReceived, h2.events.PingAckReceived, h2.events.PriorityUpdated,
    h2.events.WindowUpdated, h2.events.SettingsAcknowledged,
)  # fmt: skip  # what the control-frame budget counts
CONNECTION_WINDOW = 1024 * 1024  # the connection's receive window: request bodies buffered at most, per connection


class H2Protocol(GoingAway, ServedProtocol):
    limits = H2Limits()  # set for the worker by `configure`

    def __init__(
        self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.scheme = "https"
        self.cycle = None  # `_Draining` asks; streams are in `streams`
        limits = self.limits
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False,
            validate_inbound_headers=False, normalize_inbound_headers=False,
        ))  # fmt: skip  # `_request` runs h2's inbound checks (remembered), `Stream._start` checks the heads sent
        self.h2.encoder = CachingEncoder()
        self.h2.decoder = CachingDecoder(limits.max_header_list_size)
        self.h2.local_settings = LocalSettings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })  # fmt: skip
        self.streams: dict[int, Stream] = {}  # streams whose app task runs
        self.resets = Budget(limits.max_resets, RESET_WINDOW)
        self.control = Budget(limits.max_control_frames, CONTROL_WINDOW)
        self.write_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._served_any = False
        self._going_away = False  # the first GOAWAY went out
        self._last_stream: int | None = None  # set by the final GOAWAY: streams above it are refused
        self._ping_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._flush_scheduled = False
        self._heads: list[Stream] = []  # responses started whose head waits for a body or the end of the pass
        self.checked = CheckedHeaders()

    # Connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.connections.add(self)
        self.transport = transport
        self.server = self.server or get_local_addr(transport)  # type: ignore[assignment]
        self.client = self.client or get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush()
        self._arm_idle()
        self._after_connecting()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.connections.discard(self)
        self._cancel_timers()
        for stream in self.streams.values():
            if not stream.complete:
                stream.lost()
        self.resume_writing()

    def eof_received(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        if self._closed:  # lingering after a GOAWAY for an error
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:  # h2 queued a GOAWAY with the error's code
            log.info("HTTP/2 connection from %s closed: %s", self.client, exc)
            self._linger()
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is None or stream.complete:
                    self._acknowledge(event.stream_id, event.flow_controlled_length)
                else:
                    stream.add_body(event.data, event.flow_controlled_length)
                if event.stream_ended is not None and stream is not None:
                    stream.end_body()
            elif isinstance(event, h2.events.RequestReceived):
                self._request(event)
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.end_body()
            elif isinstance(event, h2.events.StreamReset):
                self._reset_by_client(event.stream_id)
            elif isinstance(event, CONTROL_EVENTS):
                self._control(event)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._flush()
                self._close()
                return
            elif isinstance(event, h2.events.TrailersReceived):  # dropped, once checked as h2 would
                self._malformed(self.checked.problem(event.headers or [], trailers=True))
            # UnknownFrameReceived: ignored
            if self._closed:
                return
        if header_block_pending(self.h2) > self.limits.max_header_list_size:  # a CONTINUATION flood
            self._fail(ErrorCodes.ENHANCE_YOUR_CALM, "header block too large")
            return
        self._flush()

    def _control(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                for stream in self.streams.values():
                    stream.window_opened()
            elif event.stream_id in self.streams:
                self.streams[event.stream_id].window_opened()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if self.h2.encoder.header_table_size > ENCODER_TABLE:  # the client's allowance is not an obligation
                self.h2.encoder.header_table_size = ENCODER_TABLE
            for stream in self.streams.values():
                stream.window_opened()
        elif isinstance(event, h2.events.PingAckReceived) and self._going_away and self._last_stream is None:
            self._final_goaway()
        if not self.control.spend(self.loop.time()):
            self._fail(ErrorCodes.ENHANCE_YOUR_CALM, "control frame flood")

    # Requests
    def _request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        self._served_any = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._last_stream is not None and stream_id > self._last_stream:
            self._refuse(stream_id)
            return
        if len(self.streams) >= self.limits.max_concurrent_streams:  # reset streams whose app still runs
            self._refuse(stream_id)
            self._count_reset()  # a client opening and resetting faster than its apps end: rapid reset
            return
        raw = event.headers or []
        if self._malformed(self.checked.problem(raw)):
            return
        scope = request_scope(self, raw)
        if scope is None:
            self._refuse(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        stream = Stream(stream_id, scope, self, scope["method"] == "HEAD")
        if event.stream_ended is not None:
            stream.end_body()
        self.streams[stream_id] = stream
        app = self.app
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
        task = stream.task = self.loop.create_task(stream.run(app))
        self.tasks.add(task)

    def _malformed(self, problem: str | None) -> bool:
        """A malformed request ends the connection (GOAWAY PROTOCOL_ERROR), as h2 does."""
        if problem is not None:
            log.info("HTTP/2 connection from %s closed: %s", self.client, problem)
            self._fail_quietly(ErrorCodes.PROTOCOL_ERROR)
        return problem is not None

    def _refuse(self, stream_id: int, code: ErrorCodes = ErrorCodes.REFUSED_STREAM) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):  # the client may have reset it in the same read
            self.h2.reset_stream(stream_id, code)

    def _reset_by_client(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.complete:
            stream.lost()
            if stream.unacknowledged:  # what the app will never read opens the connection's window again
                self._acknowledge(stream_id, stream.unacknowledged)
                stream.unacknowledged = 0
        self._count_reset()

    def _count_reset(self) -> None:
        if not self.resets.spend(self.loop.time()) and not self._closed:
            self._fail(ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets")

    # What a stream calls (`corral.worker.http2.stream.Connection`)
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        return self.server_state.default_headers  # type: ignore[no-any-return]

    def acknowledge(self, stream: Stream, size: int) -> None:
        if not self._closed:
            self._acknowledge(stream.stream_id, size)
            self._flush_soon()

    def _acknowledge(self, stream_id: int, size: int) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.acknowledge_received_data(size, stream_id)

    def head_ready(self, stream: Stream) -> None:
        self._heads.append(stream)
        self._flush_soon()

    def send_head(self, stream: Stream, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        if self._closed or stream.disconnected:
            return
        try:
            self.h2.send_headers(stream.stream_id, headers, end_stream=end)
        except h2.exceptions.ProtocolError as exc:  # a header h2 refuses (CR, LF, NUL...): the stream is reset
            log.error("Invalid HTTP response header on stream %d: %s", stream.stream_id, exc)
            self.abort(stream)
            stream.lost()
            return
        self._flush_soon()

    async def send_data(self, stream: Stream, data: bytes, end: bool) -> None:
        """Send `data` as the client's windows allow; wait for them, at most `send_timeout` without progress."""
        view = memoryview(data)
        stream_id = stream.stream_id
        while not stream.disconnected and not self._closed:
            try:
                size = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size, len(view))
                if size or not view:
                    last = size == len(view)
                    self.h2.send_data(stream_id, view[:size], end_stream=end and last)
                    self.control.refund(2)
                    view = view[size:]
                    self._flush() if size > SMALL else self._flush_soon()
                    if last:
                        break
            except h2.exceptions.ProtocolError:
                stream.lost()
                break
            if (self.write_paused or not size) and not await self._progress(stream, bool(size)):
                self._stalled(stream)
                break
        if self.write_paused and not stream.disconnected and not await self._progress(stream, True):
            self._stalled(stream)

    async def _progress(self, stream: Stream, writable: bool) -> bool:
        """Wait for the transport to drain (`writable`) or the stream's window to open; False on the timeout."""
        if writable:
            if self._writable is None:
                self._writable = self.loop.create_future()
            waiter = self._writable
        else:
            waiter = stream.window = self.loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.limits.send_timeout)
        except TimeoutError:
            return False
        finally:
            stream.window = None
        return True

    def _stalled(self, stream: Stream) -> None:
        """A response that could not be written for `send_timeout`: its stream is reset (a connection whose
        socket does not drain is closed), and the app sees a disconnect."""
        log.info("HTTP/2 stream %d of %s reset: the client read nothing for %g s", stream.stream_id, self.client,
                 self.limits.send_timeout)
        if self.write_paused:
            self._close()
        else:
            self.abort(stream, ErrorCodes.CANCEL)
        stream.lost()

    def body_stalled(self, stream: Stream) -> None:
        """A request body that stopped arriving for the keep-alive timeout while the app waits for it: 408 if no
        response began (as on HTTP/1.1), the stream reset, and the app sees a disconnect."""
        if stream.complete or stream.disconnected or self._closed:
            return
        if not stream.started:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.send_headers(stream.stream_id, [(b":status", b"408"), (b"content-length", b"0")],
                                     end_stream=True)
        self.abort(stream, ErrorCodes.CANCEL)
        stream.lost()

    def abort(self, stream: Stream, code: ErrorCodes = ErrorCodes.INTERNAL_ERROR) -> None:
        if self._closed:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.reset_stream(stream.stream_id, code)
        self._flush_soon()

    def stream_done(self, stream: Stream) -> None:
        """A stream's app task ended: the worker counts the answer; a connection left with no stream idles."""
        self.streams.pop(stream.stream_id, None)
        if stream.complete:
            state = self.server_state
            state.total_requests += 1
            if state.total_requests == 1 and HttpProtocol.first_answer is not None:
                HttpProtocol.first_answer()
            if shedding.pending and not self.draining and not self._going_away and shedding.take():
                self._goaway_gracefully()
        if self._closed:
            return
        if not stream.body_done:  # the response is whole, the request body is not needed (RFC 9113, 8.1)
            self.abort(stream, ErrorCodes.NO_ERROR)
        elif stream.unacknowledged:
            self._acknowledge(stream.stream_id, stream.unacknowledged)
        if not self.streams:
            if self._last_stream is not None:
                self._close()
                return
            self._arm_idle()
        self._flush_soon()

    # Output
    def _flush(self) -> None:
        if self._heads:
            heads, self._heads = self._heads, []
            for stream in heads:
                stream.flush_head()
        self._flush_scheduled = False
        data = self.h2.data_to_send()
        if data and not self._closed:
            self.transport.write(data)

    def _flush_soon(self) -> None:
        """Write what the streams queued by the end of the loop's pass: one write for many small frames."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _fail(self, code: ErrorCodes, why: str) -> None:
        """A connection error: GOAWAY with `code`, then close (the streams' apps see a disconnect)."""
        log.warning("HTTP/2 connection from %s closed: %s (GOAWAY %s)", self.client, why, code.name)
        self._fail_quietly(code)

    def _fail_quietly(self, code: ErrorCodes) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(code, last_stream_id=self.h2.highest_inbound_stream_id)
        self._linger()

    def _linger(self) -> None:
        """Write what is queued (a GOAWAY), then close after a while."""
        self._flush()
        self._closed = True
        for stream in self.streams.values():
            stream.lost()
        # Linger: the client may still be sending; closing now would reset the connection and could lose the
        # GOAWAY in its receive buffer. Reading stops: a flooding client's writes block on its side meanwhile.
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.transport.pause_reading()
        self.loop.call_later(LINGER, self.transport.close)

    def _close(self) -> None:
        """Close once what is queued is written (the transport writes its buffer before closing)."""
        if not self._closed:
            self._flush()
            self._closed = True
            self.transport.close()

    def _unset_keepalive_if_required(self) -> None:
        pass

    def timeout_keep_alive_handler(self) -> None:
        self._close()

    def _cancel_timers(self) -> None:
        for timer in (self._idle_timer, self._ping_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._ping_timer = None

    # Flow control of the transport
    def pause_writing(self) -> None:
        self.write_paused = True
        self.transport.pause_reading()  # a client that does not read its answers sends nothing more for now

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self._closed:
            self.transport.resume_reading()
        waiter = self._writable
        if waiter is not None:
            self._writable = None
            if not waiter.done():
                waiter.set_result(None)


def configure(limits: H2Limits) -> None:
    """The worker's HTTP/2 limits, for every connection from now on."""
    H2Protocol.limits = limits
