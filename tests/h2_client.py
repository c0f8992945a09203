"""A small HTTP/2 client on the `h2` library and blocking sockets, for the tests that need frames no ordinary
client sends: resets, floods, oversized header blocks, zero windows. Also raw frames (hyperframe, hpack) for the
attacks `h2` itself would refuse to send."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, SettingsFrame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class H2Client:
    """One HTTP/2 connection (h2c, or TLS with `context`), driven step by step."""

    def __init__(self, port: int, settings: dict[int, int] | None = None, context: ssl.SSLContext | None = None,
                 timeout: float = 20.0, prefix: bytes = b"") -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if prefix:  # a PROXY protocol header
            raw.sendall(prefix)
        self.sock: socket.socket = context.wrap_socket(raw, server_hostname="localhost") if context else raw
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.events: list[h2.events.Event] = []
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path: str = "/", method: str = "GET", body: bytes | None = None,
                headers: Iterable[tuple[str, str]] = (), end: bool = True) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "localhost"), *headers]
        self.conn.send_headers(stream_id, fields, end_stream=end and body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=end)
        self.flush()
        return stream_id

    def read(self, timeout: float = 20.0) -> list[h2.events.Event]:
        """What arrives within `timeout` (at least one read); [] once the server closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return []
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.conn.receive_data(data)
        self.events += events
        with contextlib.suppress(OSError):
            self.flush()
        return events

    def until(self, done: Any, timeout: float = 20.0) -> list[h2.events.Event]:
        """Read until `done(events so far)` is true or the server closes; the events read."""
        deadline = time.monotonic() + timeout
        while not done(self.events) and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; events: {self.events[-5:]}")
            self.read(left)
        return self.events

    def response(self, stream_id: int, timeout: float = 20.0) -> tuple[int, dict[bytes, bytes], bytes]:
        """Status, headers and body of a stream, its window opened as the body arrives."""
        self.until(lambda events: any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
                                      and e.stream_id == stream_id for e in events)
                   or self._consume(stream_id), timeout)
        status, headers, body = 0, {}, b""
        for event in self.events:
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
                status = int(headers[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
            elif isinstance(event, h2.events.StreamReset):
                raise AssertionError(f"stream {stream_id} reset: {event.error_code!r}")
        return status, headers, body

    def _consume(self, stream_id: int) -> bool:
        """Acknowledge the data received so far (a real client's window keeps opening); never done by itself."""
        for event in self.events:
            if isinstance(event, h2.events.DataReceived) and event.flow_controlled_length and not getattr(
                    event, "acked", False):
                event.acked = True  # type: ignore[attr-defined]
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        with contextlib.suppress(OSError):
            self.flush()
        return False

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        for event in self.events:
            if isinstance(event, h2.events.ConnectionTerminated):
                return event
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def raw_connection(port: int, timeout: float = 20.0) -> socket.socket:
    """A plain connection that has sent the preface and an empty SETTINGS: frames are written by hand next."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(PREFACE + SettingsFrame(0).serialize())
    return sock


def header_block(fields: list[tuple[bytes, bytes]], encoder: Encoder | None = None) -> bytes:
    return (encoder or Encoder()).encode(fields)


def headers_frames(stream_id: int, block: bytes, size: int = 16384, end_stream: bool = True) -> list[Frame]:
    """A header block as HEADERS + CONTINUATION frames of `size` bytes."""
    pieces = [block[i:i + size] for i in range(0, len(block), size)] or [b""]
    frames: list[Frame] = []
    for index, piece in enumerate(pieces):
        frame: Frame = HeadersFrame(stream_id, data=piece) if index == 0 else ContinuationFrame(stream_id, data=piece)
        if index == 0 and end_stream:
            frame.flags.add("END_STREAM")
        if index == len(pieces) - 1:
            frame.flags.add("END_HEADERS")
        frames.append(frame)
    return frames


class FrameReader:
    """Raw frames from a socket, parsed with hyperframe (no state machine: a GOAWAY does not stop the reading)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.closed = False

    def next(self, deadline: float) -> Frame | None:
        """The next frame, or None once the server closed or `deadline` (monotonic) passed."""
        while True:
            if len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) >= 9 + length:
                    frame.parse_body(memoryview(self.buffer[9:9 + length]))
                    self.buffer = self.buffer[9 + length:]
                    return frame
            if self.closed:
                return None
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
            self.buffer += data


def frames_until_close(sock: socket.socket, timeout: float = 20.0) -> tuple[list[Frame], bool]:
    """Read raw frames until the server closes: the frames, and whether it closed (not our timeout)."""
    reader = FrameReader(sock)
    deadline = time.monotonic() + timeout
    frames: list[Frame] = []
    while (frame := reader.next(deadline)) is not None:
        frames.append(frame)
    return frames, reader.closed


def goaway_code(frames: list[Frame]) -> int | None:
    """The error code of the last GOAWAY among `frames`."""
    codes = [frame.error_code for frame in frames if isinstance(frame, GoAwayFrame)]
    return codes[-1] if codes else None


SETTINGS = h2.settings.SettingCodes
