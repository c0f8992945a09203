"""Unit tests of `--bind` parsing and of opening real listening sockets on loopback and UNIX paths."""

from __future__ import annotations

import gc
import os
import socket
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.binds import Bind, display_urls, open_socket, parse_bind
from corral.errors import CorralError, ExitCode


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets to close at the end of a test."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a path short enough for AF_UNIX (pytest's tmp_path can exceed 107 bytes)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="corral-") as name:
        yield Path(name)


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def bind_failure(bind: Bind) -> str:
    with pytest.raises(CorralError) as error:
        open_socket(bind)
    assert error.value.exit_code == ExitCode.BIND_FAILED
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"cannot listen on {bind}") or message.startswith(f"fd://{bind.fd}")
    return message


def connect_unix(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(path))


# --- parse_bind -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bind", "shown"),
    [
        ("127.0.0.1:8000", Bind("tcp", host="127.0.0.1", port=8000), "127.0.0.1:8000"),
        ("0.0.0.0:80", Bind("tcp", host="0.0.0.0", port=80), "0.0.0.0:80"),
        ("localhost:0", Bind("tcp", host="localhost", port=0), "localhost:0"),
        (":8080", Bind("tcp", host="0.0.0.0", port=8080), "0.0.0.0:8080"),
        ("[::1]:8000", Bind("tcp", host="::1", port=8000), "[::1]:8000"),
        ("[::]:65535", Bind("tcp", host="::", port=65535), "[::]:65535"),
        ("[fe80::1:2]:443", Bind("tcp", host="fe80::1:2", port=443), "[fe80::1:2]:443"),
        ("unix:/run/app.sock", Bind("unix", path="/run/app.sock"), "unix:/run/app.sock"),
        ("unix:relative.sock", Bind("unix", path="relative.sock"), "unix:relative.sock"),
        ("fd://3", Bind("fd", fd=3), "fd://3"),
    ],
)
def test_parse_bind(text: str, bind: Bind, shown: str) -> None:
    parsed = parse_bind(text)
    assert parsed == bind
    assert str(parsed) == shown
    assert parse_bind(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("localhost", "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
        ("8000", "expected HOST:PORT"),
        ("127.0.0.1:", "port must be a number"),
        ("127.0.0.1:http", "port must be a number"),
        ("127.0.0.1:65536", "port must be a number"),
        ("127.0.0.1:-1", "port must be a number"),
        ("[::1]", "expected [IPv6]:PORT"),
        ("[::1]8000", "expected [IPv6]:PORT"),
        ("[::zz]:80", "'::zz' is not an IPv6 address"),
        ("fe80::zz:80", "is not an IPv6 address"),
        ("unix:", "unix: needs a path"),
        ("fd://", "fd:// needs a file descriptor number"),
        ("fd://three", "fd:// needs a file descriptor number"),
        ("fd://-1", "fd:// needs a file descriptor number"),
    ],
)
def test_parse_bind_errors(text: str, says: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_bind(text)
    message = str(error.value)
    assert message.startswith(f"{text!r}: ")
    assert says in message
    assert "\n" not in message


# --- open_socket: TCP -----------------------------------------------------------------------------


def test_open_tcp_on_loopback(sockets: list[socket.socket]) -> None:
    sock = open_socket(parse_bind("127.0.0.1:0"))
    sockets.append(sock)
    host, port = sock.getsockname()
    assert host == "127.0.0.1" and port > 0
    assert sock.family == socket.AF_INET
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    assert sock.get_inheritable()
    assert display_urls(sock) == f"http://127.0.0.1:{port}"
    assert display_urls(sock, "https") == f"https://127.0.0.1:{port}"
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        conn, _ = sock.accept()
        conn.close()


def test_open_tcp_on_ipv6_loopback(sockets: list[socket.socket]) -> None:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    sock = open_socket(parse_bind("[::1]:0"))
    sockets.append(sock)
    port = sock.getsockname()[1]
    assert sock.family == socket.AF_INET6
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    assert display_urls(sock) == f"http://[::1]:{port}"
    with socket.create_connection(("::1", port), timeout=10):
        pass


def test_port_in_use(sockets: list[socket.socket]) -> None:
    first = open_socket(parse_bind("127.0.0.1:0"))
    sockets.append(first)
    port = first.getsockname()[1]
    message = bind_failure(parse_bind(f"127.0.0.1:{port}"))
    assert message == f"cannot listen on 127.0.0.1:{port}: address already in use"
    # The first listener is untouched.
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        pass


def test_address_not_on_this_machine() -> None:
    message = bind_failure(parse_bind("192.0.2.1:0"))  # TEST-NET-1, never local
    assert "192.0.2.1:0" in message


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_failed_open_does_not_keep_a_descriptor(sockets: list[socket.socket]) -> None:
    first = open_socket(parse_bind("127.0.0.1:0"))
    sockets.append(first)
    before = open_fds()
    with pytest.raises(CorralError) as error:
        open_socket(parse_bind(f"127.0.0.1:{first.getsockname()[1]}"))
    assert open_fds() == before, str(error.value)


# --- open_socket: UNIX ----------------------------------------------------------------------------


def test_open_unix_socket(short_dir: Path, sockets: list[socket.socket]) -> None:
    path = short_dir / "app.sock"
    sock = open_socket(parse_bind(f"unix:{path}"))
    sockets.append(sock)
    assert sock.family == socket.AF_UNIX
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666
    assert sock.get_inheritable()
    assert display_urls(sock) == f"unix:{path}"
    connect_unix(path)


def test_stale_unix_socket_is_replaced(short_dir: Path, sockets: list[socket.socket]) -> None:
    path = short_dir / "app.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(str(path))  # a server that died without removing its socket file
    assert path.exists()
    sock = open_socket(parse_bind(f"unix:{path}"))
    sockets.append(sock)
    connect_unix(path)


def test_live_unix_socket_is_not_taken_over(short_dir: Path, sockets: list[socket.socket]) -> None:
    path = short_dir / "app.sock"
    live = open_socket(parse_bind(f"unix:{path}"))
    sockets.append(live)
    message = bind_failure(parse_bind(f"unix:{path}"))
    assert message == f"cannot listen on unix:{path}: another server is listening there"
    connect_unix(path)  # still the first server's socket


def refused(bind: Bind) -> str:
    """Opening `bind` is refused as bad input: one line, exit 2."""
    with pytest.raises(CorralError) as error:
        open_socket(bind)
    assert error.value.exit_code == ExitCode.USAGE
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cannot listen on {bind}")
    return message


def test_regular_file_at_the_unix_path_is_kept(short_dir: Path) -> None:
    path = short_dir / "notes.txt"
    path.write_text("keep me")
    assert "not a socket" in refused(parse_bind(f"unix:{path}"))
    assert path.read_text() == "keep me"


def stale_socket(path: Path, owner: int | None = None) -> None:
    """A socket file left by a server that died (given to uid `owner`)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(str(path))
    if owner is not None:
        os.chown(path, owner, owner)


def test_symlink_at_the_unix_path_is_refused(short_dir: Path) -> None:
    target = short_dir / "elsewhere.sock"
    stale_socket(target)
    link = short_dir / "app.sock"
    link.symlink_to(target)
    assert "symbolic link" in refused(parse_bind(f"unix:{link}"))
    assert os.readlink(link) == str(target)
    assert stat.S_ISSOCK(os.lstat(target).st_mode)


def test_unix_socket_in_a_directory_others_can_write_is_refused(short_dir: Path) -> None:
    shared = short_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: another user could swap the socket
    assert "lets others write" in refused(parse_bind(f"unix:{shared}/app.sock"))
    assert list(shared.iterdir()) == []


def test_unix_socket_in_a_sticky_directory(short_dir: Path, sockets: list[socket.socket]) -> None:
    shared = short_dir / "sticky"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: no one can remove or replace our socket
    sockets.append(open_socket(parse_bind(f"unix:{shared}/app.sock")))
    assert stat.S_IMODE(os.lstat(shared / "app.sock").st_mode) == 0o666
    assert stat.S_IMODE(os.lstat(shared).st_mode) == 0o1777
    connect_unix(shared / "app.sock")


def test_unix_socket_in_a_symlinked_directory_is_refused(short_dir: Path) -> None:
    real = short_dir / "real"
    real.mkdir()
    link = short_dir / "link"
    link.symlink_to(real)
    assert "symbolic link" in refused(parse_bind(f"unix:{link}/app.sock"))
    assert list(real.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a socket as another user (CI is root)")
def test_another_users_stale_socket_is_kept(short_dir: Path) -> None:
    """Even root removes only its own stale socket; `nobody`'s is refused and stays."""
    import pwd

    nobody = pwd.getpwnam("nobody").pw_uid
    path = short_dir / "app.sock"
    stale_socket(path, owner=nobody)
    assert f"uid {nobody}, not yours" in refused(parse_bind(f"unix:{path}"))
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode) and info.st_uid == nobody
    link = short_dir / "link.sock"  # and never through a link to it
    link.symlink_to(path)
    refused(parse_bind(f"unix:{link}"))
    assert os.lstat(path).st_uid == nobody and os.readlink(link) == str(path)


def test_unix_socket_in_a_missing_directory(short_dir: Path) -> None:
    message = bind_failure(parse_bind(f"unix:{short_dir}/missing/app.sock"))
    assert "No such file or directory" in message


def test_unix_path_too_long(short_dir: Path) -> None:
    message = bind_failure(parse_bind(f"unix:{short_dir}/{'x' * 200}.sock"))
    assert "too long" in message


# --- open_socket: inherited file descriptors ------------------------------------------------------


def test_open_inherited_descriptor(sockets: list[socket.socket]) -> None:
    handed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    handed.bind(("127.0.0.1", 0))
    port = handed.getsockname()[1]
    sock = open_socket(parse_bind(f"fd://{handed.detach()}"))
    sockets.append(sock)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        pass


def test_descriptor_that_is_not_a_socket() -> None:
    read_end, write_end = os.pipe()
    try:
        message = bind_failure(parse_bind(f"fd://{read_end}"))
        assert "non-socket" in message
    finally:
        os.close(read_end)
        os.close(write_end)


def test_descriptor_that_is_not_open() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    message = bind_failure(parse_bind(f"fd://{read_end}"))
    assert "Bad file descriptor" in message


def test_descriptor_of_a_datagram_socket() -> None:
    handed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = handed.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # fd stays open
        message = bind_failure(parse_bind(f"fd://{fd}"))
        gc.collect()
    assert message == f"fd://{fd} is not a stream socket"
