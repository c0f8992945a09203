"""WSGI apps served by `corral run`: detection, the PEP 3333 environ, streaming both ways, Flask, clean errors."""

from __future__ import annotations

import functools
import socket
from pathlib import Path
from typing import Any

import pytest

from corral.discovery import AppLoadError, Target, app_interface
from harness import Corral, run_cli, wait_for, write_app

TARGET = Target("app", "app", "/nowhere")


class AsgiObject:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...


class Asgi2Class:
    def __init__(self, scope: Any) -> None: ...


class WsgiObject:
    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return []


async def asgi_function(scope: Any, receive: Any, send: Any) -> None: ...


def wsgi_function(environ: Any, start_response: Any) -> list[bytes]:
    return []


def test_detection_of_each_kind_of_callable() -> None:
    import django.core.handlers.asgi
    import flask
    import starlette.applications
    from django.conf import settings

    if not settings.configured:
        settings.configure()
    assert app_interface(asgi_function, "auto", TARGET) == "asgi"
    assert app_interface(AsgiObject(), "auto", TARGET) == "asgi"
    assert app_interface(Asgi2Class, "auto", TARGET) == "asgi"
    assert app_interface(functools.partial(asgi_function, {}), "auto", TARGET) == "asgi"
    assert app_interface(starlette.applications.Starlette(), "auto", TARGET) == "asgi"
    assert app_interface(django.core.handlers.asgi.ASGIHandler(), "auto", TARGET) == "asgi"
    assert app_interface(wsgi_function, "auto", TARGET) == "wsgi"
    assert app_interface(WsgiObject(), "auto", TARGET) == "wsgi"
    assert app_interface(flask.Flask("x"), "auto", TARGET) == "wsgi"
    from django.core.handlers.wsgi import WSGIHandler

    assert app_interface(WSGIHandler(), "auto", TARGET) == "wsgi"
    assert app_interface(wsgi_function, "asgi", TARGET) == "asgi"  # --interface wins
    assert app_interface(asgi_function, "wsgi", TARGET) == "wsgi"
    for neither in (lambda: None, lambda a, b, c, d: None):
        with pytest.raises(AppLoadError, match=r"neither an ASGI app .* nor a WSGI app"):
            app_interface(neither, "auto", TARGET)


RAW = """
    import json, sys, time

    closed = []

    class Body:
        def __init__(self, chunks):
            self.chunks = chunks
        def __iter__(self):
            return iter(self.chunks)
        def close(self):
            closed.append(1)

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path.endswith("/environ"):
            keys = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL", "REMOTE_ADDR",
                    "wsgi.url_scheme", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once", "HTTP_X_ONE",
                    "CONTENT_TYPE", "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT"]
            seen = {key: environ.get(key) for key in keys}
            seen["version"] = list(environ["wsgi.version"])
            seen["errors_is_stderr"] = environ["wsgi.errors"] is sys.stderr
            seen["body"] = environ["wsgi.input"].read().decode()
            print("to wsgi.errors", file=environ["wsgi.errors"])
            start_response("200 OK", [("Content-Type", "application/json")])
            return Body([json.dumps(seen).encode()])
        if path == "/stream-in":
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            first = environ["wsgi.input"].read(5)
            write(b"got " + first + b"\\n")  # sent before the rest of the body has arrived
            rest = environ["wsgi.input"].read()
            return Body([b"then " + rest])
        if path == "/file":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return environ["wsgi.file_wrapper"](open(__file__, "rb"), 7)
        if path == "/replace":  # headers not sent yet: an error may still replace them (PEP 3333)
            start_response("200 OK", [])
            try:
                raise ValueError("late")
            except ValueError:
                start_response("500 Internal Server Error", [("X-Replaced", "1")], sys.exc_info())
            return [b"", b"replaced"]
        if path == "/closed":
            start_response("200 OK", [])
            return [str(len(closed)).encode()]
        start_response("404 Not Found", [])
        return [b""]
"""


def test_environ_is_complete(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, RAW)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--forwarded-allow-ips", "127.0.0.1",
                    env={"SCRIPT_NAME": "/shop"})
    corrals.append(corral)
    corral.wait_ready(1)
    import httpx

    response = httpx.post(corral.url + "/shop/environ?a=1", content=b"posted", timeout=10,
                          headers={"X-One": "1", "Content-Type": "text/x", "X-Forwarded-For": "203.0.113.7",
                                   "X-Forwarded-Proto": "https"})
    seen = response.json()
    assert seen["REQUEST_METHOD"] == "POST"
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"], seen["QUERY_STRING"]) == ("/shop", "/environ", "a=1")
    assert seen["REMOTE_ADDR"] == "203.0.113.7"
    assert seen["wsgi.url_scheme"] == "https"
    assert seen["version"] == [1, 0] and seen["wsgi.multithread"] and seen["wsgi.multiprocess"]
    assert seen["wsgi.run_once"] is False and seen["errors_is_stderr"]
    assert (seen["HTTP_X_ONE"], seen["CONTENT_TYPE"], seen["CONTENT_LENGTH"]) == ("1", "text/x", "6")
    assert seen["body"] == "posted" and seen["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert seen["SERVER_PORT"] == str(corral.port)
    wait_for(lambda: "to wsgi.errors" in corral.log, what="wsgi.errors in the log")
    assert httpx.get(corral.url + "/closed", timeout=10).text == "1"  # the iterable was closed
    replaced = httpx.get(corral.url + "/replace", timeout=10)
    assert (replaced.status_code, replaced.headers.get("x-replaced"), replaced.text) == (500, "1", "replaced")
    wrapped = httpx.get(corral.url + "/file", timeout=10)
    assert wrapped.text == (tmp_path / "app.py").read_text()


def test_request_and_response_stream(corrals: list[Corral], tmp_path: Path) -> None:
    """The app reads 5 bytes of the body and write()s an answer; the client gets it before sending the rest."""
    write_app(tmp_path, RAW)
    corral = Corral(tmp_path, "app.py", "-w", "1")
    corrals.append(corral)
    corral.wait_ready(1)
    with socket.create_connection(("127.0.0.1", corral.port), timeout=20) as sock:
        sock.sendall(b"POST /stream-in HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        received = b""
        while b"got hello" not in received:
            data = sock.recv(4096)
            assert data, received
            received += data
        assert b"then" not in received
        sock.sendall(b"6\r\n world\r\n0\r\n\r\n")
        while b"then  world" not in received:
            data = sock.recv(4096)
            assert data, received
            received += data


FLASK = """
    import os, time
    from flask import Flask, Response, request

    app = Flask(__name__)

    @app.get("/")
    def hello():
        return f"hello from flask {os.getpid()} to {request.remote_addr}"

    @app.get("/stream")
    def stream():
        def chunks():
            yield "chunk 1\\n"
            deadline = time.monotonic() + 60
            while not os.path.exists("go") and time.monotonic() < deadline:
                time.sleep(0.01)
            yield "chunk 2\\n"
        return Response(chunks(), mimetype="text/plain")
"""


def test_flask_hello_and_streaming_response(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, FLASK)
    corral = Corral(tmp_path, "app.py", "-w", "2", "--threads", "4")
    corrals.append(corral)
    corral.wait_ready(2)
    assert "app:app is a WSGI app: each worker runs it in 4 threads" in corral.log
    assert corral.get().text.startswith("hello from flask ")
    assert corral.get().text.endswith(" to 127.0.0.1")
    import httpx

    # the first chunk must arrive while the generator waits (up to 60 s) for the go: well within the read timeout
    with httpx.stream("GET", corral.url + "/stream", timeout=httpx.Timeout(70, read=30)) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        assert first == b"chunk 1\n"  # arrived while the generator waits for the go
        (tmp_path / "go").touch()
        assert b"".join(chunks) == b"chunk 2\n"


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("def app():\n    return None\n", "app:app is neither an ASGI app (scope, receive, send) nor a WSGI app"),
        ("app = 42\n", "app:app is not an ASGI or WSGI app (not callable)"),
    ],
)
def test_neither_wsgi_nor_asgi_is_one_line_and_exit_3(tmp_path: Path, source: str, words: str) -> None:
    write_app(tmp_path, source)
    result = run_cli("run", "app.py", "-b", "127.0.0.1:0", "--control", str(tmp_path / "c.sock"), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_interface_forces_wsgi(corrals: list[Corral], tmp_path: Path) -> None:
    """A WSGI callable that takes *args cannot be told apart: --interface wsgi says what it is (here without
    preload: the worker detects and says it)."""
    write_app(tmp_path, "def app(*args):\n    environ, start_response = args\n"
                        "    start_response('200 OK', [])\n    return [b'forced']\n")
    corral = Corral(tmp_path, "app.py", "-w", "1", "--interface", "wsgi", "--no-preload")
    corrals.append(corral)
    corral.wait_ready(1)
    assert corral.get().text == "forced"
    assert "app:app is a WSGI app: this worker runs it in 8 threads" in corral.log


def test_django_discovery_prefers_asgi_and_says_so(tmp_path: Path) -> None:
    from corral.discovery import resolve_target

    (tmp_path / "manage.py").write_text("")
    package = tmp_path / "mysite"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "wsgi.py").write_text("")
    assert str(resolve_target(None, None, tmp_path)) == "mysite.wsgi:application"
    (package / "asgi.py").write_text("")
    target = resolve_target(None, None, tmp_path)
    assert str(target) == "mysite.asgi:application"
    assert "mysite/asgi.py picked over wsgi.py" in target.note


ENDLESS = """
    import itertools, time

    class Endless:
        def __init__(self, name):
            self.name = name
            self.count = itertools.count()
        def __iter__(self):
            return self
        def __next__(self):
            time.sleep(0.01)
            return b"tick %d\\n" % next(self.count)
        def close(self):
            with open(self.name, "w") as marker:
                marker.write("closed")

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/endless":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return Endless("iterable-closed")
        if path == "/endless-write":
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            try:
                for count in itertools.count():
                    write(b"tick %d\\n" % count)
                    time.sleep(0.01)
            finally:
                with open("write-stopped", "w") as marker:
                    marker.write(repr(__import__("sys").exc_info()[0]))
        start_response("200 OK", [])
        return [b"free"]
"""


@pytest.mark.parametrize("http", ["auto", "h11"])
def test_a_client_leaving_an_endless_response_frees_its_thread(
    corrals: list[Corral], tmp_path: Path, http: str
) -> None:
    """The client reads a little of a response that never ends and goes: the thread stops pulling from the
    iterable and closes it (PEP 3333), or the app's write() raises; with one thread, the next request is served.
    Corral's HTTP protocol and uvicorn's (h11) tell the departure the same way."""
    write_app(tmp_path, ENDLESS)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--threads", "1", "--http", http)
    corrals.append(corral)
    corral.wait_ready(1)
    for path, marker in (("/endless", "iterable-closed"), ("/endless-write", "write-stopped")):
        with socket.create_connection(("127.0.0.1", corral.port), timeout=20) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            received = b""
            while b"tick 3\n" not in received:
                data = sock.recv(4096)
                assert data, received
                received += data
        wait_for(lambda marker=marker: (tmp_path / marker).exists(), timeout=60, what=f"the end of {path}")
        assert corral.get("/", timeout=30).text == "free"  # the only thread serves again
    assert "ClientDisconnected" in (tmp_path / "write-stopped").read_text()
