"""HTTP/2 connections through reloads (issue 21): GOAWAY, the streams already sent finish, nothing is cut.

h2load does not open a new connection when its connection gets a GOAWAY (nghttp2 then counts what is left to send
as failed), so the load is many short connections opened at a steady rate, each sending its streams at once: the
drain must serve every stream a client sent before it saw the GOAWAY.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import h2.errors
import pytest
from hpack import Encoder
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, PingFrame, RstStreamFrame

from h2_client import FrameReader, header_block, headers_frames, raw_connection
from harness import DEADLINE, Corral, run_cli, write_app

pytestmark = pytest.mark.skipif(not shutil.which("h2load"), reason="needs nghttp2-client (h2load)")

APP = """
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":  # answers once the test releases it
        while not os.path.exists(os.environ.get("RELEASE", "")):
            await asyncio.sleep(0.05)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})
"""


def reload(corral: Corral) -> None:
    result = run_cli("reload", "--control", str(corral.control), timeout=DEADLINE)
    assert result.returncode == 0, result.stderr


def test_h2load_through_two_reloads_loses_no_stream(tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app:app", "-w", "2", "--no-access-log")
    try:
        corral.wait_ready(2)
        load = subprocess.Popen(
            ["h2load", "-n", "24000", "-c", "2400", "-m", "10", "-r", "16", "--rate-period", "100ms",
             corral.url + "/"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # 2,400 connections of 10 streams, 16 every 100 ms: about 15 s, two reloads take 2 to 6 s here
        time.sleep(1.0)
        generation = corral.status()["generation"]
        reload(corral)
        reload(corral)
        assert corral.status()["generation"] == generation + 2
        assert load.poll() is None, "h2load ended before the second reload: the test proves nothing"
        output, _ = load.communicate(timeout=120)
        assert "24000 succeeded, 0 failed, 0 errored, 0 timeout" in output, output
    finally:
        corral.stop()


def test_a_stream_in_flight_finishes_after_goaway_and_a_later_one_is_refused(tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    release = tmp_path / "release"
    corral = Corral(tmp_path, "app:app", "-w", "1", "--no-access-log", env={"RELEASE": str(release)})
    try:
        corral.wait_ready(1)
        sock = raw_connection(corral.port)
        encoder = Encoder()
        request = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost")]
        sock.sendall(b"".join(f.serialize() for f in headers_frames(1, header_block([*request, (b":path", b"/slow")],
                                                                                       encoder))))
        thread = threading.Thread(target=reload, args=(corral,))
        thread.start()
        reader = FrameReader(sock)
        deadline = time.monotonic() + DEADLINE
        goaways: list[GoAwayFrame] = []
        seen: list[Frame] = []
        while (frame := reader.next(deadline)) is not None:
            seen.append(frame)
            if isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                sock.sendall(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]).serialize())
            elif isinstance(frame, RstStreamFrame) and frame.stream_id == 3:
                release.touch()  # the slow stream may answer now
            elif isinstance(frame, GoAwayFrame):
                goaways.append(frame)
                if len(goaways) == 2:  # a stream opened after the final GOAWAY is refused
                    sock.sendall(b"".join(f.serialize() for f in headers_frames(
                        3, header_block([*request, (b":path", b"/late")], encoder))))
        thread.join(DEADLINE)
        assert reader.closed, "the connection stayed open"
        assert [(g.last_stream_id, g.error_code) for g in goaways] == [(2**31 - 1, 0), (1, 0)]
        resets = {f.stream_id: f.error_code for f in seen if isinstance(f, RstStreamFrame)}
        assert resets == {3: h2.errors.ErrorCodes.REFUSED_STREAM}  # stream 1 never reset
        data = b"".join(f.data for f in seen if isinstance(f, DataFrame) and f.stream_id == 1)
        ended = [f for f in seen if f.stream_id == 1 and "END_STREAM" in f.flags]
        assert data == b"hello" and ended, "\n".join(map(repr, seen))
        assert seen.index(goaways[-1]) < seen.index(ended[0])  # served after the final GOAWAY, whole
    finally:
        corral.stop()
