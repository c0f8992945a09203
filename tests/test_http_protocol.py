"""Corral's HTTP protocol (`--http auto`) in a real worker: shedding keep-alive connections, and flow control
both ways (a client that stops reading, an app that does not read a body) bounding what a worker buffers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
from tests.harness import DEADLINE, Corral, free_port, wait_for, write_app
from tests.test_metrics import metric

APP = """
import asyncio, os
from pathlib import Path
from corral.worker import shedding

HERE = Path(__file__).parent

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/fail-after-start":  # nothing is written before the body: the client gets a 500
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        raise RuntimeError("the app fails after starting its response")
    if path == "/shed":
        shedding.request(1)
    if path == "/flood":  # a 256 MiB body, 1 MiB at a time; how far it got is written down
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"x" * (1 << 20)
        for sent in range(1, 257):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            (HERE / "flood.tmp").write_text(str(sent))
            os.replace(HERE / "flood.tmp", HERE / "flooded")
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/late-reader":  # reads the body only once told to
        while not (HERE / "read-now").exists():
            await asyncio.sleep(0.05)
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = str(size).encode()
        length = str(len(body)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Corral, Path]]:
    tmp_path = tmp_path_factory.mktemp("protocol")
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--no-access-log", "--keep-alive", "30")
    try:
        corral.wait_ready(1)
        yield corral, tmp_path
    finally:
        corral.stop()


def read_response(reader: BinaryIO) -> bytes:
    """One response with a Content-Length body, from a buffered reader of the socket (a second pipelined response
    may arrive with the first): its head."""
    lines = []
    while (line := reader.readline()) not in (b"\r\n", b""):
        lines.append(line)
    assert lines, "closed before a response"
    head = b"".join(lines)
    field = next(line for line in lines if line.lower().startswith(b"content-length:"))
    reader.read(int(field.split(b":")[1]))
    return head


def test_a_shedding_request_closes_a_keep_alive_connection_politely(server: tuple[Corral, Path]) -> None:
    corral, _ = server
    with socket.create_connection(("127.0.0.1", corral.port), timeout=DEADLINE) as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"connection: close" not in read_response(reader)  # kept alive
        sock.sendall(b"GET /shed HTTP/1.1\r\nHost: x\r\n\r\n")  # the worker is asked to shed one connection
        assert b"connection: close" in read_response(reader)
        assert reader.read(1) == b""  # and it closes after that response
    with socket.create_connection(("127.0.0.1", corral.port), timeout=DEADLINE) as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"connection: close" not in read_response(reader)  # one request used up: no more shedding
        assert b"connection: close" not in read_response(reader)


def test_a_client_that_stops_reading_holds_the_app_back(server: tuple[Corral, Path]) -> None:
    corral, tmp_path = server
    with socket.create_connection(("127.0.0.1", corral.port), timeout=DEADLINE) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: (tmp_path / "flooded").exists(), what="the flood to start")
        time.sleep(2)  # the app would send all 256 MiB in this time if nothing held it back
        sent = int((tmp_path / "flooded").read_text())
        assert sent < 64, f"{sent} MiB sent to a client that reads nothing"
        received = 0
        sock.settimeout(DEADLINE)
        while chunk := sock.recv(1 << 20):  # reading again lets the app finish
            received += len(chunk)
            if received > 256 << 20:
                break
    # the app writes its count after its last send returns, which may be a moment after the client read it
    wait_for(lambda: int((tmp_path / "flooded").read_text()) == 256, what="the app to finish its 256 MiB")


def test_a_body_the_app_does_not_read_is_not_buffered_without_bound(server: tuple[Corral, Path]) -> None:
    corral, tmp_path = server
    total = 64 << 20
    with socket.create_connection(("127.0.0.1", corral.port), timeout=DEADLINE) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.sendall(b"POST /late-reader HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total)
        sock.setblocking(False)
        sent = 0
        chunk = b"y" * 65536
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 2 and sent < total:  # until the server stops taking more
            try:
                sent += sock.send(chunk)
                quiet_since = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
        assert sent < 32 << 20, f"{sent >> 20} MiB taken while the app read nothing"
        (tmp_path / "read-now").touch()
        sock.setblocking(True)
        view = memoryview(b"y" * (total - sent))
        sock.sendall(view)
        assert b"200 OK" in read_response(sock.makefile("rb"))


def test_a_response_that_failed_before_its_head_went_out_counts_once_as_a_500(
    corrals: list[Corral], tmp_path: Path
) -> None:
    write_app(tmp_path, APP)
    admin = free_port()
    corral = Corral(tmp_path, "app.py", "-w", "1", "--no-access-log", "--admin-bind", f"127.0.0.1:{admin}")
    corrals.append(corral)
    corral.wait_ready(1)
    assert corral.get("/fail-after-start").status_code == 500
    assert corral.get("/").status_code == 200

    def counted() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=30).text
        return {code: metric(text, "corral_requests_total", f'code="{code}",worker="1"') for code in ("2xx", "5xx")}

    # published with the heartbeat: up to one heartbeat old
    assert wait_for(lambda: (c := counted())["2xx"] == 1 and c, 30, "the 200 counted") == {"2xx": 1, "5xx": 1}
