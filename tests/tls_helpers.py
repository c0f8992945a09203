"""Serve like a Corral worker (uvicorn + the HTTPS hooks of corral.tls) in a thread; talk TLS to it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from corral.options import Options
from corral.tls.http_app import wrap_app
from corral.tls.plan import https_port
from corral.tls.store import Store
from corral.tls.worker import WorkerTLS
from corral.worker.protocols import DrainState
from harness import wait_for


async def hello_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes what the server saw: client address and scheme."""
    if scope["type"] != "http":
        return
    client = scope.get("client") or ("", 0)
    body = f"{client[0]} {scope['scheme']} {scope['path']}".encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


def listen(port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


@dataclass
class ThreadWorker:
    tls: WorkerTLS
    loop: asyncio.AbstractEventLoop
    server: uvicorn.Server

    def reload(self) -> None:
        done = threading.Event()

        def run() -> None:
            self.tls.reload()
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(30)


@contextlib.contextmanager
def thread_worker(
    settings: Options, state_dir: Path, https_sock: socket.socket, http_sock: socket.socket | None = None
) -> Iterator[ThreadWorker]:
    """What the lead's worker does with the hooks: WorkerTLS, the router protocol, the wrapped app."""
    tls = WorkerTLS.from_settings(settings, state_dir)
    assert tls is not None
    plain = [http_sock] if http_sock is not None else []
    app = wrap_app(
        hello_app,
        https=True,
        hsts=settings.hsts,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        store=Store(state_dir),
        https_port=https_port(settings),
    )
    config = uvicorn.Config(
        app, http=tls.protocol_class(HttpToolsProtocol, plain), lifespan="off", log_level="warning",
        proxy_headers=False, loop="uvloop",
    )  # fmt: skip
    server = uvicorn.Server(config)
    server.server_state = DrainState()  # as a worker's, which the router needs
    holder: dict[str, asyncio.AbstractEventLoop] = {}

    def run() -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        holder["loop"] = loop
        loop.run_until_complete(server.serve(sockets=[https_sock, *plain]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="the worker thread to start")
    try:
        yield ThreadWorker(tls, holder["loop"], server)
    finally:
        server.should_exit = True
        thread.join(30)


def tls_connect(
    port: int, server_name: str, cafile: Path | None = None, alpn: list[str] | None = None
) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl._create_unverified_context()
    if alpn:
        context.set_alpn_protocols(alpn)
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    return context.wrap_socket(sock, server_hostname=server_name)


def served_certificate(port: int, server_name: str, cafile: Path | None = None) -> x509.Certificate:
    with tls_connect(port, server_name, cafile) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def https_get(
    port: int, server_name: str, path: str = "/", cafile: Path | None = None, prefix: bytes = b""
) -> bytes:
    """One request over TLS (optionally after `prefix`, e.g. a PROXY header); the raw response."""
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl._create_unverified_context()
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    if prefix:
        raw.sendall(prefix)
    with context.wrap_socket(raw, server_hostname=server_name) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
        return _read_all(sock)


def http_get(
    port: int, path: str = "/", host: str = "localhost", prefix: bytes = b"", headers: str = ""
) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(
            prefix + f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n".encode()
        )
        return _read_all(sock)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def running_service(service: Any) -> Iterator[None]:
    """`await service.start()` then `service.run()` in a thread of its own, cancelled on exit."""
    asyncio.run(service.start())
    loop = asyncio.new_event_loop()
    task_box: dict[str, asyncio.Task[None]] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        task_box["task"] = loop.create_task(service.run())
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task_box["task"])
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: "task" in task_box, what="the certificate service")
    try:
        yield
    finally:
        loop.call_soon_threadsafe(task_box["task"].cancel)
        thread.join(60)
