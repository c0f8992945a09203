"""An HTTP/2 request's ASGI scope: HTTP/1.1's, with `http_version` "2", the pseudo-headers as method, path and
`host`, and split `cookie` fields joined into one (RFC 9113, 8.2.3); and the checks of a request's header list."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import h2.exceptions
import h2.utilities

PATHSEND: dict[str, Any] = {}  # the extension has no parameters
REQUEST = h2.utilities.HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False,
)  # fmt: skip
TRAILERS = REQUEST._replace(is_trailer=True)
REMEMBERED = 8  # header lists remembered as checked, per connection: at most `SMALL` bytes each
SMALL = 2048


class CheckedHeaders:
    """h2's checks of a request's header list (RFC 9113, 8.2 and 8.3: characters, pseudo-headers, connection
    headers, `te`, `:authority` against `host`...), run by Corral rather than inside h2 so that a list the connection
    checked before (the same block again, which the HPACK decoder's memory hands back) is not checked again."""

    __slots__ = ("passed",)

    def __init__(self) -> None:
        self.passed: set[tuple[Any, ...]] = set()

    def problem(self, headers: list[Any], trailers: bool = False) -> str | None:
        """What makes the request (or its `trailers`, never remembered) malformed, or None."""
        key = tuple(headers)
        if key in self.passed and not trailers:
            return None
        try:
            for _ in h2.utilities.validate_headers(headers, TRAILERS if trailers else REQUEST):
                pass
        except h2.exceptions.ProtocolError as exc:
            return str(exc)
        if trailers or len(self.passed) >= REMEMBERED:
            return None
        if sum(len(name) + len(value) for name, value in headers) <= SMALL:
            self.passed.add(key)
        return None


def request_scope(connection: Any, raw: list[tuple[bytes, bytes]]) -> dict[str, Any] | None:
    method = path = authority = b""
    headers: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    for name, value in raw:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
        elif name == b"cookie":
            cookies.append(value)
        else:
            headers.append((name, value))
    if not method or (not path and method != b"CONNECT"):
        return None
    if authority and not any(name == b"host" for name, _ in headers):
        headers.insert(0, (b"host", authority))
    if cookies:  # HTTP/2 may split the cookie header; an HTTP/1.1 app expects one (RFC 9113, 8.2.3)
        headers.append((b"cookie", b"; ".join(cookies)))
    raw_path, _, query = path.partition(b"?")
    raw_path = raw_path.partition(b"#")[0]
    text = raw_path.decode("latin-1")
    if "%" in text:
        text = unquote(text)
    root_path = connection.root_path
    return {
        "type": "http",
        "asgi": connection.asgi,
        "http_version": "2",
        "server": connection.server,
        "client": connection.client,
        "scheme": connection.scheme,
        "root_path": root_path,
        "headers": headers,
        "state": connection.app_state.copy(),
        "method": method.decode("ascii", "replace"),
        "path": root_path + text,
        "raw_path": root_path.encode("ascii") + raw_path,
        "query_string": query,
        "extensions": {"http.response.pathsend": PATHSEND},
    }
