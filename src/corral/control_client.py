"""Client side of the control socket (used by `corral status`, `scale`, `reload`, `stop`, `events`), and its
default path."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corral.errors import CorralError, ExitCode
from corral.paths import check_private_dir


def default_control_path(name: str) -> Path:
    """/run/corral/NAME.sock as root, else $XDG_RUNTIME_DIR/corral/NAME.sock, else /tmp/corral-UID/NAME.sock."""
    if os.geteuid() == 0:
        base = Path("/run/corral")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "corral"
    else:
        base = Path(f"/tmp/corral-{os.geteuid()}")
    return base / f"{name}.sock"


def check_default_dir(path: Path) -> None:
    """A default socket is trusted only in a private runtime directory (another user could have made it)."""
    check_private_dir(path.parent, create=False)


def _check_peer(sock: socket.socket, path: Path) -> None:
    """The instance answering runs as us (or as root): never send a command to another user's process."""
    if not hasattr(socket, "SO_PEERCRED") or os.geteuid() == 0:
        return
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", credentials)
    if uid not in (os.geteuid(), 0):
        raise CorralError(f"the control socket {path} belongs to a process of uid {uid}, not yours; refusing it")


def request(path: Path, message: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
    """Send one request and wait for its answer; a missing or dead socket is one clear error."""
    sock = _send(path, message, timeout)
    with _answering(sock, path, timeout):
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise CorralError(f"the corral instance at {path} closed the connection without answering")
    return _decode(data, path)


def stream(path: Path, message: dict[str, Any], timeout: float | None = 30.0) -> Iterator[dict[str, Any]]:
    """Send one request answered by a line per update (`"follow": true`); yield each, until the instance closes
    the connection. The first answer comes within `timeout`; the next ones whenever there is news."""
    sock = _send(path, message, timeout)
    with _answering(sock, path, timeout), sock.makefile("rb") as lines:
        while line := lines.readline():
            yield _decode(line, path)
            sock.settimeout(None)


@contextlib.contextmanager
def _answering(sock: socket.socket, path: Path, timeout: float | None) -> Iterator[None]:
    """Read the instance's answers on `sock`, closed at the end; a timeout or a broken connection is one line."""
    try:
        yield
    except TimeoutError:
        raise CorralError(f"the corral instance at {path} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise CorralError(f"the connection to the corral instance at {path} failed: {exc.strerror or exc}"
                          ) from None
    finally:
        sock.close()


def _send(path: Path, message: dict[str, Any], timeout: float | None) -> socket.socket:
    """A connection to the instance at `path` (checked to run as us or root) with `message` sent on it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise CorralError(f"no corral instance at {path} (is it running? see --control / --name)",
                          ExitCode.NOT_RUNNING) from None
    except PermissionError:
        sock.close()
        raise CorralError(f"permission denied on the control socket {path}: run as the user who started the "
                          "instance (or as root)") from None
    except TimeoutError:
        sock.close()
        raise CorralError(f"the corral instance at {path} did not accept the connection within {timeout:g} s"
                          ) from None
    except OSError as exc:
        sock.close()
        raise CorralError(f"cannot reach the corral instance at {path}: {exc.strerror or exc}",
                          ExitCode.NOT_RUNNING) from None
    try:
        _check_peer(sock, path)
        sock.sendall(json.dumps(message).encode() + b"\n")
    except TimeoutError:
        sock.close()
        raise CorralError(f"the corral instance at {path} did not answer within {timeout:g} s") from None
    except OSError as exc:
        sock.close()
        raise CorralError(f"the connection to the corral instance at {path} failed: {exc.strerror or exc}"
                          ) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _decode(data: bytes, path: Path) -> dict[str, Any]:
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CorralError(f"the corral instance at {path} gave an answer that is not a JSON object")
    return answer
