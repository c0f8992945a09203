"""Read SNI and ALPN from a TLS ClientHello: Python's sni_callback cannot see the client's ALPN list."""

from __future__ import annotations

from dataclasses import dataclass

RECORD_HEADER = 5
HANDSHAKE = 22
CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16


@dataclass(frozen=True)
class Hello:
    server_name: str | None
    alpn: tuple[str, ...]


class NotClientHello(ValueError):
    pass


def record_length(data: bytes) -> int | None:
    """Bytes needed for the first TLS record, None until its header is complete."""
    if len(data) < RECORD_HEADER:
        return None
    if data[0] != HANDSHAKE:
        raise NotClientHello("not a TLS handshake record")
    return RECORD_HEADER + int.from_bytes(data[3:5], "big")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise NotClientHello("truncated ClientHello")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.number(length_size))


def parse_client_hello(record: bytes) -> Hello:
    """Parse the ClientHello in the first TLS record (a hello split over records is refused)."""
    body = _Reader(record[RECORD_HEADER:])
    if body.number(1) != CLIENT_HELLO:
        raise NotClientHello("first handshake message is not a ClientHello")
    hello = _Reader(body.vector(3))
    hello.take(2 + 32)  # legacy_version, random
    hello.vector(1)  # session id
    hello.vector(2)  # cipher suites
    hello.vector(1)  # compression methods
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    if hello.pos == len(hello.data):
        return Hello(None, ())
    extensions = _Reader(hello.vector(2))
    while extensions.pos < len(extensions.data):
        kind = extensions.number(2)
        ext = _Reader(extensions.vector(2))
        if kind == EXT_SERVER_NAME:
            names = _Reader(ext.vector(2))
            while names.pos < len(names.data):
                name_type = names.number(1)
                value = names.vector(2)
                if name_type == 0:
                    server_name = value.decode("ascii", "replace").lower()
        elif kind == EXT_ALPN:
            protocols = _Reader(ext.vector(2))
            found: list[str] = []
            while protocols.pos < len(protocols.data):
                found.append(protocols.vector(1).decode("ascii", "replace"))
            alpn = tuple(found)
    return Hello(server_name, alpn)
