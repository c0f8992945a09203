"""Client side of the control socket (used by `corral status`, `scale`, `reload`, `stop`), and its default path."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from corral.errors import CorralError, ExitCode


def default_control_path(name: str) -> Path:
    """/run/corral/NAME.sock as root, else $XDG_RUNTIME_DIR/corral/NAME.sock, else /tmp/corral-UID/NAME.sock."""
    if os.geteuid() == 0:
        base = Path("/run/corral")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "corral"
    else:
        base = Path(f"/tmp/corral-{os.geteuid()}")
    return base / f"{name}.sock"


def socket_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def request(path: Path, message: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
    """Send one request and wait for its answer; a missing or dead socket is one clear error."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except FileNotFoundError:
        raise CorralError(f"no corral instance at {path} (is it running? see --control / --name)",
                          ExitCode.NOT_RUNNING) from None
    except OSError as exc:
        raise CorralError(f"cannot reach the corral instance at {path}: {exc.strerror or exc}",
                          ExitCode.NOT_RUNNING) from None
    try:
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise CorralError(f"the corral instance at {path} did not answer within {timeout:g} s") from None
    finally:
        sock.close()
    if not data:
        raise CorralError(f"the corral instance at {path} closed the connection without answering")
    answer: dict[str, Any] = json.loads(data)
    return answer
