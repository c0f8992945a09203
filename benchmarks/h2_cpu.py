#!/usr/bin/env python3
"""CPU time per request of Corral's HTTP/2 protocol (`corral.worker.http2`), with no sockets and no kernel.

The protocol is fed what `h2load -m 10` sends over one connection (ten GET streams at a time, HPACK-encoded by an
`h2` client, with windows of 2^30 as h2load asks) on a stand-in transport that keeps nothing, on uvloop, serving
the raw ASGI hello; the process's CPU time is read around a batch and the best of several batches kept (the one
other work on the machine disturbed least). `--vary` answers bodies of changing lengths; `--profile` prints
cProfile's top entries for one batch instead.

    .venv/bin/python benchmarks/h2_cpu.py [--requests 20000] [--batches 5] [--vary] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.settings
import uvicorn
import uvloop
from hyperframe.frame import SettingsFrame

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "apps"))
sys.path.insert(0, str(HERE))

from protocol_cpu import Transport  # noqa: E402

CONCURRENT = 10
WINDOW = 2**30 - 1


def client_bytes(requests: int) -> list[bytes]:
    """The preface, then one chunk of `CONCURRENT` requests per round, as an `h2` client encodes them."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW, h2.settings.SettingCodes.ENABLE_PUSH: 0,
    })  # fmt: skip
    client.initiate_connection()
    client.increment_flow_control_window(WINDOW - 65535)
    chunks = [client.data_to_send() + SettingsFrame(0, flags=["ACK"]).serialize()]
    headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:8000"), (b":path", b"/"),
               (b"user-agent", b"h2load nghttp2/1.64.0")]
    for _ in range(0, requests, CONCURRENT):
        for _ in range(CONCURRENT):
            client.send_headers(client.get_next_available_stream_id(), headers, end_stream=True)
        chunks.append(client.data_to_send())
    return chunks


async def batch(config: uvicorn.Config, state: Any, chunks: list[bytes]) -> float:
    from corral.worker.http2.protocol import H2Protocol

    protocol = H2Protocol(config, state, {}, asyncio.get_running_loop())
    protocol.connection_made(Transport())
    protocol.data_received(chunks[0])
    start = time.process_time()
    for chunk in chunks[1:]:
        protocol.data_received(chunk)
        while protocol.streams:
            await asyncio.sleep(0)
    used = time.process_time() - start
    protocol.connection_lost(None)
    return used / ((len(chunks) - 1) * CONCURRENT) * 1e6


def varying_app() -> Any:
    from _common import respond

    count = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal count
        count += 1
        await respond(send, b"x" * (count % 50 + 1))

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--vary", action="store_true", help="bodies of 1 to 50 bytes: a content-length that changes")
    args = parser.parse_args()
    from corral.worker.protocols import DrainState

    app = __import__("hello_raw").app
    if args.vary:
        app = varying_app()
    config = uvicorn.Config(app, lifespan="off", proxy_headers=False, log_level="warning", access_log=False)
    config.load()
    state = DrainState()
    state.default_headers = [(b"date", b"Sun, 06 Dec 2026 09:00:00 GMT"), (b"server", b"corral")]
    chunks = client_bytes(args.requests)
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        uvloop.run(batch(config, state, chunks))
        profile.disable()
        pstats.Stats(profile).sort_stats(args.sort).print_stats(args.top)
        return 0
    times = [uvloop.run(batch(config, state, chunks)) for _ in range(args.batches)]
    print(f"Corral HTTP/2, raw hello, h2load -m {CONCURRENT} pattern: best {min(times):.1f} µs/request, "
          f"batches {' '.join(f'{t:.1f}' for t in times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
