"""Corral's HTTP/1.1 server protocol: llhttp (httptools) parses, `Cycle` runs each request's ASGI exchange.

Per connection: requests are answered in order (a pipelined request waits, with reading paused, until the one
before it is answered); reading pauses while a request body is buffered beyond a high-water mark and the app does
not receive it; a response waits for the transport to drain once its write buffer passes the high-water mark.
Defences (`corral.worker.http.limits`): request line and head sizes, the number of header fields, a timeout for
the head to arrive whole, a timeout for a stalled body. Everything llhttp refuses (request smuggling by
conflicting `Content-Length`/`Transfer-Encoding`, bad chunk sizes, obs-fold, bare CR or LF, a space before a
colon) is answered 400 and the connection closes.

Idle keep-alive connections are timed with one timer per connection, re-armed only when it fires early (a busy
connection does not arm and cancel a timer per request). The drain (`corral.worker.protocols._Draining`) works
on this protocol as on uvicorn's.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from corral.worker.http.cycle import Cycle
from corral.worker.http.head import DefaultHeaders, refusal, service_unavailable
from corral.worker.http.limits import Limits, Refused, head_size
from corral.worker.metrics import Logged
from corral.worker.protocols import ServedProtocol

log = logging.getLogger("uvicorn.error")
PATHSEND: dict[str, Any] = {}  # the extension has no parameters
METHODS: dict[bytes, str] = {}  # method names as bytes and as str, made once each


class HttpProtocol(ServedProtocol):
    limits = Limits()  # set for the worker by `configure`
    first_answer: Callable[[], None] | None = None  # called once, as the worker's first response ends
    h2c: Callable[[HttpProtocol, bytes], None] | None = None  # takes a connection that opens with HTTP/2's preface

    def __init__(
        self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.access: Logged | None = None  # the access log, written here rather than by its layer around the app
        if type(self.app) is Logged:  # (other protocols of the worker, uvicorn's WebSocket one, keep the layer)
            self.access = self.app
            self.app = self.access.app
        self.raw_root = self.root_path.encode("ascii")
        self.timeout_keep_alive: float = config.timeout_keep_alive
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # answer the request before a close
        self._defaults = DefaultHeaders()

        self.scheme = "http"
        self.cycle: Cycle | None = None
        self.pipeline: deque[Cycle] = deque()
        self.read_paused = False
        self.write_paused = False
        self._writable: asyncio.Future[None] | None = None
        # Timers (the drain's grace is `timeout_keep_alive_task`, `_Draining`'s)
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_at: float | None = None  # when the connection became idle between requests; None while busy
        self._head_timer: asyncio.TimerHandle | None = None
        # The request head being parsed
        self._in_head = False
        self._head_fed = 0  # bytes received since the head began (an upper bound)
        self._fed = 0  # bytes of the current `data_received`
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_continue = False
        self._upgrade_header = False  # an Upgrade header came: llhttp's verdict is asked only then
        self._connection_header = False  # a Connection (or Proxy-Connection) header came
        self._scope: dict[str, Any] | None = None  # what every request's scope on this connection starts from

    # Connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.connections.add(self)
        self.transport = transport
        self.server = get_local_addr(transport)  # type: ignore[assignment]
        self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)
        self._after_connecting()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self._cancel_timers()
        cycle = self.cycle
        if cycle is not None:
            if not cycle.complete:
                cycle.disconnected = True
            cycle.wake()
        self.pipeline.clear()
        self.resume_writing()

    def eof_received(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self._idle_at = None
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        in_head = self._in_head
        self._fed = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data[upgrade.args[0]:])
            return
        except httptools.HttpParserError as exc:
            if self.cycle is None and self.h2c is not None and exc.args == ("Pause on PRI/Upgrade",):
                self.h2c(self, data)  # llhttp stops at the HTTP/2 preface: h2c by prior knowledge
                return
            refused = exc.__context__
            if isinstance(refused, Refused):
                self._refuse(refused.status, refused.message)
            else:
                if not isinstance(exc, httptools.HttpParserCallbackError) or refused is None:
                    log.warning("Invalid HTTP request received.")
                else:
                    log.warning("Invalid HTTP request received.", exc_info=refused)
                self._refuse(400, "Invalid HTTP request received.")
            return
        if self._in_head:  # a head is still incomplete: bound its size, and the time it may take
            self._head_fed = self._head_fed + len(data) if in_head else 0
            if self._head_fed > self.limits.max_request_head:
                self._refuse(431, "Request Header Fields Too Large")
            elif self._head_timer is None:
                self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    # Parser callbacks
    def on_message_begin(self) -> None:
        self._in_head = True
        self.url = b""
        self.headers = []
        self.expect_continue = False
        self._upgrade_header = False
        self._connection_header = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_request_line:
            raise Refused(414, "URI Too Long")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace, which is not part of the value
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        elif name == b"upgrade":
            self._upgrade_header = True
        elif name == b"connection" or name == b"proxy-connection":
            self._connection_header = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        limits = self.limits
        headers = self.headers
        url = self.url
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if len(headers) > limits.max_headers:
            raise Refused(431, "Request Header Fields Too Large")
        big = self._head_fed + self._fed > limits.max_request_head  # else the exact size need not be summed
        if big and head_size(parser.get_method(), url, headers) > limits.max_request_head:
            raise Refused(431, "Request Header Fields Too Large")
        self._head_fed = 0
        if self._upgrade_header and parser.should_upgrade() and self._websocket(headers):
            return  # `data_received` hands the connection over
        raw_method = parser.get_method()
        method = METHODS.get(raw_method) or METHODS.setdefault(raw_method, raw_method.decode("ascii"))
        keep_alive = parser.should_keep_alive()
        # Without a Connection header llhttp keeps a request alive in HTTP/1.1 only (it refuses versions other than
        # 0.9, 1.0, 1.1 and 2.0): the version need not be asked then, which formats a new string each time.
        version = "1.1" if keep_alive and not self._connection_header else parser.get_http_version()
        if url[:1] == b"/" and b"#" not in url:
            raw_path, _, query = url.partition(b"?")
        else:
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path, parsed.query or b""
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        scope = self._scope
        if scope is None:  # made at the first request: a router may set the addresses after `connection_made`
            scope = self._scope = {
                "type": "http", "asgi": self.asgi, "http_version": "1.1", "server": self.server,
                "client": self.client, "scheme": self.scheme, "root_path": self.root_path, "headers": [], "state": {},
                "method": "GET", "path": "/", "raw_path": b"/", "query_string": b"", "extensions": {},
            }  # fmt: skip
        scope = scope.copy()  # a copy of a dict with the same keys, cheaper than a new one (the values are set next)
        scope["http_version"] = version
        scope["headers"] = headers
        scope["state"] = self.app_state.copy()
        scope["method"] = method
        if self.root_path:
            scope["path"] = self.root_path + path
            scope["raw_path"] = self.raw_root + raw_path
        else:
            scope["path"] = path
            scope["raw_path"] = raw_path
        scope["query_string"] = query
        scope["extensions"] = {"http.response.pathsend": PATHSEND}
        http10 = version == "1.0"
        cycle = Cycle(
            scope, self, keep_alive and not http10 and not self.draining, self.expect_continue, method == "HEAD",
            http10,
        )
        if self.timed:
            cycle.read_at = perf_counter()
        previous = self.cycle
        self.cycle = cycle
        if previous is None or previous.complete:
            self._run(cycle)
        else:
            self.pause_reading()
            self.pipeline.append(cycle)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.complete:
            cycle.add_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.complete:
            cycle.more_body = False
            cycle.wake()

    # Requests and responses
    def _run(self, cycle: Cycle) -> None:
        """The app's task; it takes itself out of the in-flight set as it ends (no done-callback to schedule).
        Over `--limit-concurrency` (this worker's connections, this one included, or requests in flight, as
        uvicorn counts them), the request is answered 503 instead."""
        limit = self.limit_concurrency
        app = self.app
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
        task = cycle.task = self.loop.create_task(cycle.run(app, self.access if app is self.app else None))
        self.tasks.add(task)

    def default_headers(self) -> bytes:
        defaults = self._defaults
        headers = self.server_state.default_headers
        return defaults.block if headers is defaults.source else defaults.get(headers)

    def response_done(self, cycle: Cycle) -> None:
        """A response ended: the next pipelined request starts, or the connection waits idle."""
        state = self.server_state
        state.total_requests += 1
        if state.total_requests == 1 and HttpProtocol.first_answer is not None:
            HttpProtocol.first_answer()
        if self.transport.is_closing():
            return
        if self.read_paused:
            self.resume_reading()
        if self.pipeline:
            self._run(self.pipeline.popleft())
        elif cycle is self.cycle and not self._in_head:
            self._idle_at = cycle.done_at or perf_counter()  # the clock the count read as the response went out
            if self._idle_timer is None:
                self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        idle_at = self._idle_at
        if idle_at is None or self.transport.is_closing():
            return
        left = idle_at + self.timeout_keep_alive - perf_counter()
        if left <= 0:
            self.transport.close()
        else:
            self._idle_timer = self.loop.call_later(left, self._idle_check)

    def _head_timed_out(self) -> None:
        """A request head did not arrive whole in time (or nothing came on a new connection): close."""
        self._head_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.complete or self._in_head:
            self.transport.close()

    def body_stalled(self) -> None:
        """The request's body stopped arriving while the app waits for it."""
        cycle = self.cycle
        if cycle is not None and not cycle.started and not self.transport.is_closing():
            self.transport.write(refusal(408, "Request Timeout", self.default_headers()))
        self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        cycle = self.cycle
        if cycle is None or cycle.complete or not cycle.started:
            if cycle is not None and not cycle.complete:
                cycle.disconnected = True
            self.transport.write(refusal(status, message, self.default_headers()))
        self.transport.close()
        self._cancel_timers()

    # Upgrades
    def _websocket(self, headers: list[tuple[bytes, bytes]]) -> bool:
        if self.config.ws_protocol_class is None:
            return False
        connection: list[bytes] = []
        upgrade = None
        for name, value in headers:
            if name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
            elif name == b"upgrade":
                upgrade = value.lower()
        return b"upgrade" in connection and upgrade == b"websocket"

    def _upgrade(self, rest: bytes) -> None:
        """The WebSocket handshake goes on in uvicorn's WebSocket protocol, which gets the request again."""
        if not self._websocket(self.headers):
            log.warning("Unsupported upgrade request.")
            return
        self._cancel_timers()
        self.connections.discard(self)
        output = [self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            output += (name, b": ", value, b"\r\n")
        output.append(b"\r\n")
        protocol = self.config.ws_protocol_class(
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        protocol.connection_made(self.transport)
        self.transport.set_protocol(protocol)
        protocol.data_received(b"".join(output) + rest)

    # Flow control
    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._writable
        if waiter is not None:
            self._writable = None
            if not waiter.done():
                waiter.set_result(None)

    async def writable(self) -> None:
        if self.write_paused:
            if self._writable is None:
                self._writable = self.loop.create_future()
            await self._writable

    # The drain (`_Draining`)
    def _close_after(self, cycle: Any) -> None:
        """The connection closes after `cycle`'s response, which says so if its head is not written yet."""
        if cycle.keep_alive and cycle.head is not None:
            cycle.head = cycle.head[:-2] + b"connection: close\r\n\r\n"
        cycle.keep_alive = False

    def _unset_keepalive_if_required(self) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _cancel_timers(self) -> None:
        self._unset_keepalive_if_required()
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


def configure(limits: Limits) -> None:
    """The worker's limits, for every connection from now on."""
    HttpProtocol.limits = limits
