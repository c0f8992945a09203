"""sd_notify against a real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.manager.sd_notify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(30)
    yield sock, path
    sock.close()


def receive(sock: socket.socket) -> dict[str, str]:
    fields = {}
    for line in sock.recv(4096).decode().splitlines():
        key, _, value = line.partition("=")
        fields[key] = value
    return fields


def test_messages_arrive_as_datagrams(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path}
    notifier = Notifier.from_environ(env)
    assert notifier.enabled
    assert env == {}, "the variables are unset so children do not inherit them"

    assert notifier.ready(status="2 workers ready")
    assert receive(sock) == {"READY": "1", "STATUS": "2 workers ready"}
    assert notifier.status("reloading:\ngeneration 2")
    assert receive(sock) == {"STATUS": "reloading: generation 2"}
    assert notifier.watchdog()
    assert receive(sock) == {"WATCHDOG": "1"}
    assert notifier.extend_timeout(90)
    assert receive(sock) == {"EXTEND_TIMEOUT_USEC": "90000000"}
    assert notifier.stopping()
    assert receive(sock) == {"STOPPING": "1"}
    notifier.close()
    assert not notifier.notify(status="closed")


def test_abstract_socket() -> None:
    name = f"corral-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(30)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.notify(ready=True, mainpid=1234)
        assert receive(sock) == {"READY": "1", "MAINPID": "1234"}
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_unsupported_address_disables() -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert not notifier.ready()


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert not notifier.ready()


def test_watchdog_interval_is_half_of_watchdog_usec(notify_socket: tuple[socket.socket, str]) -> None:
    _, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environ(env).watchdog_interval == 15.0
    without_pid = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}
    assert Notifier.from_environ(without_pid).watchdog_interval == 5.0


def test_watchdog_meant_for_another_process_is_ignored(notify_socket: tuple[socket.socket, str]) -> None:
    _, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_environ(env).watchdog_interval is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "0"}).watchdog_interval is None


def test_from_another_process_with_os_environ(notify_socket: tuple[socket.socket, str]) -> None:
    """As the manager uses it: the default reads os.environ, and its children no longer see the socket."""
    sock, path = notify_socket
    script = (
        "import os, subprocess, sys\n"
        "from corral.manager.sd_notify import Notifier\n"
        "notifier = Notifier.from_environ()\n"
        "probe = 'import os; print(os.environ.get(\"NOTIFY_SOCKET\"))'\n"
        "child = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True)\n"
        "interval = notifier.watchdog_interval\n"
        "seen = child.stdout.strip()\n"
        "notifier.notify(ready=True, status=f'child sees {seen}', watchdog_interval=interval)\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    assert receive(sock) == {"READY": "1", "STATUS": "child sees None", "WATCHDOG_INTERVAL": "2.0"}
