"""A worker asked to shed keep-alive clients: its HTTP protocols (httptools and h11, as Corral subclasses them)
answer that many requests with `Connection: close` and then keep connections alive again; the manager's orders
reach the worker through shared memory and lapse."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn

from corral import shed_orders
from corral.metrics_shm import RequestFigures
from corral.scoreboard import Scoreboard
from corral.shed_orders import ShedOrders
from corral.worker import shedding
from corral.worker.protocols import DrainState
from corral.worker.uvicorn_http import protocol_class as uvicorn_protocol_class
from harness import wait_for


async def ok_app(scope: dict[str, object], receive: object, send: object) -> None:
    assert callable(send)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def serving(protocol: str) -> Iterator[int]:
    """uvicorn's server with Corral's protocol class, on a loopback port, in a thread of this process (so the
    test reaches the worker's `shedding` counter)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(ok_app, http=uvicorn_protocol_class(protocol), lifespan="off", log_config=None,
                            log_level="warning", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    server.server_state = DrainState()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "the server to start")
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        shedding.request(0)


def ask(connection: http.client.HTTPConnection, headers: dict[str, str] | None = None) -> str | None:
    """One request; the response's Connection header (None: kept alive)."""
    connection.request("GET", "/", headers=headers or {})
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"ok")
    return response.getheader("connection")


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_shed_requests_answer_with_connection_close_then_keep_alive_again(protocol: str) -> None:
    with serving(protocol) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.connect()
        assert connection.sock is not None
        first = connection.sock.dup()  # http.client closes its own once told to
        assert ask(connection) is None  # nothing asked: kept alive
        shedding.request(2)
        assert ask(connection) == "close"
        assert first.recv(1) == b""  # the server closed its end after the response
        first.close()
        assert connection.sock is None  # the client knew, and reconnects for the next request
        assert ask(connection) == "close"
        assert shedding.pending == 0
        assert ask(connection) is None
        assert ask(connection) is None
        connection.close()


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_a_request_that_closes_anyway_uses_up_nothing(protocol: str) -> None:
    with serving(protocol) as port:
        shedding.request(1)
        closing = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        assert ask(closing, {"Connection": "close"}) == "close"
        closing.close()
        assert shedding.pending == 1
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        assert ask(kept) == "close"
        assert shedding.pending == 0
        kept.close()


def test_orders_reach_the_worker_in_shared_memory_replace_each_other_and_lapse() -> None:
    scoreboard = Scoreboard.create()
    figures = RequestFigures.create(scoreboard.fd)
    manager = ShedOrders.create(scoreboard.fd)
    try:
        manager.order(3, 9)  # left for an earlier worker of cell 3
        worker = shedding.Orders(ShedOrders(scoreboard.fd), 3)  # in the worker, through the inherited memfd
        worker.poll(100.0)
        assert shedding.pending == 0, "an order for an earlier worker of the cell is not for this one"
        manager.order(3, 5)
        manager.order(4, 7)  # another worker's order
        worker.poll(101.0)
        assert shedding.pending == 5
        assert shedding.take() and shedding.pending == 4
        manager.order(3, 2)  # a new order replaces what is left of the previous one
        worker.poll(102.0)
        assert shedding.pending == 2
        worker.poll(102.0 + shedding.LAPSE - 0.1)
        assert shedding.pending == 2
        worker.poll(102.0 + shedding.LAPSE)
        assert shedding.pending == 0, "an order lapses: clients arriving later are not let go for it"
        assert os.fstat(scoreboard.fd).st_size == shed_orders.OFFSET + shed_orders.SIZE  # after the figures
    finally:
        shedding.request(0)
        figures.close()
        manager.close()
        scoreboard.close()
