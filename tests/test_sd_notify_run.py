"""`corral run` under a real NOTIFY_SOCKET: READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 as systemd sees them."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import PLAIN_APP, Corral, wait_for, write_app

APP = PLAIN_APP % "served"


class Systemd:
    """The receiving end of NOTIFY_SOCKET, as systemd holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def until(self, predicate: Callable[[list[str]], bool], what: str) -> list[str]:
        def check() -> bool:
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())
            return predicate(self.messages)

        wait_for(check, what=what)
        return self.messages


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[Systemd]:
    listener = Systemd(tmp_path / "notify.sock")
    yield listener
    listener.sock.close()


def test_notifications_reach_systemd(tmp_path: Path, systemd: Systemd) -> None:
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app.py", "-w", "2", env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "400000"})
    try:
        messages = systemd.until(lambda ms: any("READY=1" in m for m in ms), "READY=1")
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=2 workers ready" in ready
        assert len(corral.ready_pids()) == 2  # READY=1 came once the workers were serving
        systemd.until(lambda ms: sum(m == "WATCHDOG=1" for m in ms) >= 3, "watchdog pings")
        template = corral.status()["templates"][0]["pid"]
        environ = Path(f"/proc/{template}/environ").read_bytes()
        assert b"NOTIFY_SOCKET" not in environ  # only the manager speaks to systemd
        corral.signal(15)
        systemd.until(lambda ms: any("STOPPING=1" in m for m in ms), "STOPPING=1")
        assert corral.wait_exit() == 0
    finally:
        corral.stop()
