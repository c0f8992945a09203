"""A draining worker's connections still in its router: a TLS handshake or a PROXY header that ends after the
drain began is served (with `Connection: close`), not reset when the worker exits."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from corral.worker.protocols import ARRIVAL_WAIT, PRUNE_AT, DrainState
from harness import DEADLINE, OK_APP, Corral, corral_command, served_then_closed, wait_for, write_app

PROXY_HEADER = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\n"


def _holds(pid: int, client: tuple[str, int]) -> bool:
    """Whether the process accepted the connection from `client`."""
    return any(c.raddr == client for c in psutil.Process(pid).net_connections("tcp"))


def _stopped_listening(pid: int, port: int) -> bool:
    """Whether the worker began its drain (it closed its listeners first), or is gone."""
    try:
        sockets = psutil.Process(pid).net_connections("tcp")
    except psutil.NoSuchProcess:
        return True
    return not any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in sockets)


def _served_while_draining(
    corral: Corral, worker: int, arriving: socket.socket,
    finish: Callable[[socket.socket], http.client.HTTPConnection], protocol: str,
) -> None:
    """`arriving`, accepted by the only worker, is finished by `finish` once a reload made that worker drain."""
    wait_for(lambda: _holds(worker, arriving.getsockname()), what="the worker accepting the connection")
    reload = subprocess.Popen(corral_command("reload", "--control", str(corral.control)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _stopped_listening(worker, corral.port), what="the old worker draining")
        late = finish(arriving)
        try:
            late.request("GET", "/")
            served_then_closed(late, protocol)
        finally:
            late.close()
        _, stderr = reload.communicate(timeout=DEADLINE)
        assert reload.returncode == 0, stderr
    finally:
        arriving.close()
        if reload.poll() is None:
            reload.kill()
            reload.wait()


def _over(sock: socket.socket) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("localhost", timeout=DEADLINE)
    connection.sock = sock
    return connection


# --graceful-timeout past DEADLINE: a connection left undrained stays open, and the test fails on its recv
ARGS = ("-w", "1", "--keep-alive", "60", "--graceful-timeout", "120", "--no-access-log")


@pytest.mark.parametrize("protocol", ["auto", "h11", "httptools"])
def test_a_tls_handshake_ending_after_the_drain_began_is_served(
    corrals: list[Corral], tmp_path: Path, protocol: str
) -> None:
    write_app(tmp_path, OK_APP)
    corral = Corral(tmp_path, "app.py", *ARGS, "--http", protocol, "--https", "localhost",
                    "--state-dir", str(tmp_path / "state"))
    corrals.append(corral)
    (worker,) = corral.wait_ready(1)
    context = ssl.create_default_context(cafile=str(tmp_path / "state/ca/root.pem"))
    arriving = socket.create_connection(("127.0.0.1", corral.port), timeout=DEADLINE)  # no handshake yet

    def handshake(sock: socket.socket) -> http.client.HTTPConnection:
        return _over(context.wrap_socket(sock, server_hostname="localhost"))

    _served_while_draining(corral, worker, arriving, handshake, protocol)


@pytest.mark.parametrize("protocol", ["auto", "h11", "httptools"])
def test_a_proxy_header_ending_after_the_drain_began_is_served(
    corrals: list[Corral], tmp_path: Path, protocol: str
) -> None:
    write_app(tmp_path, OK_APP)
    corral = Corral(tmp_path, "app.py", *ARGS, "--http", protocol, "--proxy-protocol")
    corrals.append(corral)
    (worker,) = corral.wait_ready(1)
    arriving = socket.create_connection(("127.0.0.1", corral.port), timeout=DEADLINE)
    arriving.sendall(PROXY_HEADER[:10])

    def rest_of_header(sock: socket.socket) -> http.client.HTTPConnection:
        sock.sendall(PROXY_HEADER[10:])
        return _over(sock)

    _served_while_draining(corral, worker, arriving, rest_of_header, protocol)


def test_a_stalled_handshake_holds_the_drain_for_the_arrival_wait_only(corrals: list[Corral], tmp_path: Path) -> None:
    """A client that sends its ClientHello and never finishes the handshake (a stuck or hostile client) is
    closed once the drain has waited ARRIVAL_WAIT for it, not at the 30 s handshake timeout; the stop ends."""
    write_app(tmp_path, OK_APP)
    corral = Corral(tmp_path, "app.py", *ARGS, "--https", "localhost", "--state-dir", str(tmp_path / "state"))
    corrals.append(corral)
    (worker,) = corral.wait_ready(1)
    client = ssl.create_default_context(cafile=str(tmp_path / "state/ca/root.pem"))
    outgoing = ssl.MemoryBIO()
    handshake = client.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        handshake.do_handshake()
    with socket.create_connection(("127.0.0.1", corral.port), timeout=DEADLINE) as stalled:
        closed_by = time.monotonic() + ARRIVAL_WAIT + 15  # short of the handshake timeout: 30 s from now
        stalled.sendall(outgoing.read())  # the ClientHello, and nothing after it
        wait_for(lambda: _holds(worker, stalled.getsockname()), what="the worker accepting the connection")
        stop = subprocess.Popen(corral_command("stop", "--control", str(corral.control)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with contextlib.suppress(ConnectionResetError):
            while True:  # the server's half of the handshake, then its close
                stalled.settimeout(max(0.1, closed_by - time.monotonic()))
                if not stalled.recv(65536):
                    break
        _, stderr = stop.communicate(timeout=DEADLINE)
        assert stop.returncode == 0, stderr
    assert corral.wait_exit() == 0


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


def test_arriving_connections_are_forgotten_once_handed_over_or_closed() -> None:
    state = DrainState()
    waiting = _Transport()
    state.arrive(waiting, asyncio.Protocol())
    for turn in range(10 * PRUNE_AT):
        transport, protocol = _Transport(), asyncio.Protocol()
        state.arrive(transport, protocol)
        if turn % 2:
            transport.closing = True
        else:
            state.connections.add(protocol)  # type: ignore[arg-type] # handed over: uvicorn's protocol has it
        assert len(state.arriving) <= 2 * PRUNE_AT
    assert state.still_arriving() and list(state.arriving) == [waiting]
    waiting.closing = True
    assert not state.still_arriving()
