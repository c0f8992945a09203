#!/usr/bin/env python3
"""The request parsers Corral's HTTP protocol could use, parsing the same requests: httptools (llhttp), as the
protocol drives it (callbacks for the URL, each header, the head's end, the message's end), and zttp's HTTP/1.1
connection (events pulled: the request, then its end, then the next cycle). Microseconds per request, the best
of several repeats (the least disturbed by other work on the machine).

    .venv/bin/python benchmarks/parsers.py            # needs `pip install zttp` for the second column
"""

from __future__ import annotations

import sys
import timeit

import httptools

WRK = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
BROWSER = (
    b"GET /items/42?sort=asc&page=2 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
    b"Accept: text/html,application/xhtml+xml\r\nAccept-Language: en-GB,en;q=0.9\r\nAccept-Encoding: gzip, br\r\n"
    b"Cookie: session=abcdef0123456789; theme=dark\r\nConnection: keep-alive\r\nCache-Control: no-cache\r\n"
    b"Referer: https://shop.example/items\r\nSec-Fetch-Mode: navigate\r\n\r\n"
)
POST = (
    b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
    b'{"a": "bcd"}\n'
)


class Callbacks:
    """What Corral's protocol asks of llhttp, with the least Python in each callback."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.parser.get_method()
        self.parser.get_http_version()
        self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


def httptools_loop(data: bytes, count: int) -> None:
    feed = Callbacks().parser.feed_data
    for _ in range(count):
        feed(data)


def zttp_loop(data: bytes, count: int) -> None:
    import zttp

    connection = zttp.Connection(zttp.SERVER)
    for _ in range(count):
        event = connection.receive_event(data)
        while event is not zttp.NEED_DATA:
            ended = isinstance(event, zttp.EndOfMessage) or (isinstance(event, zttp.Request) and event.end_stream)
            if ended:
                connection.send_response(200, [(b"content-length", b"0")])
                connection.end_message()
                connection.data_to_send()
                connection.start_next_cycle()
            event = connection.next_event()


def best(function: object, data: bytes, count: int) -> float:
    times = timeit.repeat(lambda: function(data, count), number=1, repeat=5)  # type: ignore[operator]
    return min(times) / count * 1e6


def main() -> int:
    try:
        import zttp  # noqa: F401
    except ImportError:
        zttp_ok = False
    else:
        zttp_ok = True
    count = 50_000
    print("| request | httptools µs | zttp µs |")
    print("|---|---|---|")
    for name, data in (("wrk GET", WRK), ("browser GET, 11 fields", BROWSER), ("small POST", POST)):
        ours = best(httptools_loop, data, count)
        theirs = f"{best(zttp_loop, data, count):.2f}" if zttp_ok else "not installed"
        print(f"| {name} | {ours:.2f} | {theirs} |")
    print("\n(zttp's figure includes making a minimal response head, which its connection requires before the next"
          " request; httptools' does not)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
