"""One HTTP/2 stream's ASGI exchange: `receive` and `send` of a request, on its connection (`H2Protocol`).

The request body reaches the app as it arrives; the stream's flow-control window is opened by what the app has
received, not by what arrived, so a client cannot make the worker buffer more than one window per stream. The
response head is held until the first body message (an app that fails before any body still gets its client a
500) or the end of the loop's pass; its body is written as the client's windows allow, and `send` returns only
once its bytes are handed to the connection: a slow reader slows the app down rather than filling memory. A
client's RST_STREAM is an `http.disconnect`. The response is counted (`metrics.record`) as its head is written.
"""

from __future__ import annotations

import asyncio
import os
from itertools import chain
from time import perf_counter
from typing import Any, Protocol

from corral.worker import metrics
from corral.worker.app_ending import AppEnding
from corral.worker.http2.limits import H2Limits

FILE_CHUNK = 256 * 1024
# Headers HTTP/2 forbids in a response (RFC 9113, 8.2.2): dropped from what the app sends.
CONNECTION_HEADERS = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))


class Connection(Protocol):
    """What a stream uses of its connection (`H2Protocol`), named here so that the two modules do not import each
    other."""

    loop: asyncio.AbstractEventLoop
    tasks: set[asyncio.Task[None]]
    timed: bool
    limits: H2Limits

    def default_headers(self) -> list[tuple[bytes, bytes]]: ...
    def acknowledge(self, stream: Stream, size: int) -> None: ...
    def send_head(self, stream: Stream, headers: list[tuple[bytes, bytes]], end: bool) -> None: ...
    def head_ready(self, stream: Stream) -> None: ...
    async def send_data(self, stream: Stream, data: bytes, end: bool) -> None: ...
    def abort(self, stream: Stream) -> None: ...
    def body_stalled(self, stream: Stream) -> None: ...
    def stream_done(self, stream: Stream) -> None: ...


class Stream(AppEnding):
    __slots__ = (
        "body_done",
        "chunks",
        "connection",
        "ended",
        "head_only",
        "more_body",
        "read_at",
        "scope",
        "status",
        "stream_id",
        "task",
        "unacknowledged",
        "waiter",
        "window",
    )

    def __init__(self, stream_id: int, scope: dict[str, Any], connection: Connection, head_only: bool) -> None:
        self.stream_id = stream_id
        self.scope = scope
        self.connection = connection
        self.head_only = head_only
        self.chunks: list[bytes] = []
        self.unacknowledged = 0  # flow-controlled bytes received and not yet given to the app
        self.more_body = True
        self.body_done = False  # the client ended its side (END_STREAM), or left
        self.ended = False  # the app received the last of the body
        self.started = False
        self.complete = False
        self.disconnected = False
        self.status = 0
        self.head: list[tuple[bytes, bytes]] | None = None  # written with the first body message
        self.read_at = perf_counter() if connection.timed else 0.0
        self.waiter: asyncio.Future[None] | None = None  # the app waits for body
        self.window: asyncio.Future[None] | None = None  # a response waits for the client's window
        self.task: asyncio.Task[None] | None = None

    # What the connection feeds in
    def add_body(self, data: bytes, flow_controlled: int) -> None:
        if data:
            self.chunks.append(data)
        self.unacknowledged += flow_controlled
        self.wake()

    def end_body(self) -> None:
        self.more_body = False
        self.body_done = True
        self.wake()

    def lost(self) -> None:
        """The client reset the stream, or the connection closed."""
        self.disconnected = True
        self.body_done = True
        self.wake()
        self.window_opened()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def window_opened(self) -> None:
        window = self.window
        if window is not None and not window.done():
            window.set_result(None)

    # ASGI
    async def run(self, app: Any) -> None:
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if self.raised(exc):
                await self._send_500()
        else:
            if (result is not None or not self.complete) and self.returned(result):
                await self._send_500()
        finally:
            self.connection.tasks.discard(self.task)
            self.connection.stream_done(self)

    def end_mid_response(self) -> None:
        if not self.complete:  # a stream that completed has nothing left to reset
            self.connection.abort(self)

    async def _send_500(self) -> None:
        await self.send({"type": "http.response.start", "status": 500, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21"),
        ]})  # fmt: skip
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})

    async def receive(self) -> dict[str, Any]:
        if not self.chunks and (self.more_body or self.ended) and not self.disconnected and not self.complete:
            connection = self.connection
            self.waiter = connection.loop.create_future()
            stall = (connection.loop.call_later(connection.limits.keep_alive, connection.body_stalled, self)
                     if self.more_body else None)  # a body that stops arriving, as on HTTP/1.1
            try:
                await self.waiter
            finally:
                self.waiter = None
                if stall is not None:
                    stall.cancel()
        if self.disconnected or self.complete:
            return {"type": "http.disconnect"}
        chunks = self.chunks
        body = b"" if not chunks else chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        if self.unacknowledged:
            size, self.unacknowledged = self.unacknowledged, 0
            self.connection.acknowledge(self, size)  # the window opens by what the app took
        if not self.more_body:
            self.ended = True  # a further receive waits for the client to leave or the response to end
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: dict[str, Any]) -> None:
        if self.disconnected:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self._start(message)
        elif self.complete:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")
        elif kind == "http.response.body":
            await self._body(message.get("body", b""), message.get("more_body", False))
        elif kind == "http.response.pathsend":
            await self._send_file(message["path"])
        else:  # trailers included: the scope does not offer them
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")

    def _start(self, message: dict[str, Any]) -> None:
        status = int(message["status"])
        if not 100 <= status <= 599:
            raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
        headers = [(b":status", b"%d" % status), *self.connection.default_headers()]
        given = message.get("headers", ())
        for name, value in given:
            name = bytes(name).lower()
            if name not in CONNECTION_HEADERS:
                if not name or name[0] == 58:  # b":": a pseudo-header is the server's to send
                    raise RuntimeError(f"Invalid HTTP header name {name!r}.")
                headers.append((name, bytes(value)))
        block = b"".join(chain.from_iterable(headers))
        if b"\r" in block or b"\n" in block or b"\0" in block:  # what an HTTP/1.1 hop after us would split on
            raise RuntimeError("Invalid HTTP header: CR, LF or NUL in a name or value.")
        if message.get("trailers"):
            raise RuntimeError("Response trailers are not supported (the scope offers no 'http.response.trailers').")
        self.head = headers
        self.status = status
        self.started = True
        self.connection.head_ready(self)  # written at the end of the loop's pass even if the body waits

    def _write_head(self, end: bool) -> None:
        head = self.head
        if head is None:
            return
        self.head = None
        if self.connection.timed:
            metrics.record(self.status, perf_counter() - self.read_at)
        self.connection.send_head(self, head, end)

    def flush_head(self) -> None:
        if self.head is not None and not self.disconnected and not self.complete:
            self._write_head(False)

    async def _body(self, body: bytes, more_body: bool) -> None:
        if self.head_only:
            body = b""
        if self.head is not None:
            self._write_head(not body and not more_body)
            if not body and not more_body:
                self._finish()
                return
        if body or not more_body:
            await self.connection.send_data(self, body, not more_body)
        if not more_body and not self.disconnected:
            self._finish()

    async def _send_file(self, path: str) -> None:
        """`http.response.pathsend`: the file's bytes as the body, read in a thread, sent as the client reads."""
        loop = self.connection.loop
        with open(path, "rb") as file:
            fd = file.fileno()
            offset = 0
            while not self.disconnected:
                chunk = await loop.run_in_executor(None, os.pread, fd, FILE_CHUNK, offset)
                offset += len(chunk)
                if not chunk:
                    await self._body(b"", False)
                    return
                await self._body(chunk, True)

    def _finish(self) -> None:
        self.complete = True
        self.wake()
