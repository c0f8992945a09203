"""The options users bring from uvicorn and gunicorn, each by its behaviour, with real `corral run` processes."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import trustme

from harness import Corral, corral_command, free_port, run_cli, wait_for, write_app

SCOPE_APP = """
    import json

    async def app(scope, receive, send):
        if scope["type"] == "websocket":
            message = await receive()
            await send({"type": "websocket.accept"})
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                await send({"type": "websocket.send", "text": message.get("text") or "bytes"})
        if scope["type"] != "http":
            return
        body = json.dumps({"root_path": scope["root_path"], "path": scope["path"],
                           "raw_path": scope["raw_path"].decode()}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
"""


def config_value(*args: str) -> dict[str, object]:
    result = run_cli("config", "--json", *args)
    assert result.returncode == 0, result.stderr
    return {key: row["value"] for key, row in json.loads(result.stdout).items()}


def test_listeners_root_path_and_backlog(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, SCOPE_APP)
    port, uds = free_port(), tmp_path / "app.sock"
    corral = Corral(tmp_path, "app.py", "-w", "1", "--host", "127.0.0.1", "--port", str(port), "--uds", str(uds),
                    "--root-path", "/api", "--backlog", "17")
    corrals.append(corral)
    corral.wait_ready(1)
    # --bind (the harness's), --host/--port and --uds: three listeners
    seen = httpx.get(f"http://127.0.0.1:{port}/items/1?x=1").json()
    assert seen == {"root_path": "/api", "path": "/api/items/1", "raw_path": "/api/items/1"}
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(uds))) as client:
        assert client.get("http://app/x").json()["path"] == "/api/x"
    assert corral.get("/").json()["root_path"] == "/api"
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
    assert listening[2] == "17", listening  # Send-Q of a listening socket: its backlog


def test_fd_serves_an_inherited_socket(tmp_path: Path) -> None:
    write_app(tmp_path, SCOPE_APP)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    command = corral_command("run", "app.py", "-w", "1", "--fd", str(fd), "--control", str(tmp_path / "c.sock"))
    process = subprocess.Popen(command, cwd=tmp_path, pass_fds=[fd], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    listener.close()
    try:
        body = wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/p").json(), what="the inherited socket served")
        assert body["path"] == "/p"
    finally:
        os.killpg(process.pid, 9)
        process.wait(10)


@pytest.mark.parametrize(
    ("args", "option", "value"),
    [
        (["--timeout-keep-alive", "2"], "keep_alive", 2.0),
        (["--timeout-graceful-shutdown", "7"], "graceful_timeout", 7.0),
        (["--limit-max-requests", "100"], "max_requests", 100),
        (["--limit-max-requests-jitter", "9"], "max_requests_jitter", 9),
        (["--ssl-certfile", "/c.pem", "--ssl-keyfile", "/k.pem"], "keyfile", "/k.pem"),
        (["--limit-request-line", "4094"], "max_request_line", 4094),
        (["--limit-request-fields", "50"], "max_headers", 50),
        (["--limit-request-field_size", "8190"], "max_request_head", 8190),
        (["--h11-max-incomplete-event-size", "20000"], "max_request_head", 20000),
        (["--host", "::1", "--port", "9000"], "bind", ["[::1]:9000"]),
        (["--uds", "/tmp/x.sock"], "bind", ["unix:/tmp/x.sock"]),
        (["-b", "127.0.0.1:1", "--port", "2"], "bind", ["127.0.0.1:1", "127.0.0.1:2"]),
    ],
)
def test_aliases_name_the_same_option(args: list[str], option: str, value: object) -> None:
    assert config_value(*args)[option] == value


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--root-path", "api/"], "invalid --root-path"),
        (["--port", "70000"], "invalid --port"),
        (["--ssl-ciphers", "NO-SUCH-CIPHER"], "invalid --ssl-ciphers"),
        (["--ws", "nope"], "invalid --ws"),
        (["--reload-include", "a/b"], "invalid --reload-include"),
        (["--header", "no colon"], "invalid --header"),
        (["--header", "bad name: x"], "invalid --header"),
        (["--limit-concurrency", "0"], "invalid --limit-concurrency"),
    ],
)
def test_bad_values_are_one_line(args: list[str], message: str) -> None:
    result = run_cli("config", *args)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr


LOG_CONFIG = {
    "version": 1,
    "formatters": {"plain": {"format": "ACCESS %(message)s"}},
    "handlers": {"file": {"class": "logging.FileHandler", "filename": "", "formatter": "plain"}},
    "loggers": {"corral.access": {"handlers": ["file"], "level": "INFO", "propagate": False}},
}


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_log_config(corrals: list[Corral], tmp_path: Path, suffix: str) -> None:
    import yaml

    write_app(tmp_path, SCOPE_APP)
    out = tmp_path / "access.log"
    config = json.loads(json.dumps(LOG_CONFIG))
    config["handlers"]["file"]["filename"] = str(out)
    path = tmp_path / f"logging{suffix}"
    path.write_text(json.dumps(config) if suffix == ".json" else yaml.safe_dump(config))
    corral = Corral(tmp_path, "app.py", "-w", "1", "--log-config", str(path))
    corrals.append(corral)
    corral.wait_ready(1)
    corral.get("/logged")
    line = wait_for(lambda: out.exists() and out.read_text(), what="the access line in the configured file")
    assert line.startswith("ACCESS ") and "GET /logged" in line
    assert "GET /logged" not in corral.log  # the configured handler replaced Corral's for that logger


def test_bad_log_config_is_one_line(tmp_path: Path) -> None:
    write_app(tmp_path, SCOPE_APP)
    (tmp_path / "bad.json").write_text("{not json")
    result = run_cli("run", "app.py", "--log-config", str(tmp_path / "bad.json"), "--control",
                     str(tmp_path / "c.sock"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("corral: --log-config") and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize(("flag", "coloured"), [("--use-colors", True), ("--no-use-colors", False), (None, False)])
def test_use_colors(corrals: list[Corral], tmp_path: Path, flag: str | None, coloured: bool) -> None:
    write_app(tmp_path, SCOPE_APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", *([flag] if flag else []))  # stderr is a file, not a terminal
    corrals.append(corral)
    corral.wait_ready(1)
    corral.get("/")
    wait_for(lambda: "GET / " in corral.log, what="the access line")
    assert ("\x1b[32mINFO\x1b[0m" in corral.log) is coloured
    assert ("\x1b[32m200\x1b[0m" in corral.log) is coloured


@pytest.fixture
def mutual_tls(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.com")
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem", "key": tmp_path / "server.key",
             "client": tmp_path / "client.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    return files


def _tls_get(port: int, context: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except ssl.SSLEOFError:  # closed without close_notify, after the whole response
                return data
            if not chunk:
                return data
            data += chunk


def test_ssl_options(corrals: list[Corral], tmp_path: Path, mutual_tls: dict[str, Path]) -> None:
    write_app(tmp_path, SCOPE_APP)
    cipher = "ECDHE-ECDSA-AES128-GCM-SHA256"
    corral = Corral(tmp_path, "app.py", "-w", "1", "--ssl-certfile", str(mutual_tls["cert"]), "--ssl-keyfile",
                    str(mutual_tls["key"]), "--ssl-ca-certs", str(mutual_tls["ca"]), "--ssl-ciphers", cipher,
                    "--state-dir", str(tmp_path / "state"))
    corrals.append(corral)
    wait_for(lambda: "worker 1" in corral.log and "ready" in corral.log, what="ready")

    def client(certificate: bool, ciphers: str | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(mutual_tls["ca"]))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        if ciphers:
            context.set_ciphers(ciphers)
        if certificate:
            context.load_cert_chain(str(mutual_tls["client"]))
        return context

    answer = wait_for(lambda: _tls_get(corral.port, client(True)), what="a client with a certificate served")
    assert answer.startswith(b"HTTP/1.1 200")
    with pytest.raises((ssl.SSLError, ConnectionError)):  # no client certificate: the handshake fails
        _tls_get(corral.port, client(False))
    with pytest.raises(ssl.SSLError):  # a cipher outside --ssl-ciphers
        _tls_get(corral.port, client(True, "ECDHE-ECDSA-AES256-GCM-SHA384"))


def test_ssl_ca_certs_needs_https(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    write_app(tmp_path, SCOPE_APP)
    result = run_cli("run", "app.py", "--ssl-ca-certs", str(tmp_path / "ca.pem"), "--control",
                     str(tmp_path / "c.sock"), cwd=tmp_path)
    assert result.returncode == 2 and "--ssl-ca-certs needs HTTPS" in result.stderr, result.stderr


def _handshake(port: int, extensions: str = "") -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def _frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    short = len(payload) < 126
    length = bytes([0x80 | len(payload)]) if short else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return bytes([0x80 | opcode]) + length + mask + masked


def test_websocket_options(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, SCOPE_APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--ws", "websockets", "--ws-max-size", "1000",
                    "--ws-ping-interval", "0.3", "--ws-ping-timeout", "0.5", "--no-ws-per-message-deflate")
    corrals.append(corral)
    corral.wait_ready(1)
    sock, head = _handshake(corral.port, "permessage-deflate")
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"permessage-deflate" not in head.lower()  # --no-ws-per-message-deflate
    # --ws-ping-interval: a ping comes; --ws-ping-timeout: left unanswered, the server closes
    first = sock.recv(2)
    assert first[0] & 0x0F == 0x9, first  # a ping frame
    started = time.monotonic()
    sock.settimeout(10)
    while sock.recv(4096):
        pass
    assert time.monotonic() - started < 5
    sock.close()
    # --ws-max-size: a message over 1000 bytes closes the connection with 1009
    sock, head = _handshake(corral.port)
    sock.sendall(_frame(0x1, b"x" * 2000))
    data = b""
    while len(data) < 4:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data[0] & 0x0F == 0x8 and int.from_bytes(data[2:4], "big") == 1009, data
    sock.close()


def test_ws_defaults_and_none(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, SCOPE_APP)
    on = Corral(tmp_path, "app.py", "-w", "1")
    off = Corral(tmp_path, "app.py", "-w", "1", "--ws", "none")
    corrals += [on, off]
    on.wait_ready(1)
    off.wait_ready(1)
    sock, head = _handshake(on.port, "permessage-deflate")
    assert head.startswith(b"HTTP/1.1 101") and b"permessage-deflate" in head.lower()
    sock.close()
    sock, head = _handshake(off.port)
    assert not head.startswith(b"HTTP/1.1 101"), head  # no WebSocket: the upgrade is not taken
    sock.close()


SLOW_APP = """
    import asyncio
    from pathlib import Path

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        if scope["path"] == "/slow":
            Path("in-flight").touch()
            while not Path("release").exists():
                await asyncio.sleep(0.02)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
"""


def test_limit_concurrency_and_headers(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, SLOW_APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--limit-concurrency", "2", "--header", "X-Team: shop",
                    "--header", "x-build:42", "--server-header", "--no-date-header")
    corrals.append(corral)
    corral.wait_ready(1)
    for response in (corral.get("/"), corral.get("/boom")):
        assert response.headers["x-team"] == "shop" and response.headers["x-build"] == "42", response.headers
        assert response.headers["server"] == "corral" and "date" not in response.headers
    assert corral.get("/boom").status_code == 500
    slow: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: slow.append(corral.get("/slow", timeout=60)))
    thread.start()
    try:
        wait_for(lambda: (tmp_path / "in-flight").exists(), what="the slow request in flight")
        over = corral.get("/")
        assert over.status_code == 503, over
    finally:
        (tmp_path / "release").touch()
        thread.join(60)
    assert slow[0].status_code == 200
    assert corral.get("/").status_code == 200  # below the limit again


def test_header_defaults(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, SLOW_APP)
    corral = Corral(tmp_path, "app.py", "-w", "1")
    corrals.append(corral)
    corral.wait_ready(1)
    response = corral.get("/")
    assert "server" not in response.headers and "date" in response.headers
    assert "x-team" not in response.headers


def _raw_status(port: int, request: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        head = sock.recv(65536).split(b"\r\n", 1)[0]
    return int(head.split()[1])


def test_gunicorn_head_limit_names(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, SLOW_APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--limit-request-line", "300", "--limit-request-fields", "10",
                    "--limit-request-field_size", "1024")
    corrals.append(corral)
    corral.wait_ready(1)
    ok = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _raw_status(corral.port, ok) == 200
    long_line = b"GET /" + b"a" * 400 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _raw_status(corral.port, long_line) == 414
    fields = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(11)) + b"\r\n"
    assert _raw_status(corral.port, fields) == 431
    big_field = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n"
    assert _raw_status(corral.port, big_field) == 431


def test_exports_fold_uvicorns_listener_names_into_bind(tmp_path: Path) -> None:
    """`corral export docker --port 9000`: the container listens on 0.0.0.0:9000, not on loopback beside 8000."""
    from corral.config import run_arguments, settings_from
    from corral.export.common import container_plan

    plan = container_plan(settings_from({"app": "main:app", "port": 9000}), tmp_path)
    assert plan.settings.bind == ["0.0.0.0:9000"] and plan.ports == [9000]
    arguments = run_arguments(plan.settings)
    assert "--port" not in arguments and "--host" not in arguments
