"""Listen addresses: parsing `--bind` values and opening the sockets (manager side)."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corral.errors import CorralError, ExitCode
from corral.paths import open_dir, socket_is_live

SD_LISTEN_FDS_START = 3


@dataclass(frozen=True)
class Bind:
    kind: Literal["tcp", "unix", "fd"]
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_bind(text: str) -> Bind:
    """'HOST:PORT', '[::1]:PORT', ':PORT', 'unix:/path.sock', 'fd://N'."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise ValueError(f"{text!r}: unix: needs a path")
        return Bind("unix", path=path)
    if text.startswith("fd://"):
        number = text[len("fd://") :]
        if not number.isdigit():
            raise ValueError(f"{text!r}: fd:// needs a file descriptor number")
        return Bind("fd", fd=int(number))
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: expected [IPv6]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: expected HOST:PORT, [::1]:PORT, unix:PATH or fd://N")
        host = host or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port must be a number from 0 to 65535")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    return Bind("tcp", host=host, port=int(port))


def systemd_sockets(environ: dict[str, str] | None = None) -> list[socket.socket]:
    """Sockets handed over by systemd socket activation (LISTEN_FDS / LISTEN_PID)."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(env.get("LISTEN_FDS", "0") or 0)
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    return [socket.socket(fileno=fd) for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)]


def open_socket(bind: Bind, backlog: int = 2048) -> socket.socket:
    """Bind and listen; a failure becomes one clear line with exit code BIND_FAILED."""
    sock: socket.socket | None = None
    try:
        if bind.kind == "fd":
            sock = socket.socket(fileno=bind.fd)
            if sock.type != socket.SOCK_STREAM:
                sock.detach()
                raise CorralError(f"fd://{bind.fd} is not a stream socket", ExitCode.BIND_FAILED)
            sock.listen(backlog)
            return sock
        if bind.kind == "unix":
            sock = _bind_unix(bind)
        else:
            family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((bind.host, bind.port))
        sock.listen(backlog)
        sock.set_inheritable(True)
        return sock
    except (OSError, CorralError) as exc:
        if sock is not None and bind.kind != "fd":
            sock.close()
        if isinstance(exc, CorralError):
            raise
        reason = exc.strerror or str(exc)
        if exc.errno == 98:
            reason = "address already in use"
        raise CorralError(f"cannot listen on {bind}: {reason}", ExitCode.BIND_FAILED) from None


def _bind_unix(bind: Bind) -> socket.socket:
    """A UNIX socket at `bind.path`, mode 0666 from its creation, in a directory others cannot write in.

    Nothing is followed or changed that Corral did not create: the directory is checked like `--control`'s
    (a sticky one such as /tmp is fine), a symbolic link or any other file at the path is refused, and a
    stale socket is removed only if it is the running user's (another user's, even as root, is refused)."""
    path = Path(bind.path)
    dir_fd = open_dir(path.parent, f"cannot listen on {bind}: its directory", sticky_ok=True, create=False)
    try:
        _remove_stale_socket(bind, dir_fd, path.name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # bind() creates the file and never follows a link at its name; the umask gives it its mode at once,
        # so no chmod by name (which a swapped path could redirect) is needed.
        previous = os.umask(0o111)
        try:
            sock.bind(bind.path)
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(previous)
        return sock
    finally:
        os.close(dir_fd)


def _remove_stale_socket(bind: Bind, dir_fd: int, name: str) -> None:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise CorralError(f"cannot listen on {bind}: it is a symbolic link; corral never follows it", ExitCode.USAGE)
    if not stat.S_ISSOCK(info.st_mode):
        raise CorralError(f"cannot listen on {bind}: exists and is not a socket; corral never replaces other files",
                          ExitCode.USAGE)
    if info.st_uid != os.geteuid():
        raise CorralError(f"cannot listen on {bind}: a socket of uid {info.st_uid}, not yours; corral never "
                          "removes it", ExitCode.USAGE)
    if socket_is_live(Path(bind.path)):
        raise CorralError(f"cannot listen on {bind}: another server is listening there", ExitCode.BIND_FAILED)
    os.unlink(name, dir_fd=dir_fd)


def display_urls(sock: socket.socket, scheme: str = "http") -> str:
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def parse_admin_bind(text: str) -> Bind:
    """`--admin-bind`: like `--bind`, except that an address without a host (`:9000`, `9000`) is loopback."""
    if text.isdigit():
        text = ":" + text
    if text.startswith(":"):
        text = "127.0.0.1" + text
    return parse_bind(text)


def is_loopback(bind: Bind) -> bool:
    """Only this machine can connect: a loopback address, `localhost`, or a UNIX socket (file permissions)."""
    if bind.kind == "unix":
        return True
    if bind.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.host).is_loopback
    except ValueError:
        return False
