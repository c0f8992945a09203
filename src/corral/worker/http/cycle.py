"""One request-response cycle: the ASGI `receive` and `send` of a request, on its connection's protocol.

The response head is not written when the app sends `http.response.start`: it is joined to the first body
message, so a response sent whole takes one `write` (one system call); a streamed response's head goes out by the
end of the loop's pass when its first body does not come with it. The response is counted (status class,
latency from the request head's parsing to the response's start, as docs/metrics.md defines them) where the
protocol writes its head: no layer around `send`, no closure per request. A head never written (the app failed
first, and the client gets a 500 instead) is not counted; the 500 is.
`send` is a plain method returning a finished awaitable, not a coroutine, except when it has to wait (the client
reads slowly, or a file is sent).
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Awaitable, Generator, Iterable
from time import perf_counter
from typing import Any, Protocol

from corral.metrics_shm import BOUNDS
from corral.worker import metrics, shedding
from corral.worker.app_ending import AppEnding
from corral.worker.http.head import CONTINUE, STATUS_LINE
from corral.worker.metrics import FIRST_BOUND, ROW_OF, SUM, TABLE, Logged


class Connection(Protocol):
    """What a cycle uses of its connection's protocol (`HttpProtocol`), named here so that the two modules do
    not import each other."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    tasks: set[asyncio.Task[None]]
    timeout_keep_alive: float
    write_paused: bool
    timed: bool

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def body_stalled(self) -> None: ...
    def default_headers(self) -> bytes: ...
    def response_done(self, cycle: Cycle) -> None: ...
    async def writable(self) -> None: ...


HIGH_WATER = 65536  # request body bytes buffered before the connection stops reading
JOIN_LIMIT = 65536  # a larger body is written beside its head (one writev), not copied into it
FILE_CHUNK = 256 * 1024
# Response framing
LENGTH, CHUNKED, NONE, UNTIL_CLOSE = 0, 1, 2, 3
UNSET = -1
HEADS_KEPT = 64  # response header lists whose checked bytes are kept: most apps answer with a few over and over


class _Done:
    """An awaitable that is already finished: `await send(...)` without a coroutine per call."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]


DONE = _Done()


class Cycle(AppEnding):
    __slots__ = (
        "buffered",
        "chunks",
        "done_at",
        "ended",
        "expect_continue",
        "framing",
        "head_only",
        "http10",
        "keep_alive",
        "more_body",
        "protocol",
        "read_at",
        "remaining",
        "scope",
        "sent",
        "status",
        "task",
        "transport",
        "waiter",
    )

    def __init__(
        self, scope: dict[str, Any], protocol: Connection, keep_alive: bool, expect_continue: bool,
        head_only: bool, http10: bool,
    ) -> None:
        self.scope = scope
        self.protocol = protocol
        self.transport = protocol.transport
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.head_only = head_only
        self.http10 = http10
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.more_body = True
        self.ended = False
        self.waiter: asyncio.Future[None] | None = None
        self.started = False
        self.complete = False
        self.disconnected = False
        self.framing = LENGTH
        self.remaining = 0
        self.status = 0
        self.sent = 0  # body bytes the app sent, for the access log
        self.head: bytes | None = None  # written with the first body message
        self.read_at = 0.0  # when the request's head was parsed, if responses are counted
        self.done_at = 0.0  # when the response was sent whole in one step, if counted: the connection's idle start
        self.task: asyncio.Task[None] | None = None

    @property
    def response_complete(self) -> bool:  # the name `_Draining` knows from uvicorn's cycles
        return self.complete

    # What the protocol feeds in
    def add_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER:
            self.protocol.pause_reading()
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ASGI
    async def run(self, app: Any, access: Logged | None) -> None:
        """Runs the app; with the access log on (`access`), logs the request as the app ends, as `Logged` does."""
        start = perf_counter() if access is not None else 0.0
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if self.raised(exc):
                await self._send_500()
        else:
            if (result is not None or not self.complete) and self.returned(result):
                await self._send_500()
        finally:
            self.protocol.tasks.discard(self.task)
            if access is not None:
                access.log(self.scope, self.status or 500, self.sent, perf_counter() - start)

    def end_mid_response(self) -> None:
        self.transport.close()

    async def _send_500(self) -> None:
        await self.send({
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"21"),
                (b"connection", b"close"),
            ],
        })
        await self.send({"type": "http.response.body", "body": b"Internal Server Error", "more_body": False})

    async def receive(self) -> dict[str, Any]:
        if self.expect_continue:
            self.expect_continue = False
            if not self.transport.is_closing():
                self.transport.write(CONTINUE)
        if not self.chunks and (self.more_body or self.ended) and not self.disconnected and not self.complete:
            await self._wait()
        if self.disconnected or self.complete:
            return {"type": "http.disconnect"}
        chunks = self.chunks
        body = b"" if not chunks else chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if not self.more_body:
            self.ended = True  # a further receive waits for the client to leave or the response to end
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def _wait(self) -> None:
        """Until body arrives, the body ends, the client leaves or the response ends. A body that stops arriving
        for the keep-alive timeout ends the request (the connection closes)."""
        protocol = self.protocol
        waiter = self.waiter = protocol.loop.create_future()
        protocol.resume_reading()
        stall = protocol.loop.call_later(protocol.timeout_keep_alive, protocol.body_stalled) if self.more_body else None
        try:
            await waiter
        finally:
            self.waiter = None
            if stall is not None:
                stall.cancel()

    def send(self, message: dict[str, Any]) -> Awaitable[None]:
        if self.protocol.write_paused and not self.disconnected:
            return self._send_when_writable(message)
        if self.disconnected:
            return DONE
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self._start(message)
        elif self.complete:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")
        elif kind == "http.response.body":
            body = message.get("body", b"")
            self.sent += len(body)
            self._body(body, message.get("more_body", False))
        elif kind == "http.response.pathsend":
            return self._send_file(message["path"])
        else:
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
        return DONE

    async def _send_when_writable(self, message: dict[str, Any]) -> None:
        await self.protocol.writable()
        await self.send(message)

    def _start(self, message: dict[str, Any]) -> None:
        status = message["status"]
        fields = tuple(message.get("headers", ()))
        try:
            known = _HEADS.get(fields)
        except TypeError:  # a field that is not a tuple of bytes: checked each time
            known = _response_fields(fields)
        else:
            if known is None:
                known = _response_fields(fields)
                if len(_HEADS) >= HEADS_KEPT:
                    _HEADS.clear()
                _HEADS[fields] = known
        block, framing, remaining, close_given = known
        keep_alive = self.keep_alive and not close_given
        chunks = b""
        if framing == UNSET:
            if self.head_only or status == 204 or status == 304:
                framing = LENGTH
            elif self.http10:  # an HTTP/1.0 client knows no chunks: the body ends with the connection
                framing = UNTIL_CLOSE
                keep_alive = False
            else:
                framing = CHUNKED
                chunks = b"transfer-encoding: chunked\r\n"
        if keep_alive and shedding.pending and shedding.take():
            keep_alive = False
        extra = chunks if keep_alive or close_given else b"connection: close\r\n" + chunks
        self.head = b"".join((STATUS_LINE[status], self.protocol.default_headers(), block, extra, b"\r\n"))
        self.status = status
        self.remaining = remaining
        self.framing = framing
        self.keep_alive = keep_alive
        self.started = True
        self.expect_continue = False
        if framing != LENGTH:  # a stream: its head goes out now if its first body does not come in this step
            self.protocol.loop.call_soon(self._flush_head)

    def _flush_head(self) -> None:
        head = self.head
        if head is not None and not self.disconnected:
            self.head = None
            if self.read_at:
                metrics.record(self.status, perf_counter() - self.read_at)
            self.transport.write(head)

    def _body(self, body: bytes, more_body: bool) -> None:
        framing = self.framing
        if self.head_only:
            self.remaining = 0
            data = b""
        elif framing == LENGTH:
            size = len(body)
            if size > self.remaining:
                raise RuntimeError("Response content longer than Content-Length")
            self.remaining -= size
            data = body
        elif framing == CHUNKED:
            if body:
                data = b"%x\r\n%s\r\n" % (len(body), body)
                if not more_body:
                    data += b"0\r\n\r\n"
            else:
                data = b"" if more_body else b"0\r\n\r\n"
        else:
            data = body
        head = self.head
        if head is not None:
            self.head = None
            read_at = self.read_at
            if read_at:  # counted: `metrics.record` inlined (the hot path), its clock read kept for the idle timer
                now = perf_counter()
                elapsed = now - read_at
                TABLE[ROW_OF[self.status] + (0 if elapsed <= FIRST_BOUND else bisect_left(BOUNDS, elapsed))] += 1
                TABLE[SUM] += elapsed
                if not more_body:
                    self.done_at = now
            if len(data) > JOIN_LIMIT:
                self.transport.writelines((head, data))
            else:
                self.transport.write(head + data)
        elif data:
            self.transport.write(data)
        if not more_body:
            if self.remaining:
                raise RuntimeError("Response content shorter than Content-Length")
            self._finish()

    async def _send_file(self, path: str) -> None:
        """`http.response.pathsend`: the file's bytes as the body, read in a thread, written as the client reads."""
        loop = self.protocol.loop
        with open(path, "rb") as file:
            fd = file.fileno()
            offset = 0
            while True:
                chunk = await loop.run_in_executor(None, os.pread, fd, FILE_CHUNK, offset)
                offset += len(chunk)
                if self.disconnected:
                    return
                if not chunk:
                    break
                self._body(chunk, True)
                if self.protocol.write_paused:
                    await self.protocol.writable()
        self._body(b"", False)

    def _finish(self) -> None:
        self.complete = True
        if self.waiter is not None:
            self.wake()
        if not self.keep_alive:
            self.transport.close()
        self.protocol.response_done(self)


_HEADS: dict[tuple[Any, ...], tuple[bytes, int, int, bool]] = {}


def _response_fields(fields: Iterable[Any]) -> tuple[bytes, int, int, bool]:
    """An app's response header fields as the head's bytes (names lowercased), checked for what would split the
    response, with the framing they ask for (`Content-Length`: LENGTH and the length, `Transfer-Encoding:
    chunked`: CHUNKED, else UNSET) and whether they say `Connection: close`."""
    framing = UNSET
    remaining = 0
    close_given = False
    parts: list[bytes] = []
    for name, value in fields:
        name = name.lower()
        if name == b"content-length":
            if framing == UNSET:
                remaining = int(value.decode())
                framing = LENGTH
        elif name == b"transfer-encoding":
            if value.lower() == b"chunked":
                remaining = 0
                framing = CHUNKED
        elif name == b"connection" and b"close" in [token.strip() for token in value.lower().split(b",")]:
            close_given = True
        parts += (name, b": ", value, b"\r\n")
    block = b"".join(parts)
    lines = len(parts) >> 2
    if block.count(b"\n") != lines or block.count(b"\r") != lines:
        raise RuntimeError("Invalid HTTP header: CR or LF in a name or value.")
    return block, framing, remaining, close_given
