"""Client connections of the manager's own servers (`--admin-bind` HTTP, the control socket), bounded.

Whatever clients do (hold connections open, trickle bytes, send huge lines, reset), what it costs the manager
is bounded: at most `limit` connections are open at once; when one more arrives at the limit, the oldest
connection still waiting for its request is closed to make room (a new probe beats an idle or slowloris
client), or the newcomer is closed when every connection is busy. Running out of file descriptors on accept
pauses accepting briefly, logged once; an exception from a connection's handler ends that connection only.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("corral")

# accept() failures that mean "no resources right now": the pending connection stays in the backlog
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# accept() failures of one connection (reset before it was accepted): try the next one
_TRANSIENT_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN, errno.EINTR}
ACCEPT_PAUSE = 0.1
WARNING_INTERVAL = 10.0
CLOSE_TIMEOUT = 5.0


def connection_limit(share: int, low: int, high: int) -> int:
    """A share (1/`share`) of the soft RLIMIT_NOFILE, kept within [low, high]."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return high
    return max(low, min(high, soft // share))


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (what systemd and nginx do); (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError):  # a kernel's nr_open below the hard limit: keep what we have
            return soft, soft
        return soft, wanted
    return soft, soft


class Connection:
    """One client. `waiting` is True while its next request has not fully arrived: it may be closed for room."""

    __slots__ = ("client", "since", "task", "transport", "waiting")

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.since = time.monotonic()
        self.waiting = True

    def wait_for_request(self) -> None:
        self.waiting, self.since = True, time.monotonic()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]
        else:
            self.client.close()  # its task may be cancelled before it ever runs
        if self.task is not None:
            self.task.cancel()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Connection], Awaitable[None]]


class Server:
    """Accepts on a listening socket and runs `handler` per connection, within `limit` connections."""

    def __init__(self, sock: socket.socket, handler: Handler, *, name: str, limit: int, line_limit: int) -> None:
        self.sock = sock
        self.handler = handler
        self.name = name
        self.limit = limit
        self.line_limit = line_limit
        self.connections: set[Connection] = set()
        self._accepting: asyncio.Task[None] | None = None
        self._warned_at = -WARNING_INTERVAL

    def start(self) -> None:
        self.sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    def close(self) -> None:
        """Stop accepting and end every connection at once."""
        if self._accepting is not None:
            self._accepting.cancel()
        for connection in list(self.connections):
            connection.abort()

    async def shutdown(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop accepting, end idle connections, let busy ones finish their answer (within `timeout`)."""
        if self._accepting is not None:
            self._accepting.cancel()
        for connection in [c for c in self.connections if c.waiting]:
            connection.abort()
        busy = [c.task for c in self.connections if c.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=timeout)
        self.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    self._warn(f"cannot accept a connection: {exc.strerror}; retrying")
                    await asyncio.sleep(ACCEPT_PAUSE)
                    continue
                if exc.errno in _TRANSIENT_ERRNOS:
                    continue
                log.error("%s: accept failed: %s; no more connections are accepted", self.name, exc)
                return
            self._admit(client)
            # sock_accept does not yield while the backlog is full: let closed connections release their
            # descriptors (a transport closes its socket in a callback) before taking the next one
            await asyncio.sleep(0)

    def _admit(self, client: socket.socket) -> None:
        if len(self.connections) >= self.limit:
            waiting = [c for c in self.connections if c.waiting]
            if not waiting:
                self._warn(f"{self.limit} connections are busy; refusing one more")
                client.close()
                return
            oldest = min(waiting, key=lambda c: c.since)
            self.connections.discard(oldest)
            oldest.abort()
            self._warn(f"{self.limit} connections open; closing the longest waiting to make room")
        connection = Connection(client)
        self.connections.add(connection)
        connection.task = asyncio.get_running_loop().create_task(self._serve(connection))

    async def _serve(self, connection: Connection) -> None:
        client = connection.client
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(sock=client, limit=self.line_limit)
            connection.transport = writer.transport
            await self.handler(reader, writer, connection)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
        except (OSError, TimeoutError, EOFError, asyncio.CancelledError):
            pass
        except Exception as exc:  # a bug in a handler ends this connection, never the manager
            log.error("%s: a connection failed: %s: %s", self.name, type(exc).__name__, exc)
        finally:
            if writer is not None:
                writer.transport.abort()
            else:
                client.close()
            self.connections.discard(connection)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARNING_INTERVAL:
            self._warned_at = now
            log.warning("%s: %s", self.name, message)

