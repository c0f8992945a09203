"""HPACK with memory: an encoder and a decoder (hpack's, pure Python) that reuse the result for a header list or a
header block they coded before, as long as their dynamic table has not changed since.

HPACK's output depends on the dynamic table, which both ends keep in step, so an encoded block can be reused only
while the table is exactly as it was, and only if coding it did not change the table (every field was found in
it, or sent without indexing). A counter the table bumps on every change (an entry added, a resize) tells the
two apart: a result is kept only if the counter did not move while it was computed, and all kept results are
dropped when it moves. What a connection repeats (a hello's response head, the same request from a load balancer
or a client library) then costs a dict lookup instead of hpack's per-field Python.

Bounds: at most `ENTRIES` results per coder, each of at most `FIELDS` fields; the decoder keeps only blocks up to
`BLOCK` bytes (a request whose fields are all in the table is a few bytes), so a connection holds some 20 KiB more
at most, whatever its client sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder, HeaderTuple
from hpack.table import HeaderTable

ENTRIES = 8
FIELDS = 32
BLOCK = 256
LENGTH = b"\x0f\x0d"  # a literal without indexing whose name is the static table's 28, content-length


class VersionedTable(HeaderTable):
    """hpack's header table, with a counter of its changes."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.version += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.version += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class CachingEncoder(Encoder):
    """Takes lists of plain `(name, value)` bytes tuples (what Corral sends; never-indexed fields are not used).

    `content-length`, which changes from response to response, is sent after the other fields as a literal that
    does not enter the table (RFC 7541, 6.2.2), so that it neither evicts entries nor stops the rest of the head
    from being reused."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = self.table = VersionedTable()
        self.cache: dict[tuple[Any, ...], bytes] = {}
        self.version = 0

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if self.table.resized or type(headers) is not list or len(headers) > FIELDS:  # a size update goes first
            return super().encode(headers, huffman)
        for index, (name, value) in enumerate(headers):
            if name == b"content-length" and len(value) < 127:
                value = bytes(value)
                rest = headers[:index] + headers[index + 1:]
                return self._reused(rest, huffman) + LENGTH + bytes((len(value),)) + value
        return self._reused(headers, huffman)

    def _reused(self, headers: list[Any], huffman: bool) -> bytes:
        table = self.table
        key = tuple(headers)
        version = table.version
        if version != self.version:
            self.cache.clear()
            self.version = version
        else:
            block = self.cache.get(key)
            if block is not None:
                return block
        block = super().encode(headers, huffman)
        if table.version == version and len(self.cache) < ENTRIES:
            self.cache[key] = block
        return block


class CachingDecoder(Decoder):
    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size)
        self.header_table = self.table = VersionedTable()
        self.cache: dict[tuple[bytes, bool, int, int], tuple[HeaderTuple, ...]] = {}
        self.version = 0

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        if len(data) > BLOCK:
            return super().decode(data, raw)
        table = self.table
        key = (bytes(data), raw, self.max_header_list_size, self.max_allowed_table_size)
        version = table.version
        if version != self.version:
            self.cache.clear()
            self.version = version
        else:
            headers = self.cache.get(key)
            if headers is not None:
                return list(headers)
        decoded = super().decode(data, raw)
        if table.version == version and len(self.cache) < ENTRIES and len(decoded) <= FIELDS:  # type: ignore[arg-type]
            self.cache[key] = tuple(decoded)
        return decoded
