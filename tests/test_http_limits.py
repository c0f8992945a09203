"""Corral's HTTP protocol (`--http auto`) against oversized, slow and ambiguous requests, over raw sockets."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.harness import DEADLINE, Corral, write_app

ECHO_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body) + 2).encode())]})
    await send({"type": "http.response.body", "body": b"ok" + body})
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corral]:
    tmp_path = tmp_path_factory.mktemp("limits")
    write_app(tmp_path, ECHO_APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--no-access-log", "--header-timeout", "1", "--keep-alive", "1")
    try:
        corral.wait_ready(1)
        yield corral
    finally:
        corral.stop()


def exchange(port: int, data: bytes, timeout: float = DEADLINE) -> tuple[bytes, bool]:
    """Send `data`, read until the server closes: what came back, and whether it closed (not our timeout)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    with sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:  # closed with our unread bytes in its buffer: a reset, after the answer
            pass
        except TimeoutError:
            return received, False
        return received, True


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def get(path: bytes = b"/", *headers: bytes) -> bytes:
    fields = b"".join(field + b"\r\n" for field in headers)
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + fields + b"\r\n"


def still_serves(server: Corral) -> None:
    response, closed = exchange(server.port, get())
    assert status_of(response) == 200 and closed


def test_a_request_line_within_the_limit_is_served(server: Corral) -> None:
    response, _ = exchange(server.port, get(b"/" + b"a" * 8000))
    assert status_of(response) == 200


def test_a_request_line_over_8_kib_is_414_and_closed(server: Corral) -> None:
    response, closed = exchange(server.port, get(b"/" + b"a" * 8200))
    assert status_of(response) == 414 and closed
    assert b"connection: close" in response


def test_a_head_over_64_kib_is_431_and_closed(server: Corral) -> None:
    fields = [b"X-Field-%d: %s" % (index, b"v" * 1000) for index in range(70)]
    response, closed = exchange(server.port, get(b"/", *fields))
    assert status_of(response) == 431 and closed
    still_serves(server)


def test_100_header_fields_are_served_and_101_are_431(server: Corral) -> None:
    fields = [b"X-Field-%d: v" % index for index in range(98)]  # with Host and Connection: 100
    response, _ = exchange(server.port, get(b"/", *fields))
    assert status_of(response) == 200
    response, closed = exchange(server.port, get(b"/", *fields, b"X-One-More: v"))
    assert status_of(response) == 431 and closed


def test_a_one_megabyte_header_is_refused_without_being_buffered(server: Corral) -> None:
    start = time.monotonic()
    response, closed = exchange(server.port, get(b"/", b"X-Big: " + b"v" * (1 << 20)))
    assert closed and time.monotonic() - start < DEADLINE
    assert response == b"" or status_of(response) == 431  # the 431 may be lost to the reset of our unread bytes
    still_serves(server)


SMUGGLING = {
    "content-length-and-chunked": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-different-content-lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Content-Length: 5\r\n\r\nabcde",
    "content-length-list": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 5\r\n\r\nabcde",
    "last-coding-not-chunked": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "identity-coding": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\nabc",
    "invalid-chunk-size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "negative-chunk-size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: x\n\n",
    "bare-lf-in-fields": b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
    "bare-lf-after-chunk-size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "space-before-colon-transfer-encoding": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n"
    b"0\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", list(SMUGGLING.values()), ids=list(SMUGGLING))
def test_an_ambiguous_request_is_400_and_closed(server: Corral, request_bytes: bytes) -> None:
    response, closed = exchange(server.port, request_bytes)
    assert status_of(response) == 400 and closed
    assert response.count(b"HTTP/1.1 ") == 1  # nothing smuggled behind it was answered


def test_a_slowloris_connection_is_closed_after_the_header_timeout(server: Corral) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
    start = time.monotonic()
    closed_at = None
    with sock:
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic()
                break
            time.sleep(0.05)
            if _closed(sock):
                closed_at = time.monotonic()
                break
    assert closed_at is not None, "the slow head was let through"
    assert 0.9 <= closed_at - start < 10  # --header-timeout 1, while bytes kept arriving
    still_serves(server)


def test_a_silent_connection_is_closed_after_the_header_timeout(server: Corral) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
    start = time.monotonic()
    with sock:
        assert sock.recv(1) == b""
    assert time.monotonic() - start < 10


def test_a_stalled_body_ends_the_request_after_the_keep_alive_timeout(server: Corral) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
    start = time.monotonic()
    with sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert status_of(received) == 408
    assert 0.9 <= time.monotonic() - start < 10  # --keep-alive 1


def test_a_body_arriving_slowly_but_steadily_is_served(server: Corral) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
    with sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 6\r\n\r\n")
        for byte in b"abcdef":
            time.sleep(0.3)
            sock.sendall(bytes([byte]))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert status_of(received) == 200 and received.endswith(b"okabcdef")


def test_the_limits_follow_their_options(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, ECHO_APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--no-access-log", "--max-headers", "10",
                    "--max-request-line", "1024", "--max-request-head", "4096")
    corrals.append(corral)
    corral.wait_ready(1)
    assert status_of(exchange(corral.port, get(b"/", *[b"X-%d: v" % i for i in range(8)]))[0]) == 200
    assert status_of(exchange(corral.port, get(b"/", *[b"X-%d: v" % i for i in range(9)]))[0]) == 431
    assert status_of(exchange(corral.port, get(b"/" + b"a" * 1100))[0]) == 414
    assert status_of(exchange(corral.port, get(b"/", b"X-A: " + b"v" * 4100))[0]) == 431


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(DEADLINE)
