"""Small JSON messages over a SOCK_SEQPACKET socketpair (manager <-> template; workers send on it too).

Each message is one datagram, so several writers (the template and its workers) never interleave.
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_MESSAGE = 65536


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def decode(data: bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(data)
    return message
