"""Corral's HTTP protocol (`--http auto`) against uvicorn's httptools protocol (`--http httptools`), the reference.

Both serve the same app in a real `corral run` on loopback. Each case sends the same bytes to both over a raw
socket and asserts the same response bytes (the `Date` header aside); the app answers its ASGI scope as JSON
(ports zeroed, the `extensions` key Corral adds left out), so the scopes are compared too. The deliberate
differences (docs/architecture.md, "Corral's HTTP protocol") have their own tests. Real clients follow.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from tests.harness import DEADLINE, Corral, write_app

APP = r'''
import asyncio, json

def scope_json(scope):
    shown = {key: value for key, value in scope.items() if key not in ("extensions", "app")}
    shown["headers"] = [[name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]]
    shown["raw_path"] = scope["raw_path"].decode("latin-1")
    shown["query_string"] = scope["query_string"].decode("latin-1")
    shown["client"] = [scope["client"][0], 0]
    shown["server"] = [scope["server"][0], 0]
    return json.dumps(shown, sort_keys=True).encode()

async def read_body(receive):
    body, messages = b"", []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, messages
        body += message.get("body", b"")
        messages.append(message.get("more_body", False))
        if not message.get("more_body"):
            return body, messages

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": "echo " + message.get("text", "")})
    path = scope["path"]
    start = {"type": "http.response.start", "status": 200}
    if path.startswith("/cl"):
        await send({**start, "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})
    elif path.startswith("/chunked"):
        await send({**start, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one", b"", b"two", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        await send({"type": "http.response.start", "status": code, "headers": [(b"x-code", str(code).encode())]})
        await send({"type": "http.response.body", "body": b""})
    elif path.startswith("/headers"):
        await send({**start, "headers": [(b"X-Mixed-Case", b"Value"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
                                         (b"content-length", b"2"), (b"Connection", b"close")]})
        await send({"type": "http.response.body", "body": b"ok"})
    elif path.startswith("/big"):
        body = bytes(range(256)) * 4096
        await send({**start, "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    elif path.startswith("/stream-big"):
        await send({**start, "headers": []})
        for index in range(16):
            await send({"type": "http.response.body", "body": bytes([index]) * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path.startswith("/error-before"):
        raise RuntimeError("boom")
    elif path.startswith("/error-after"):
        await send({**start, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})
        raise RuntimeError("boom")
    elif path.startswith("/nothing"):
        return
    elif path.startswith("/short"):
        await send({**start, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"12345"})
    elif path.startswith("/long"):
        await send({**start, "headers": [(b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"12345"})
    elif path.startswith("/events"):
        await send({**start, "headers": [(b"content-type", b"text/event-stream")]})
        await asyncio.sleep(30)  # the first event comes late: the client holds the head by then
        await send({"type": "http.response.body", "body": b""})
    elif path.startswith("/extensions"):
        body = json.dumps(scope.get("extensions")).encode()
        await send({**start, "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    elif path.startswith("/file"):
        import os, urllib.parse
        query = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
        size = os.path.getsize(query["path"])
        headers = [] if query.get("chunked") else [(b"content-length", str(size).encode())]
        await send({**start, "headers": headers})
        await send({"type": "http.response.pathsend", "path": query["path"]})
    elif path.startswith("/body"):
        body, messages = await read_body(receive)
        answer = json.dumps({"size": None if body is None else len(body), "last": messages[-1:],
                             "tail": None if body is None else body[-16:].decode("latin-1")}).encode()
        await send({**start, "headers": [(b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})
    else:
        body = scope_json(scope)
        await send({**start, "headers": [(b"content-type", b"application/json"),
                                         (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
'''

DATE = re.compile(rb"\r\ndate: [^\r]*\r\n")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Corral, Corral]]:
    started: list[Corral] = []
    try:
        for http in ("auto", "httptools"):
            tmp_path = tmp_path_factory.mktemp(http)
            write_app(tmp_path, APP)
            started.append(Corral(tmp_path, "app.py", "-w", "1", "--no-access-log", "--http", http))
        for corral in started:
            corral.wait_ready(1)
        yield started[0], started[1]
    finally:
        for corral in started:
            corral.stop()


def exchange(port: int, data: bytes | list[bytes], slow: bool = False) -> bytes:
    """Send the request bytes (a list: parts sent apart), read until the server closes; `Date` normalised."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        for part in data if isinstance(data, list) else [data]:
            sock.sendall(part)
            if isinstance(data, list):
                time.sleep(0.05)
        received = b""
        while chunk := sock.recv(4096 if slow else 65536):
            received += chunk
            if slow:
                time.sleep(0.001)
    return DATE.sub(b"\r\ndate: -\r\n", received)


def request(method: str, target: str, *headers: str, body: bytes = b"", version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: example.test", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*parts: bytes, trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n" + trailer + b"\r\n"


CASES: dict[str, bytes | list[bytes]] = {}
for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"):
    CASES[f"method-{method}"] = request(method, "/echo")
for name, target in {
    "root": "/", "nested": "/a/b/c", "encoded-slash": "/a%2Fb", "utf8-percent": "/caf%C3%A9",
    "euro-and-query": "/%E2%82%AC?x=1", "space": "/a%20b", "plus": "/a+b", "double-slash": "//echo",
    "dot-segments": "/a/../b/./c", "tilde": "/~user", "semicolon": "/echo;v=1", "query": "/echo?b=c&d=e",
    "empty-query": "/echo?", "query-percent": "/echo?x=%20%2F", "query-only-key": "/echo?flag",
    "absolute-form": "http://example.test/abs?q=1", "fragment": "/echo#frag", "query-with-slash": "/echo?u=/x/y",
    "percent-lowercase": "/caf%c3%a9", "invalid-percent": "/a%zz", "long-path": "/" + "x" * 4000,
    "many-params": "/echo?" + "&".join(f"k{i}=v{i}" for i in range(50)),
}.items():
    CASES[f"path-{name}"] = request("GET", target)
CASES["asterisk-options"] = request("OPTIONS", "*")
CASES["headers-mixed-case"] = request("GET", "/echo", "X-Mixed-CASE: Value", "ACCEPT: */*")
CASES["headers-duplicate"] = request("GET", "/echo", "X-Dup: 1", "X-Dup: 2", "Cookie: a=1", "Cookie: b=2")
CASES["headers-empty-value"] = request("GET", "/echo", "X-Empty:")
CASES["headers-trailing-space"] = request("GET", "/echo", "X-Space:   padded   ")
CASES["headers-tab"] = request("GET", "/echo", "X-Tab:\tvalue\t")
CASES["headers-latin1"] = request("GET", "/echo", "X-Latin: caf\xe9")
CASES["headers-long"] = request("GET", "/echo", "X-Long: " + "v" * 8000)
CASES["headers-fifty"] = request("GET", "/echo", *[f"X-H{i}: {i}" for i in range(50)])
CASES["no-host-http10"] = b"GET /echo HTTP/1.0\r\n\r\n"
CASES["http10-cl"] = request("GET", "/cl", version="1.0")
CASES["http10-keep-alive"] = b"GET /cl HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
CASES["http10-echo"] = request("GET", "/echo", version="1.0")
CASES["body-content-length"] = request("POST", "/body", "Content-Length: 11", body=b"hello world")
CASES["body-empty-cl"] = request("POST", "/body", "Content-Length: 0")
CASES["body-none"] = request("POST", "/body")
CASES["body-chunked"] = request("POST", "/body", "Transfer-Encoding: chunked",
                               body=chunked(b"hello", b" ", b"world"))
CASES["body-chunked-ext"] = request("POST", "/body", "Transfer-Encoding: chunked",
                                   body=b"5;ext=1\r\nhello\r\n0\r\n\r\n")
CASES["body-chunked-trailer"] = request("POST", "/body", "Transfer-Encoding: chunked",
                                        body=chunked(b"abc", trailer=b"X-Trailer: 1\r\n"))
CASES["body-large-cl"] = request("POST", "/body", f"Content-Length: {1 << 20}", body=b"z" * (1 << 20))
CASES["body-large-chunked"] = request("POST", "/body", "Transfer-Encoding: chunked",
                                      body=chunked(*[bytes([65 + i]) * 70000 for i in range(8)]))
CASES["body-in-parts"] = [request("POST", "/body", "Content-Length: 6"), b"ab", b"cd", b"ef"]
CASES["body-chunked-in-parts"] = [request("POST", "/body", "Transfer-Encoding: chunked"), b"3\r\nabc\r\n",
                                  b"3\r\ndef\r\n", b"0\r\n\r\n"]
CASES["expect-100"] = [request("POST", "/body", "Expect: 100-continue", "Content-Length: 5"), b"hello"]
CASES["expect-100-unread"] = request("POST", "/cl", "Expect: 100-continue", "Content-Length: 5") + b"hello"
CASES["head-cl"] = request("HEAD", "/cl")
CASES["head-chunked"] = request("HEAD", "/chunked")
CASES["head-echo"] = request("HEAD", "/echo")
for code in (200, 201, 204, 301, 304, 404, 418, 500, 503):
    CASES[f"status-{code}"] = request("GET", f"/status/{code}")
CASES["response-chunked"] = request("GET", "/chunked")
CASES["response-headers"] = request("GET", "/headers")
CASES["response-big"] = request("GET", "/big")
CASES["response-stream-big"] = request("GET", "/stream-big")
CASES["error-before-start"] = request("GET", "/error-before")
CASES["error-after-start"] = request("GET", "/error-after")
CASES["no-response"] = request("GET", "/nothing")
CASES["shorter-than-cl"] = request("GET", "/short")
KEEP = "Connection: keep-alive"
CASES["keep-alive-then-close"] = request("GET", "/cl", KEEP).replace(b"Connection: close\r\n", b"") + request(
    "GET", "/echo")
CASES["pipelined-three"] = b"".join(request("GET", f"/cl?{i}").replace(b"Connection: close\r\n", b"")
                                    for i in range(2)) + request("GET", "/echo?last")
CASES["pipelined-with-bodies"] = b"".join((
    request("POST", "/body", "Content-Length: 3", body=b"abc").replace(b"Connection: close\r\n", b""),
    request("POST", "/body", "Transfer-Encoding: chunked", body=chunked(b"xyz")).replace(b"Connection: close\r\n", b""),
    request("GET", "/chunked"),
))
CASES["pipelined-head-and-get"] = request("HEAD", "/cl").replace(b"Connection: close\r\n", b"") + request("GET", "/cl")
CASES["invalid-method"] = b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n"
CASES["invalid-version"] = b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"
CASES["garbage"] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
CASES["invalid-header-name"] = b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Name: v\r\n\r\n"
CASES["non-ascii-path"] = b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
CASES["connection-close-uppercase"] = b"GET /cl HTTP/1.1\r\nHost: x\r\nCONNECTION: Close\r\n\r\n"


def test_there_are_at_least_60_cases() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_same_scope_and_same_bytes_as_uvicorn(servers: tuple[Corral, Corral], case: str) -> None:
    corral, reference = servers
    ours, theirs = exchange(corral.port, CASES[case]), exchange(reference.port, CASES[case])
    assert ours == theirs
    assert ours.startswith(b"HTTP/1.1 ") or case == "no-response-expected"


def test_a_slow_reader_gets_the_same_bytes(servers: tuple[Corral, Corral]) -> None:
    corral, reference = servers
    data = request("GET", "/stream-big")
    assert exchange(corral.port, data, slow=True) == exchange(reference.port, data, slow=True)


def test_the_app_hears_the_disconnect_of_a_client_gone_mid_body(servers: tuple[Corral, Corral]) -> None:
    """The client sends half the body and leaves: the app's receive says `http.disconnect` (then the app returns
    without answering, and the worker goes on serving)."""
    for server in servers:
        with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock:
            sock.sendall(request("POST", "/body", "Content-Length: 100", body=b"x" * 50))
        assert exchange(server.port, request("GET", "/cl")).endswith(b"hello")


# Deliberate differences


def test_the_scope_names_the_pathsend_extension_and_the_file_is_sent(
    servers: tuple[Corral, Corral], tmp_path: Path
) -> None:
    corral, reference = servers
    assert httpx.get(f"{corral.url}/extensions").json() == {"http.response.pathsend": {}}
    assert httpx.get(f"{reference.url}/extensions").json() is None
    served = tmp_path / "served.bin"
    served.write_bytes(bytes(range(256)) * 3000)  # beyond one read of the file
    response = httpx.get(f"{corral.url}/file", params={"path": str(served)})
    assert response.status_code == 200 and response.content == served.read_bytes()
    response = httpx.get(f"{corral.url}/file", params={"path": str(served), "chunked": "1"})
    assert response.headers["transfer-encoding"] == "chunked" and response.content == served.read_bytes()


def test_an_http10_response_without_length_ends_with_the_connection(servers: tuple[Corral, Corral]) -> None:
    """uvicorn sends chunks to an HTTP/1.0 client, which knows none; Corral sends the body as is and closes."""
    corral, reference = servers
    data = request("GET", "/chunked", version="1.0")
    ours, theirs = exchange(corral.port, data), exchange(reference.port, data)
    assert ours.endswith(b"\r\n\r\nonetwothree") and b"transfer-encoding" not in ours
    assert b"transfer-encoding: chunked" in theirs


def test_a_body_longer_than_its_content_length_is_a_500_when_nothing_was_written(
    servers: tuple[Corral, Corral],
) -> None:
    """uvicorn writes the head, then fails on the body and closes: the client has a 200 without its body. Corral
    writes the head with the body, so the app's error still finds nothing written and the client gets a 500."""
    corral, reference = servers
    data = request("GET", "/long")
    assert exchange(corral.port, data).startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert exchange(reference.port, data).startswith(b"HTTP/1.1 200 OK\r\n")


# Real clients


def test_curl(servers: tuple[Corral, Corral], tmp_path: Path) -> None:
    corral, _ = servers
    curl = shutil.which("curl")
    assert curl is not None
    out = subprocess.run([curl, "-s", "-i", f"{corral.url}/caf%C3%A9?x=1"], capture_output=True, timeout=DEADLINE)
    assert out.returncode == 0 and out.stdout.startswith(b"HTTP/1.1 200 OK")
    scope = json.loads(out.stdout.split(b"\r\n\r\n", 1)[1])
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == ("/café", "/caf%C3%A9", "x=1")
    upload = tmp_path / "upload"
    upload.write_bytes(b"u" * 300000)
    out = subprocess.run([curl, "-s", "-H", "Transfer-Encoding: chunked", "-H", "Expect: 100-continue",
                          "--data-binary", f"@{upload}", f"{corral.url}/body"], capture_output=True, timeout=DEADLINE)
    assert json.loads(out.stdout)["size"] == 300000
    out = subprocess.run([curl, "-s", "--http1.0", f"{corral.url}/chunked"], capture_output=True, timeout=DEADLINE)
    assert out.stdout == b"onetwothree"


def test_httpx_streams_both_ways(servers: tuple[Corral, Corral]) -> None:
    corral, _ = servers

    def parts() -> Iterator[bytes]:
        for index in range(20):
            yield bytes([97 + index]) * 10000

    with httpx.Client() as client:
        response = client.post(f"{corral.url}/body", content=parts())
        assert response.json()["size"] == 200000
        with client.stream("GET", f"{corral.url}/stream-big") as stream:
            assert sum(len(chunk) for chunk in stream.iter_bytes()) == 16 * 65536
        assert client.head(f"{corral.url}/cl").headers["content-length"] == "5"


def test_http_client_keeps_the_connection(servers: tuple[Corral, Corral]) -> None:
    corral, _ = servers
    connection = http.client.HTTPConnection("127.0.0.1", corral.port, timeout=DEADLINE)
    try:
        locals_seen = set()
        for index in range(5):
            connection.request("GET", f"/cl?{index}")
            response = connection.getresponse()
            assert response.read() == b"hello"
            locals_seen.add(connection.sock.getsockname())
        assert len(locals_seen) == 1  # one connection for all five
        connection.request("POST", "/body", body=b"x" * 70000)
        assert json.loads(connection.getresponse().read())["size"] == 70000
    finally:
        connection.close()


def test_wrk(servers: tuple[Corral, Corral]) -> None:
    corral, _ = servers
    wrk = shutil.which("wrk")
    assert wrk is not None
    out = subprocess.run([wrk, "-t", "1", "-c", "8", "-d", "2s", f"{corral.url}/cl"], capture_output=True,
                         text=True, timeout=DEADLINE)
    assert out.returncode == 0, out.stderr
    assert "Non-2xx" not in out.stdout and "Socket errors" not in out.stdout, out.stdout
    assert int(re.search(r"(\d+) requests in", out.stdout).group(1)) > 100  # type: ignore[union-attr]


def test_a_websocket_client(servers: tuple[Corral, Corral]) -> None:
    corral, _ = servers

    async def talk() -> str:
        async with websockets.connect(f"ws://127.0.0.1:{corral.port}/ws") as ws:
            await ws.send("hi")
            return str(await ws.recv())

    assert asyncio.run(talk()) == "echo hi"


def test_a_streamed_head_goes_out_before_its_first_body(servers: tuple[Corral, Corral]) -> None:
    """A server-sent-events stream: the app starts the response, then waits for its first event. The client
    sees the head (Corral joins a head to its body only within the same pass of the loop)."""
    corral, _ = servers
    with socket.create_connection(("127.0.0.1", corral.port), timeout=10) as sock:  # the event comes at 30 s
        sock.sendall(request("GET", "/events"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "closed before the head"
            head += chunk
        assert b"\r\n\r\n0\r\n\r\n" not in head  # the head came alone, before the stream's end
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in head
    assert exchange(corral.port, request("GET", "/cl")).endswith(b"hello")
