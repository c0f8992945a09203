"""A WSGI app served as an ASGI app, over a pool of threads per worker.

The WSGI callable runs in one of `--threads` threads; the event loop only moves bytes, so whatever serves ASGI
in the worker (its HTTP protocol, TLS, proxy headers, metrics, access log, drain) serves WSGI the same way.
a2wsgi builds the environ (`wsgi.input` streams the request body from the loop, `SCRIPT_NAME` from the scope's
`root_path` or the `SCRIPT_NAME` variable, `REMOTE_ADDR` and `wsgi.url_scheme` from the scope after Corral's
proxy-header layer); this module completes it (`wsgi.errors` on stderr, `wsgi.file_wrapper`, `PATH_INFO` below
`SCRIPT_NAME`), sends the response (a2wsgi's own sender sends the headers at `start_response`, which PEP 3333
forbids, and hops through a queue per message), stops pulling from a streamed response once its client has gone
(the thread would otherwise run an endless generator forever), and keeps, for the worker's heartbeat, when each
running request started: the loop stays free while a thread is stuck, so the heartbeat alone would not see it.

Made in the worker, after the fork: the template holds no threads.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from a2wsgi.wsgi import Body, build_environ


class ClientDisconnected(OSError):
    """The client left while its response streamed: raised in the app's thread (from `write()`, or between two
    chunks of its iterable) so that it stops producing; the iterable is then closed."""


class Incoming:
    """A request's `receive`, shared by `wsgi.input` and, once the response streams, a watch for the client leaving.

    ASGI tells a departure only through `receive` (`http.disconnect`), which `wsgi.input` also reads, so the two
    take turns (one `receive` at a time). Body the watch reads waits here for `wsgi.input`; the watch reads no
    more until it is taken (one message at most: flow control holds), except the last one, after which only the
    departure or the response's end can come.
    """

    def __init__(self, receive: Any) -> None:
        self._receive = receive
        self._turn = asyncio.Lock()
        self._held: dict[str, Any] | None = None
        self._taken = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        """For `wsgi.input`."""
        if self._held is None:
            async with self._turn:
                if self._held is None:
                    return await self._receive()  # type: ignore[no-any-return]
        message, self._held = self._held, None
        self._taken.set()
        return message

    async def watch(self, response: Response) -> None:
        """Until the client leaves (the response is then told) or the task is cancelled (the response ended)."""
        while True:
            async with self._turn:
                message = await self._receive()
            if message["type"] == "http.disconnect":
                response.gone = True
                return
            self._held = message
            if message.get("more_body", False):
                self._taken.clear()
                await self._taken.wait()


class FileWrapper:
    """`wsgi.file_wrapper` (PEP 3333): the file in blocks; closing the response closes the file."""

    def __init__(self, filelike: IO[bytes], block_size: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        while block := self.filelike.read(self.block_size):
            yield block

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


class WSGIApp:
    """The ASGI app a worker serves for a WSGI callable."""

    def __init__(self, app: Any, threads: int) -> None:
        self.app = app
        self.threads = threads
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="corral-wsgi")
        self.running: dict[int, float] = {}  # thread id: when its request started (monotonic)
        self.in_flight = 0  # requests handed to the pool, running or waiting for a thread (changed on the loop)
        self.reported: set[int] = set()  # threads already reported stuck

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        loop = asyncio.get_running_loop()
        incoming = Incoming(receive)
        environ: dict[str, Any] = dict(build_environ(scope, Body(loop, incoming.receive)))  # type: ignore[arg-type]
        script, path = environ["SCRIPT_NAME"], environ["PATH_INFO"]
        if script and path.startswith(script) and path[len(script) : len(script) + 1] in ("", "/"):
            environ["PATH_INFO"] = path[len(script) :]  # a SCRIPT_NAME from the environment: the path is below it
        environ["wsgi.errors"] = sys.stderr
        environ["wsgi.file_wrapper"] = FileWrapper
        response = Response(self, loop, send, incoming)
        self.in_flight += 1
        try:
            await loop.run_in_executor(self.executor, response.run, environ)
        finally:
            self.in_flight -= 1
            if response.watch is not None:
                response.watch.cancel()

    def occupancy(self) -> float:
        """Threads busy over threads; 1.0 when a request waits for a thread."""
        return min(1.0, self.in_flight / self.threads)

    def stuck(self, timeout: float) -> tuple[int, float] | None:
        """The thread whose request has gone longest without sending anything, and since when, once that is more
        than `timeout` ago."""
        running = list(self.running.items())
        if not running:
            return None
        ident, started = min(running, key=lambda item: item[1])
        return (ident, started) if time.monotonic() - started > timeout else None


class Response:
    """One request's response, produced in a pool thread.

    As PEP 3333 asks, the status and headers go out with the first non-empty body chunk (or at the end), so an
    app may still replace them (`start_response` with `exc_info`) until then. Each chunk is sent as the app
    produces it; the one that completes the declared Content-Length also ends the response, and a list or tuple
    (every chunk already there) is sent one chunk behind so that its last chunk does: a one-chunk response (Flask's
    and Django's, which declare their length) is handed to the loop once, headers, body and end together, and
    written in one step of the loop; a drain that starts meanwhile cannot fall between its headers and its end,
    where the response could no longer say `Connection: close`. A generator's chunk is never held back waiting
    for the next one: a stream arrives as it is produced.

    A response that streams (a first chunk sent with more to come) starts the watch for its client's departure;
    once the client has gone, the thread stops pulling chunks from the app (`ClientDisconnected`) and closes the
    iterable, as PEP 3333 asks, and is free for the next request. A one-chunk response costs no watch.
    """

    def __init__(self, pool: WSGIApp, loop: asyncio.AbstractEventLoop, send: Any, incoming: Incoming) -> None:
        self.pool = pool
        self.loop = loop
        self._send = send
        self.incoming = incoming
        self.start: dict[str, Any] | None = None
        self.started = False
        self.ended = False
        self.remaining: int | None = None  # bytes of the declared Content-Length not sent yet
        self.watch: asyncio.Task[None] | None = None  # set and read on the loop
        self.gone = False  # the client left (set on the loop, read in the thread)

    async def _send_all(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            await self._send(message)
        if self.watch is None and messages[-1]["more_body"]:
            self.watch = self.loop.create_task(self.incoming.watch(self))

    def send_body(self, data: bytes, last: bool = False) -> None:
        """A non-empty chunk, sent at once; it ends the response when it is the last or completes the length."""
        if self.ended:
            raise RuntimeError("the WSGI app sent more than its Content-Length")
        if self.remaining is not None:
            self.remaining -= len(data)
            last = last or self.remaining <= 0
        self.emit(data, not last)

    def emit(self, body: bytes, more: bool) -> None:
        self.ended = not more
        messages = [{"type": "http.response.body", "body": body, "more_body": more}]
        if not self.started:
            if self.start is None:
                raise RuntimeError("the WSGI app returned a body before it called start_response")
            messages.insert(0, self.start)
            self.started = True
        asyncio.run_coroutine_threadsafe(self._send_all(messages), self.loop).result()
        self.pool.running[threading.get_ident()] = time.monotonic()  # progress: a long download is not stuck
        if self.gone:
            raise ClientDisconnected("the client disconnected")

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None:
            if self.started:  # too late to replace the response: the error goes on up
                raise exc_info[1].with_traceback(exc_info[2])
        elif self.start is not None:
            raise RuntimeError("start_response called a second time without exc_info")
        code = int(status.split(" ", 1)[0])
        raw = [(name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")) for name, value in headers]
        self.start = {"type": "http.response.start", "status": code, "headers": raw}
        self.remaining = next((int(value) for name, value in raw if name == b"content-length" and value.isdigit()),
                              None)
        return self.write

    def write(self, data: bytes) -> None:
        """The `write()` callable of start_response: sent at once (an app using it streams)."""
        if data:
            self.send_body(data)

    def run(self, environ: dict[str, Any]) -> None:
        pool = self.pool
        ident = threading.get_ident()
        pool.running[ident] = time.monotonic()
        try:
            iterable = pool.app(environ, self.start_response)
            try:
                whole = isinstance(iterable, (list, tuple))  # every chunk is there: hold one back, the last ends
                pending = b""
                for chunk in iterable:
                    if chunk:
                        if pending:
                            self.send_body(pending)
                        pending = chunk
                        if not whole:
                            self.send_body(pending)
                            pending = b""
                    elif self.gone:  # an app that yields empty chunks while it waits
                        raise ClientDisconnected("the client disconnected")
                if pending:
                    self.send_body(pending, last=True)
                elif not self.ended:
                    self.emit(b"", False)
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
        except ClientDisconnected:
            pass  # nobody to answer: the iterable is closed, the thread is free
        finally:
            pool.running.pop(ident, None)


def thread_stack(ident: int) -> tuple[str, list[tuple[str, int, str]]]:
    """A thread's stack as Python prints a traceback, and its frames innermost first (file, line, function)."""
    frame = sys._current_frames().get(ident)
    if frame is None:
        return "", []
    summary = traceback.extract_stack(frame)
    frames = [(f.filename, f.lineno or 0, f.name) for f in reversed(summary)]
    return "".join(summary.format()), frames
