"""The published HTTP/2 attacks against a worker (issue 21), each from a client written on `h2`'s pieces (hpack,
hyperframe): the connection ends the documented way (GOAWAY with its code, or the stream reset), another client is
still served at once, and the worker's memory stays bounded."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import psutil
import pytest
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from h2_client import SETTINGS, FrameReader, H2Client, frames_until_close, goaway_code, header_block, raw_connection
from harness import Corral, write_app

pytestmark = pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")

ENHANCE_YOUR_CALM, CANCEL, REFUSED_STREAM, PROTOCOL_ERROR, NO_ERROR = 0xB, 0x8, 0x7, 0x1, 0x0
REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost"), (b":path", b"/")]

APP = """
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/hold":  # an app that does not notice its client left
        await asyncio.sleep(3)
    if scope["path"] == "/read":
        while (await receive()).get("more_body"):
            pass
    body = b"x" * (1024 * 1024) if scope["path"] == "/big" else b"ok"
    headers = [(b"content-length", b"%d" % len(body))]
    if scope["path"] == "/unique":  # a header value never sent before, as a request id would be
        headers.append((b"x-id", os.urandom(4096).hex().encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corral]:
    tmp_path = tmp_path_factory.mktemp("h2attacks")
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app:app", "-w", "1", "--no-access-log", "--h2-max-resets", "100",
                    "--h2-max-control-frames", "200", "--h2-send-timeout", "1", "--h2-max-header-list-size", "16384",
                    "--header-timeout", "2", "--keep-alive", "2")
    try:
        corral.wait_ready(1)
        yield corral
    finally:
        corral.stop()


def worker_rss(corral: Corral) -> int:
    return int(psutil.Process(corral.ready_pids()[0]).memory_info().rss)


def assert_served_quickly(corral: Corral) -> None:
    """Another client, over HTTP/2 and HTTP/1.1, is answered within a second or so (a loaded CI machine: 3 s)."""
    for extra in (["--http2-prior-knowledge"], []):
        started = time.monotonic()
        answer = subprocess.run(["curl", "-sS", "--max-time", "10", *extra, corral.url + "/"], capture_output=True,
                                text=True, timeout=30)
        assert answer.stdout == "ok", answer.stderr
        assert time.monotonic() - started < 3.0


def send_all(sock: socket.socket, frames: list[bytes], batch: int = 200) -> None:
    """Write frames in batches until done or the server closes."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        for start in range(0, len(frames), batch):
            sock.sendall(b"".join(frames[start:start + batch]))


def attack(corral: Corral, frames: list[bytes]) -> tuple[int | None, bool]:
    """Send `frames` on a fresh h2c connection: the server's GOAWAY code, and whether it closed."""
    before = worker_rss(corral)
    sock = raw_connection(corral.port)
    try:
        send_all(sock, frames)
        received, closed = frames_until_close(sock, timeout=20)
    finally:
        sock.close()
    assert worker_rss(corral) - before < 32 * 1024 * 1024  # bounded: no buffer grew with the attack
    assert_served_quickly(corral)
    return goaway_code(received), closed


def test_rapid_reset_ends_the_connection_with_enhance_your_calm(server: Corral) -> None:
    encoder = Encoder()
    frames = []
    for stream_id in range(1, 2 * 5000, 2):  # 5,000 streams opened and reset at once (CVE-2023-44487)
        frames.append(HeadersFrame(stream_id, data=encoder.encode(REQUEST), flags=["END_HEADERS"]).serialize())
        frames.append(RstStreamFrame(stream_id, error_code=CANCEL).serialize())
    assert attack(server, frames) == (ENHANCE_YOUR_CALM, True)


def test_a_continuation_flood_ends_the_connection_with_enhance_your_calm(server: Corral) -> None:
    block = header_block(REQUEST)
    frames = [HeadersFrame(1, data=block).serialize()]  # END_HEADERS never comes
    frames += [ContinuationFrame(1, data=b"\x00" * 16384).serialize() for _ in range(200)]  # 3.2 MB
    assert attack(server, frames) == (ENHANCE_YOUR_CALM, True)


def test_an_hpack_bomb_ends_the_connection_with_enhance_your_calm(server: Corral) -> None:
    """One 4 KB field in the dynamic table, then referenced a thousand times: 4 KB sent, 4 MB if decoded."""
    block = Encoder().encode(REQUEST + [(b"x-bomb", b"a" * 4000)] * 1000)
    assert len(block) < 8000
    frames = [HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()]
    assert attack(server, frames) == (ENHANCE_YOUR_CALM, True)


@pytest.mark.parametrize("kind", ["ping", "settings", "window_update"])
def test_a_control_frame_flood_ends_the_connection_with_enhance_your_calm(server: Corral, kind: str) -> None:
    frame = {
        "ping": PingFrame(0, opaque_data=b"12345678"),
        "settings": SettingsFrame(0, settings={SETTINGS.MAX_CONCURRENT_STREAMS: 100}),
        "window_update": WindowUpdateFrame(0, window_increment=1),
    }[kind].serialize()
    assert attack(server, [frame] * 20_000) == (ENHANCE_YOUR_CALM, True)


def test_a_zero_window_reader_has_its_stream_reset_after_the_send_timeout(server: Corral) -> None:
    """The client allows no DATA: the 1 MB response waits, unbuffered, then its stream is reset (CANCEL)."""
    before = worker_rss(server)
    sock = raw_connection(server.port)
    try:
        sock.sendall(SettingsFrame(0, settings={SETTINGS.INITIAL_WINDOW_SIZE: 0}).serialize())
        big = [*REQUEST[:3], (b":path", b"/big")]
        sock.sendall(HeadersFrame(1, data=header_block(big), flags=["END_HEADERS", "END_STREAM"]).serialize())
        started = time.monotonic()
        assert_served_quickly(server)  # while the slow reader holds its stream
        reader = FrameReader(sock)
        reset = None
        while (frame := reader.next(started + 20)) is not None:
            if isinstance(frame, RstStreamFrame):
                reset = frame
                break
        assert reset is not None and (reset.stream_id, reset.error_code) == (1, CANCEL)
        assert 0.9 <= time.monotonic() - started < 10
        assert worker_rss(server) - before < 32 * 1024 * 1024
    finally:
        sock.close()


def test_streams_whose_app_still_runs_count_against_the_concurrency_limit(server: Corral) -> None:
    """100 streams opened and reset while their app goes on: the 101st is refused, no app task is added."""
    encoder = Encoder()
    sock = raw_connection(server.port)
    try:
        hold = [*REQUEST[:3], (b":path", b"/hold")]
        frames = []
        for stream_id in range(1, 200, 2):
            frames.append(HeadersFrame(stream_id, data=encoder.encode(hold), flags=["END_HEADERS"]).serialize())
            frames.append(RstStreamFrame(stream_id, error_code=CANCEL).serialize())
        frames.append(HeadersFrame(201, data=encoder.encode(hold), flags=["END_HEADERS", "END_STREAM"]).serialize())
        sock.sendall(b"".join(frames))
        reader = FrameReader(sock)
        deadline = time.monotonic() + 20
        refused = None
        while (frame := reader.next(deadline)) is not None:
            if isinstance(frame, RstStreamFrame) and frame.stream_id == 201:
                refused = frame.error_code
                break
        assert refused == REFUSED_STREAM
    finally:
        sock.close()


def test_an_idle_connection_without_a_request_is_closed_after_the_header_timeout(server: Corral) -> None:
    started = time.monotonic()
    sock = raw_connection(server.port)
    try:
        received, closed = frames_until_close(sock, timeout=20)
    finally:
        sock.close()
    assert closed and goaway_code(received) == NO_ERROR
    assert 1.5 <= time.monotonic() - started < 10  # --header-timeout 2


def test_a_request_body_that_stops_arriving_is_answered_408_after_the_keep_alive_timeout(server: Corral) -> None:
    sock = raw_connection(server.port)
    try:
        post = [(b":method", b"POST"), *REQUEST[1:3], (b":path", b"/read")]
        sock.sendall(HeadersFrame(1, data=header_block(post), flags=["END_HEADERS"]).serialize()
                     + DataFrame(1, data=b"0123456789").serialize())  # and then nothing
        started = time.monotonic()
        reader = FrameReader(sock)
        seen = []
        while (frame := reader.next(started + 20)) is not None:
            seen.append(frame)
            if isinstance(frame, RstStreamFrame):
                break
        headers = [f for f in seen if isinstance(f, HeadersFrame) and f.stream_id == 1]
        assert headers and Decoder().decode(headers[0].data) == [(":status", "408"), ("content-length", "0")]
        assert (seen[-1].stream_id, seen[-1].error_code) == (1, CANCEL)
        assert 1.5 <= time.monotonic() - started < 10  # --keep-alive 2
    finally:
        sock.close()


def test_a_client_that_keeps_ignoring_the_stream_limit_ends_on_the_reset_budget(server: Corral) -> None:
    """Each stream past the advertised 100 is refused on its own (RFC 9113, 5.1.2; tests/test_http2_stream_limit.py)
    and counts as a reset. A thousand at once end the connection: on the reset budget (ENHANCE_YOUR_CALM), or, where
    one read holds more than twice the limit, on h2's own count (PROTOCOL_ERROR)."""
    encoder = Encoder()
    hold = [*REQUEST[:3], (b":path", b"/hold")]
    frames = [HeadersFrame(stream_id, data=encoder.encode(hold), flags=["END_HEADERS", "END_STREAM"]).serialize()
              for stream_id in range(1, 2 * 1000, 2)]
    code, closed = attack(server, frames)
    assert closed and code in (ENHANCE_YOUR_CALM, PROTOCOL_ERROR)


@pytest.mark.parametrize("field", [(b"X-Upper", b"1"), (b"connection", b"close"), (b"te", b"gzip"), (b"x", b"a\0b")])
def test_a_malformed_request_after_well_formed_ones_gets_goaway_protocol_error(
    server: Corral, field: tuple[bytes, bytes]
) -> None:
    """Corral runs h2's header checks itself and remembers the lists that passed: the same request twice (the
    second from memory), then one with a field RFC 9113 forbids, ends the connection as h2 would."""
    encoder = Encoder()
    frames = [HeadersFrame(stream_id, data=encoder.encode(REQUEST), flags=["END_HEADERS", "END_STREAM"]).serialize()
              for stream_id in (1, 3)]
    frames.append(HeadersFrame(5, data=encoder.encode([*REQUEST, field]), flags=["END_HEADERS", "END_STREAM"])
                  .serialize())
    assert attack(server, frames) == (PROTOCOL_ERROR, True)


def test_trailers_with_a_pseudo_header_get_goaway_protocol_error(server: Corral) -> None:
    """Request trailers are dropped, but checked first as h2 would (RFC 9113, 8.1: no pseudo-header in trailers)."""
    encoder = Encoder()
    post = [(b":method", b"POST"), *REQUEST[1:]]
    frames = [HeadersFrame(1, data=encoder.encode(post), flags=["END_HEADERS"]).serialize(),
              DataFrame(1, data=b"body").serialize(),
              HeadersFrame(1, data=encoder.encode([(b":path", b"/again")]), flags=["END_HEADERS", "END_STREAM"])
              .serialize()]
    assert attack(server, frames) == (PROTOCOL_ERROR, True)


def test_a_client_allowing_a_huge_hpack_table_does_not_make_the_worker_keep_one(server: Corral) -> None:
    """The client allows a 1 GiB table for response headers, and the app sends unique 8 KB values (a request id
    would be): the server's encoder keeps 4 KiB whatever the client allows. HPACK keeps the client's decoder table
    the same as the server's encoder table, so the client sees its size."""
    client = H2Client(server.port, settings={SETTINGS.HEADER_TABLE_SIZE: 2**30})
    client.conn.decoder.max_allowed_table_size = 2**30
    client.conn.decoder.max_header_list_size = 2**20
    try:
        for _ in range(4):
            streams = [client.request("/unique") for _ in range(5)]
            for stream in streams:
                assert client.response(stream)[0] == 200
        table = client.conn.decoder.header_table
        assert table.maxsize <= 4096 and table._current_size <= 4096
    finally:
        client.close()
