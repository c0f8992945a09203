#!/usr/bin/env python3
"""CPU time per request of the HTTP protocol itself: Corral's (`--http auto`) against uvicorn's httptools
protocol, each with and without Corral's request metrics, serving the raw ASGI hello and the FastAPI hello.

No sockets and no kernel: each protocol is fed the same keep-alive request (what wrk sends) on a stand-in
transport that keeps nothing, on uvloop, one request after the other, and the process's CPU time is read around
a batch. The best of several batches is kept (the one other work on the machine disturbed least), so this
tells the protocols' own cost apart on a loaded machine where requests per CPU-second over loopback cannot:
those add the kernel's socket work, the same for both, and wait for the CPU with everything else.

    .venv/bin/python benchmarks/protocol_cpu.py [--requests 20000] [--batches 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "apps"))

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"


class Transport(asyncio.Transport):
    """Takes what the protocol writes and counts the responses' ends (each hello's body ends the response)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += 1

    def writelines(self, data: Any) -> None:
        self.written += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def batch(protocol_class: type[Any], config: uvicorn.Config, state: Any, requests: int) -> float:
    protocol = protocol_class(config=config, server_state=state, app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    served = lambda: state.total_requests  # noqa: E731 - read after each request
    start = time.process_time()
    for _ in range(requests):
        before = served()
        protocol.data_received(REQUEST)
        while served() == before:
            await asyncio.sleep(0)
    used = time.process_time() - start
    protocol.connection_lost(None)
    return used / requests * 1e6


def measure(app_name: str, metrics: bool, requests: int, batches: int) -> dict[str, float]:
    from corral.worker.http.protocol import HttpProtocol
    from corral.worker.protocols import DrainState, uvicorn_protocol_class

    module, _, attr = app_name.partition(":")
    app = getattr(__import__(module), attr)
    config = uvicorn.Config(app, lifespan="off", proxy_headers=False, log_level="warning", access_log=False)
    config.load()
    results = {}
    for name, protocol_class in (("corral", HttpProtocol), ("uvicorn httptools", uvicorn_protocol_class("httptools"))):
        state = DrainState()
        state.default_headers = [(b"date", b"Sun, 06 Dec 2026 09:00:00 GMT")]
        times = [uvloop.run(batch(protocol_class, config, state, requests)) for _ in range(batches)]
        results[name] = min(times)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--batches", type=int, default=7)
    args = parser.parse_args()
    from corral.metrics_shm import RequestFigures
    from corral.worker.metrics import count_requests

    figures: dict[tuple[str, bool], dict[str, float]] = {}
    apps = ("hello_raw:app", "hello_fastapi:app")
    for app in apps:
        figures[(app, False)] = measure(app, False, args.requests, args.batches)
    fd = os.memfd_create("figures")
    count_requests(RequestFigures.create(fd), 0)  # from here on every protocol counts (uvicorn's through Corral)
    for app in apps:
        figures[(app, True)] = measure(app, True, args.requests, args.batches)
    print("| app | metrics | Corral µs/request | uvicorn httptools µs/request | uvicorn / Corral |")
    print("|---|---|---|---|---|")
    for (app, metrics), result in figures.items():
        ours, theirs = result["corral"], result["uvicorn httptools"]
        print(f"| {app} | {'on' if metrics else 'off'} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f} |")
    for app in apps:
        on, off = figures[(app, True)]["corral"], figures[(app, False)]["corral"]
        print(f"\n{app}: Corral with metrics on vs off: {(on / off - 1) * 100:+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
