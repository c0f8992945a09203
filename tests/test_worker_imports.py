"""What a worker carries: uvicorn's server without its command line (`corral.worker.uvicorn_init`), and for a
WSGI app no WebSocket protocol; and the manager, which loads no OpenSSL when HTTPS is off.

`import uvicorn` runs uvicorn's `__init__`, which imports click, multiprocessing, watchfiles and anyio for its
command line and reloader: about 3 MiB of every template (docs/benchmarks.md, WSGI memory). A worker serving a
plain app has none of them, and an app that uses uvicorn's top level still gets the real package. A WSGI app
takes no WebSocket (an upgrade request reaches it as a plain request), so its workers do without the WebSocket
protocol's modules (1.7 MiB).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from harness import Corral, write_app

APP = """
    import json, sys

    UNUSED = ["uvicorn.main", "uvicorn.supervisors", "click", "watchfiles", "anyio", "multiprocessing",
              "websockets", "uvicorn.protocols.websockets.auto"]

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        if environ["PATH_INFO"] == "/uvicorn":  # the app asks for uvicorn's top level after all
            import uvicorn
            from uvicorn import main
            seen = {"run": uvicorn.run.__module__, "main": main.name, "config": uvicorn.Config.__module__,
                    "version": uvicorn.__version__}
            return [json.dumps(seen).encode()]
        return [json.dumps([name for name in UNUSED if name in sys.modules]).encode()]
"""


def test_a_worker_imports_no_command_line_of_uvicorn(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app.py", "-w", "1")
    corrals.append(corral)
    corral.wait_ready(1)
    assert json.loads(corral.get("/").text) == []
    with socket.create_connection(("127.0.0.1", corral.port), timeout=20) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        answer = b""
        while not answer.endswith(b"0\r\n\r\n"):
            data = sock.recv(4096)
            assert data, answer
            answer += data
    assert answer.startswith(b"HTTP/1.1 200 "), answer  # the app answered it as a plain request
    seen = json.loads(corral.get("/uvicorn").text)
    assert seen["run"] == "uvicorn.main" and seen["main"] == "main", seen
    assert seen["config"] == "uvicorn.config" and seen["version"].count(".") == 2, seen
    assert json.loads(corral.get("/").text)[:2] == ["uvicorn.main", "uvicorn.supervisors"]


def test_the_manager_loads_no_openssl_without_https(corrals: list[Corral], tmp_path: Path) -> None:
    """asyncio would load ssl and OpenSSL's libraries into the manager (about 1.4 MiB of its PSS, 4 MiB of its RSS)
    for TLS transports it never opens; with HTTPS on, the manager imports ssl itself (tests/test_https_run.py)."""
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app.py", "-w", "1")
    corrals.append(corral)
    corral.wait_ready(1)
    maps = Path(f"/proc/{corral.process.pid}/maps").read_text()
    assert "corral.manager.entry" in Path(f"/proc/{corral.process.pid}/cmdline").read_text()
    assert "libssl" not in maps and "_ssl." not in maps, [line for line in maps.splitlines() if "ssl" in line]
