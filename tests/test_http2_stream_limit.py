"""A client that opens one stream more than SETTINGS_MAX_CONCURRENT_STREAMS: RFC 9113, 5.1.2 makes it a stream
error (PROTOCOL_ERROR or REFUSED_STREAM), so only that stream is refused and the connection keeps serving the
others. granian and uvicorn (zttp) answer REFUSED_STREAM; `h2` raises TooManyStreamsError, a connection error."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest
from hpack import Encoder
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, RstStreamFrame

from h2_client import FrameReader, raw_connection
from harness import Corral, write_app

pytestmark = pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")

LIMIT = 10
APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    size = 0
    while True:  # the stream stays open until the client ends its body
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corral]:
    tmp_path = tmp_path_factory.mktemp("h2limit")
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app:app", "-w", "1", "--no-access-log", "--h2-max-concurrent-streams", str(LIMIT))
    try:
        corral.wait_ready(1)
        yield corral
    finally:
        corral.stop()


def test_a_stream_beyond_the_limit_is_refused_and_the_connection_goes_on(server: Corral) -> None:
    encoder = Encoder()
    post = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"localhost"), (b":path", b"/echo")]
    streams = [1 + 2 * index for index in range(LIMIT + 1)]
    sock = raw_connection(server.port)
    try:
        sock.sendall(b"".join(HeadersFrame(stream_id, data=encoder.encode(post), flags=["END_HEADERS"]).serialize()
                              for stream_id in streams))
        reader = FrameReader(sock)
        deadline = time.monotonic() + 20
        refused = None
        while refused is None and (frame := reader.next(deadline)) is not None:
            assert not isinstance(frame, GoAwayFrame), f"a connection error for one stream too many: {frame}"
            if isinstance(frame, RstStreamFrame):
                assert frame.stream_id == streams[-1], frame
                refused = frame.error_code
        assert refused in (0x1, 0x7)  # PROTOCOL_ERROR or REFUSED_STREAM, as a stream error
        sock.sendall(DataFrame(1, data=b"abc", flags=["END_STREAM"]).serialize())  # the first stream still runs
        answered = False
        while not answered and (frame := reader.next(deadline)) is not None:
            answered = isinstance(frame, DataFrame) and frame.stream_id == 1 and frame.data == b"3"
        assert answered
    finally:
        sock.close()
