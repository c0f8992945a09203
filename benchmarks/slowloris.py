#!/usr/bin/env python3
"""Slow and oversized requests against Corral, uvicorn and granian (2 workers each, raw ASGI hello).

- slowloris: 200 connections each send a request head one byte every half second for `--seconds` (30 by
  default); meanwhile a normal client asks `GET /` once a second. Reported: the slow connections the server still
  holds at the end, the normal requests answered (and the slowest), the workers' PSS.
- a 1 MB header: one request with a 1 MiB header field. Reported: what came back, how long until the
  connection ended, the workers' PSS after it.

    .venv/bin/python benchmarks/slowloris.py [--seconds 30] [--servers corral,uvicorn,granian]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine import command, free_port, tree, wait_served

HOST = "127.0.0.1"
HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000


async def slow_client(port: int, seconds: float) -> bool:
    """True when the server still holds the connection after `seconds` of a byte every half second."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return False
    end = time.monotonic() + seconds
    try:
        for byte in HEAD:
            if time.monotonic() >= end:
                return not reader.at_eof()
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.5)
            if reader.at_eof():
                return False
        return not reader.at_eof()
    except OSError:
        return False
    finally:
        writer.close()


async def normal_client(port: int, seconds: float) -> tuple[int, int, float]:
    asked = answered = 0
    slowest = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        asked += 1
        start = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            if data.startswith(b"HTTP/1.1 200"):
                answered += 1
                slowest = max(slowest, time.monotonic() - start)
        except (TimeoutError, OSError):
            pass
        await asyncio.sleep(max(0.0, 1 - (time.monotonic() - start)))
    return asked, answered, slowest


async def slowloris(port: int, seconds: float, count: int) -> tuple[int, tuple[int, int, float]]:
    slow = [asyncio.create_task(slow_client(port, seconds)) for _ in range(count)]
    normal = await normal_client(port, seconds)
    held = sum(await asyncio.gather(*slow))
    return held, normal


def big_header(port: int) -> tuple[str, float]:
    import socket

    start = time.monotonic()
    data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * (1 << 20) + b"\r\n\r\n"
    received = b""
    with socket.create_connection((HOST, port), timeout=30) as sock:
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            received += b" (reset)"
        except TimeoutError:
            received += b" (no answer in 30 s)"
    first = received.split(b"\r\n", 1)[0].decode("latin-1") or "closed without an answer"
    return first, time.monotonic() - start


def pss(pid: int) -> float:
    total = 0.0
    for process in tree(pid)[1:]:
        with contextlib.suppress(Exception):  # a process gone meanwhile
            total += process.memory_full_info().pss / 2**20
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="corral,uvicorn,granian")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--connections", type=int, default=200)
    args = parser.parse_args()
    print("| server | slow connections held at the end | normal GETs answered | slowest normal GET s | PSS MiB "
          "after | 1 MiB header: answer | ended after s | PSS MiB after |")
    print("|---|---|---|---|---|---|---|---|")
    for server in args.servers.split(","):
        with tempfile.TemporaryDirectory(prefix="corral-slow-") as tmp:
            port = free_port()
            process = subprocess.Popen(command(server, "hello_raw:app", port, Path(tmp)), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                wait_served(port)
                held, (asked, answered, slowest) = asyncio.run(slowloris(port, args.seconds, args.connections))
                after_slow = pss(process.pid)
                answer, took = big_header(port)
                after_big = pss(process.pid)
            finally:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        print(f"| {server} | {held} of {args.connections} | {answered} of {asked} | {slowest:.2f} | {after_slow:.1f} "
              f"| {answer} | {took:.2f} | {after_big:.1f} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
