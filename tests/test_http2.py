"""HTTP/2 (issue 21) with real clients: curl over the local CA's HTTPS with no flag and by prior knowledge on a
plain listener, httpx with `http2=True`, nghttp, h2load; the ASGI scope, flow control both ways, a client's reset
as `http.disconnect`, counting and the access log; `--no-http2` gives HTTP/1.1 by ALPN."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import h2.events
import httpx
import pytest
from websockets.sync.client import connect

from h2_client import SETTINGS, H2Client
from harness import Corral, wait_for, write_app

pytestmark = pytest.mark.skipif(not shutil.which("h2load"), reason="needs nghttp2-client (nghttp, h2load)")

APP = """
import asyncio, json, os

async def app(scope, receive, send):
    if scope["type"] == "websocket":  # echoes one message
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": message.get("text")})
        await send({"type": "websocket.close"})
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/slow-read":  # the body is read only after a while: the client's window must stay shut meanwhile
        await asyncio.sleep(1.5)
    if path == "/disconnect":
        message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        open(os.environ["MARKER"], "w").write("disconnect")
        return
    if path == "/pseudo-header":
        await send({"type": "http.response.start", "status": 200, "headers": [(b":status", b"201")]})
        await send({"type": "http.response.body", "body": b"never"})
        return
    if path == "/bad-header":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-split", b"a\\r\\nb: c")]})
        await send({"type": "http.response.body", "body": b"never"})
        return
    if path == "/file":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": os.environ["MARKER"] + ".file"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if path == "/stream":  # 64 chunks of 4 KiB, more than a small window holds
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for index in range(64):
            await send({"type": "http.response.body", "body": bytes([65 + index % 26]) * 4096, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    out = json.dumps({
        "http_version": scope["http_version"], "method": scope["method"], "path": scope["path"],
        "query": scope["query_string"].decode(), "scheme": scope["scheme"], "length": len(body),
        "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
        "extensions": sorted(scope.get("extensions", {})), "client": scope["client"], "pid": os.getpid(),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out)),
                            (b"connection", b"keep-alive")]})
    await send({"type": "http.response.body", "body": out})
"""


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corral]:
    tmp_path = tmp_path_factory.mktemp("h2c")
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app:app", "-w", "1", env={"MARKER": str(tmp_path / "marker")})
    try:
        corral.wait_ready(1)
        yield corral
    finally:
        corral.stop()


def test_curl_gets_http2_from_the_local_ca_https_with_no_flag_and_http11_with_no_http2(tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    state = tmp_path / "state"
    on = Corral(tmp_path, "app:app", "-w", "1", "--https", "localhost", "--state-dir", str(state))
    off = Corral(tmp_path, "app:app", "-w", "1", "--https", "localhost", "--state-dir", str(tmp_path / "state2"),
                 "--no-http2")
    try:
        on.wait_ready(1)
        off.wait_ready(1)
        root = state / "ca" / "root.pem"
        url = f"https://localhost:{on.port}/tls?x=1"
        answer = curl("--cacert", str(root), "-w", "\n%{http_version}", url)
        body, version = answer.stdout.rsplit("\n", 1)
        assert answer.returncode == 0 and version == "2", answer.stderr
        seen = json.loads(body)
        assert seen["http_version"] == "2" and seen["scheme"] == "https" and seen["query"] == "x=1"
        assert ["host", f"localhost:{on.port}"] in seen["headers"]
        forced = curl("--http1.1", "--cacert", str(root), "-w", "\n%{http_version}", url)
        assert forced.stdout.rsplit("\n", 1)[1] == "1.1"

        with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=str(root)), timeout=20) as client:
            response = client.post(f"https://localhost:{on.port}/httpx", content=b"x" * 100_000)
        assert response.http_version == "HTTP/2" and response.json()["length"] == 100_000

        nghttp = subprocess.run(["nghttp", "-v", f"https://127.0.0.1:{on.port}/nghttp"], capture_output=True,
                                text=True, timeout=60)
        assert nghttp.returncode == 0 and '"http_version": "2"' in nghttp.stdout, nghttp.stderr
        assert "The negotiated protocol: h2" in nghttp.stdout

        load = subprocess.run(["h2load", "-n", "400", "-c", "4", "-m", "10", f"https://127.0.0.1:{on.port}/"],
                              capture_output=True, text=True, timeout=120)
        assert "Application protocol: h2" in load.stdout
        assert "400 succeeded, 0 failed, 0 errored" in load.stdout, load.stdout

        # WebSockets stay on HTTP/1.1: a browser's WebSocket connection offers http/1.1 by ALPN
        websocket_tls = ssl.create_default_context(cafile=str(root))
        websocket_tls.set_alpn_protocols(["http/1.1"])
        with connect(f"wss://localhost:{on.port}/ws", ssl=websocket_tls, open_timeout=20) as websocket:
            websocket.send("echo me")
            assert websocket.recv(timeout=20) == "echo me"

        # --no-http2: ALPN offers http/1.1 only, whatever the client prefers
        old = curl("--http2", "-k", "-w", "\n%{http_version}", f"https://localhost:{off.port}/")
        assert old.returncode == 0 and old.stdout.rsplit("\n", 1)[1] == "1.1", old.stderr
        access = wait_for(lambda: '"GET /tls?x=1 HTTP/2" 200' in on.log, what="the access log line")
        assert access
    finally:
        on.stop()
        off.stop()


def test_h2c_by_prior_knowledge_beside_http11_on_a_plain_listener(plain: Corral) -> None:
    before = plain.status()["workers"][0]["requests"]
    answer = curl("--http2-prior-knowledge", "-w", "\n%{http_version}", "--data-binary", "@-",
                  f"{plain.url}/h2c%20path?q=%C3%A9", "-H", "Cookie: a=1", "-H", "Cookie: b=2")
    assert answer.returncode == 0, answer.stderr
    body, version = answer.stdout.rsplit("\n", 1)
    seen = json.loads(body)
    assert version == "2" and seen["http_version"] == "2" and seen["scheme"] == "http"
    assert seen["path"] == "/h2c path" and seen["query"] == "q=%C3%A9" and seen["method"] == "POST"
    assert seen["headers"][0] == ["host", f"127.0.0.1:{plain.port}"]
    assert ["cookie", "a=1; b=2"] in seen["headers"]  # split cookie fields joined for the app
    assert "http.response.pathsend" in seen["extensions"]
    h1 = httpx.get(f"{plain.url}/h1", timeout=20)  # HTTP/1.1 clients are unaffected
    assert h1.json()["http_version"] == "1.1"

    nghttp = subprocess.run(["nghttp", f"{plain.url}/nghttp"], capture_output=True, text=True, timeout=60)
    assert json.loads(nghttp.stdout)["http_version"] == "2"
    load = subprocess.run(["h2load", "-n", "1000", "-c", "4", "-m", "10", plain.url + "/"], capture_output=True,
                          text=True, timeout=120)
    assert "1000 succeeded, 0 failed, 0 errored" in load.stdout, load.stdout
    assert "Application protocol: h2c" in load.stdout
    # every stream is counted: requests, status classes (the heartbeat stamps them within a second)
    wait_for(lambda: plain.status()["workers"][0]["requests"] >= before + 1003, what="the streams counted")
    assert plain.status()["workers"][0]["requests_by_status"]["2xx"] >= 1003
    assert '"POST /h2c%20path?q=%C3%A9 HTTP/2" 200' in plain.log


def test_a_response_waits_for_the_clients_window_and_a_request_body_opens_it_as_the_app_reads(
        plain: Corral) -> None:
    client = H2Client(plain.port, settings={SETTINGS.INITIAL_WINDOW_SIZE: 1024})
    try:
        # streamed response: 256 KiB through a 1 KiB stream window, sent as the client opens it
        stream = client.request("/stream")
        status, _, body = client.response(stream)
        assert status == 200 and len(body) == 64 * 4096
        assert body[:4096] == b"A" * 4096 and body[-4096:] == bytes([65 + 63 % 26]) * 4096
        # request body: the client may send one window (65,535 bytes) before the app reads
        big = b"z" * 200_000
        stream = client.request("/slow-read", method="POST", end=False)
        sent = 0
        while window := min(client.conn.local_flow_control_window(stream), 16384):
            client.conn.send_data(stream, big[sent:sent + window])
            sent += window
        client.flush()
        assert sent == 65535
        opened_at = None
        deadline = time.monotonic() + 1.0  # the app sleeps 1.5 s before reading: no window update meanwhile
        while time.monotonic() < deadline:
            for event in client.read(deadline - time.monotonic()):
                if isinstance(event, h2.events.WindowUpdated) and event.stream_id == stream:
                    opened_at = time.monotonic()
        assert opened_at is None, "the stream's window opened before the app read anything"
        while sent < len(big):
            window = client.conn.local_flow_control_window(stream)
            if window == 0:
                client.read(20)
                continue
            chunk = big[sent:sent + min(window, 16384)]
            client.conn.send_data(stream, chunk, end_stream=sent + len(chunk) == len(big))
            client.flush()
            sent += len(chunk)
        status, _, body = client.response(stream)
        assert status == 200 and json.loads(body)["length"] == len(big)
    finally:
        client.close()


def test_a_client_reset_is_an_http_disconnect(plain: Corral) -> None:
    marker = plain.tmp_path / "marker"
    marker.unlink(missing_ok=True)
    client = H2Client(plain.port)
    try:
        stream = client.request("/disconnect", method="POST", end=False)
        client.conn.send_data(stream, b"partial")
        client.flush()
        time.sleep(0.2)
        client.conn.reset_stream(stream)
        client.flush()
        wait_for(marker.exists, 20, "the app's http.disconnect")
        other = client.request("/after")  # the connection itself goes on
        assert client.response(other)[0] == 200
    finally:
        client.close()


def test_a_response_header_with_cr_lf_is_a_500_and_the_connection_goes_on(plain: Corral) -> None:
    client = H2Client(plain.port)
    try:
        status, _, body = client.response(client.request("/bad-header"))
        assert (status, body) == (500, b"Internal Server Error")
        assert client.response(client.request("/after-bad"))[0] == 200
    finally:
        client.close()
    assert "Invalid HTTP header: CR, LF or NUL" in plain.log


def test_a_pseudo_header_from_the_app_is_a_500(plain: Corral) -> None:
    """h2 checks no response head (Corral does, more cheaply): a `:status` the app sends is an app error."""
    client = H2Client(plain.port)
    try:
        status, _, body = client.response(client.request("/pseudo-header"))
        assert (status, body) == (500, b"Internal Server Error")
        assert client.response(client.request("/after-pseudo"))[0] == 200
    finally:
        client.close()
    assert "Invalid HTTP header name b':status'" in plain.log


def test_pathsend_streams_a_file_through_the_clients_window(plain: Corral) -> None:
    content = bytes(range(256)) * 4096  # 1 MiB
    (plain.tmp_path / "marker.file").write_bytes(content)
    client = H2Client(plain.port, settings={SETTINGS.INITIAL_WINDOW_SIZE: 16384})
    try:
        status, _, body = client.response(client.request("/file"))
        assert status == 200 and body == content
    finally:
        client.close()


def test_the_proxy_protocol_header_gives_the_client_over_h2c_and_over_tls(tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    state = tmp_path / "state"
    plain = Corral(tmp_path, "app:app", "-w", "1", "--proxy-protocol", env={"MARKER": str(tmp_path / "m")})
    tls = Corral(tmp_path, "app:app", "-w", "1", "--proxy-protocol", "--https", "localhost", "--state-dir",
                 str(state), env={"MARKER": str(tmp_path / "m")})
    try:
        plain.wait_ready(1)
        tls.wait_ready(1)
        for corral, context in ((plain, None), (tls, ssl.create_default_context(cafile=str(state / "ca" /
                                                                                            "root.pem")))):
            if context is not None:
                context.set_alpn_protocols(["h2", "http/1.1"])
            header = f"PROXY TCP4 203.0.113.7 127.0.0.1 40000 {corral.port}\r\n".encode()
            client = H2Client(corral.port, context=context, prefix=header)
            try:
                status, _, body = client.response(client.request("/proxied"))
            finally:
                client.close()
            seen = json.loads(body)
            assert status == 200 and seen["http_version"] == "2" and seen["client"] == ["203.0.113.7", 40000]
    finally:
        plain.stop()
        tls.stop()


def test_max_requests_counts_http2_streams_and_recycles_the_worker(tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app:app", "-w", "1", "--no-access-log", "--max-requests", "10",
                    env={"MARKER": str(tmp_path / "m")})
    try:
        corral.wait_ready(1)
        pids = set()
        for _ in range(200):  # each on a new connection, which a replacement worker may take
            answer = curl("--http2-prior-knowledge", f"{corral.url}/")
            assert answer.returncode == 0, answer.stderr
            pids.add(json.loads(answer.stdout)["pid"])
            if len(pids) > 1:
                break
        assert len(pids) > 1, "the worker was not recycled after --max-requests HTTP/2 streams"
    finally:
        corral.stop()
