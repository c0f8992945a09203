#!/usr/bin/env python3
"""The HTTP/2 libraries alone, no sockets, no ASGI: µs of CPU per request for a server's state machine that
receives a GET's HEADERS (as h2load sends it, HPACK-indexed after the first) and sends a response's HEADERS and a
5-byte DATA. `h2` (python-hyper, pure Python, what Corral uses) against zttp's HTTP/2 (compiled; uvicorn 0.55's).
Each library gets the same client bytes, made once by an `h2` client; best of 5 batches.

    .venv/bin/python benchmarks/h2_library.py
"""

from __future__ import annotations

import sys
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import SettingsFrame

PER_CONNECTION = 2000  # requests per server connection (its 64 KiB send window holds 13,000 such responses)
BATCHES = 5
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"5")]


def client_bytes() -> tuple[bytes, list[bytes]]:
    """The preface with SETTINGS (and the ACK of the server's), then each request's frames."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    preface = client.data_to_send() + SettingsFrame(0, flags=["ACK"]).serialize()
    requests = []
    for _ in range(PER_CONNECTION):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                                        (b":authority", b"127.0.0.1:8000")], end_stream=True)
        requests.append(client.data_to_send())
        client.streams.pop(stream_id)  # the client forgets it: its state does not matter here
    return preface, requests


def with_h2(preface: bytes, requests: list[bytes]) -> float:
    server = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None, validate_inbound_headers=True))
    server.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100, h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536})
    server.initiate_connection()
    server.receive_data(preface)
    server.data_to_send()
    started = time.process_time()
    for data in requests:
        for event in server.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                server.send_headers(event.stream_id, RESPONSE)
                server.send_data(event.stream_id, b"hello", end_stream=True)
        server.data_to_send()
    return time.process_time() - started


def with_zttp(zttp: Any, preface: bytes, requests: list[bytes]) -> float:
    server = zttp.Connection(zttp.SERVER, protocol=zttp.HTTP2)
    server.initiate_connection()
    server.receive_data(preface)
    server.data_to_send()
    started = time.process_time()
    for data in requests:
        server.receive_data(data)
        while (event := server.next_event()) is not zttp.NEED_DATA:
            if isinstance(event, zttp.Request):
                stream = server.stream(event.stream_id)
                stream.send_response(200, RESPONSE[1:])
                stream.send_data(b"hello")
                stream.end_message()
        server.data_to_send()
    return time.process_time() - started


def main() -> int:
    try:
        import zttp
    except ImportError:
        print("zttp is not installed in this environment (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    preface, requests = client_bytes()
    results = {"h2": min(with_h2(preface, requests) for _ in range(BATCHES)),
               "zttp": min(with_zttp(zttp, preface, requests) for _ in range(BATCHES))}
    print("| library | µs of CPU per request (best of 5 batches of 2,000) |\n|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds / len(requests) * 1e6:.1f} |")
    print(f"\nh2 / zttp: {results['h2'] / results['zttp']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
