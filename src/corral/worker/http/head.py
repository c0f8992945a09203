"""The bytes of a response head: status lines made once, the server's default headers (Date, refreshed once a
second by uvicorn's server tick) joined once per change, and canned answers for requests refused before an app
sees them."""

from __future__ import annotations

import http
from typing import Any

CRLF = b"\r\n"


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


STATUS_LINE = {status: _status_line(status) for status in range(100, 600)}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class DefaultHeaders:
    """The server-wide headers as one block of bytes, rebuilt only when the server replaces its list (the Date
    header changes once a second): a response costs one identity check, not a join of each header."""

    __slots__ = ("block", "source")

    def __init__(self) -> None:
        self.source: list[tuple[bytes, bytes]] | None = None
        self.block = b""

    def get(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        if headers is not self.source:
            self.source = headers
            self.block = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)
        return self.block


def refusal(status: int, message: str, defaults: bytes) -> bytes:
    """A complete plain-text response that closes the connection: the answer to a request the server refuses."""
    body = message.encode("ascii")
    return b"".join((
        STATUS_LINE[status], defaults,
        b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body),
        body,
    ))


_BUSY = b"Service Unavailable"


async def service_unavailable(scope: Any, receive: Any, send: Any) -> None:
    """The answer to a request over `--limit-concurrency`: 503, and the connection closes (one less to hold)."""
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(_BUSY)),
        (b"connection", b"close"),
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": _BUSY})
