"""How much of a request head the protocol accepts, and for how long it waits for one.

A request refused on these grounds gets a plain answer and the connection closes: a request line too long is 414,
a head too large or with too many fields is 431; a head that does not arrive whole within `header_timeout` (a
slowloris holding connections open a byte at a time) is closed. The defaults are nginx's and h11's order of size.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_line: int = 8 * 1024  # bytes of the request target: 414 beyond
    max_request_head: int = 64 * 1024  # bytes of request line and header fields together: 431 beyond
    max_headers: int = 100  # header fields: 431 beyond
    header_timeout: float = 10.0  # seconds for a whole request head, from its first byte (or the connection's start)


class Refused(Exception):
    """Raised from the parser's callbacks: the request is answered with `status` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def head_size(method: bytes, url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """The size of a parsed head as sent, give or take optional whitespace."""
    return len(method) + len(url) + 12 + sum(len(name) + len(value) + 4 for name, value in headers)
