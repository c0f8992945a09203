"""The PROXY protocol header (HAProxy's v1 text and v2 binary), sent by a load balancer before TLS/HTTP."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107
V2_HEADER = 16


class ProxyProtocolError(ValueError):
    pass


@dataclass(frozen=True)
class ProxyInfo:
    """Addresses announced by the proxy; None for LOCAL/UNKNOWN (keep the connection's own)."""

    client: tuple[str, int] | None
    server: tuple[str, int] | None


def parse_proxy_header(data: bytes) -> tuple[ProxyInfo, int] | None:
    """(info, header length) once the header is complete, None while more bytes are needed."""
    if data[:1] == b"\r":
        if len(data) < V2_HEADER:
            if not V2_SIGNATURE.startswith(data[:12]):
                raise ProxyProtocolError("not a PROXY protocol header")
            return None
        return _parse_v2(data)
    if data[:1] == b"P":
        return _parse_v1(data)
    raise ProxyProtocolError("not a PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[ProxyInfo, int] | None:
    if not b"PROXY "[: len(data)] == data[:6]:
        raise ProxyProtocolError("not a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError("PROXY v1 header too long")
        return None
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyInfo(None, None), end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("malformed PROXY v1 header")
    try:
        source, dest = ipaddress.ip_address(parts[2]), ipaddress.ip_address(parts[3])
        sport, dport = int(parts[4]), int(parts[5])
    except ValueError as exc:
        raise ProxyProtocolError("malformed PROXY v1 addresses") from exc
    if not (0 <= sport <= 65535 and 0 <= dport <= 65535):
        raise ProxyProtocolError("malformed PROXY v1 ports")
    return ProxyInfo((str(source), sport), (str(dest), dport)), end + 2


def _parse_v2(data: bytes) -> tuple[ProxyInfo, int] | None:
    if data[:12] != V2_SIGNATURE:
        raise ProxyProtocolError("not a PROXY protocol header")
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2 or command not in (0, 1):
        raise ProxyProtocolError("unsupported PROXY v2 version or command")
    family = data[13]
    length = int.from_bytes(data[14:16], "big")
    total = V2_HEADER + length
    if len(data) < total:
        return None
    body = data[V2_HEADER:total]
    if command == 0:
        return ProxyInfo(None, None), total
    source: ipaddress.IPv4Address | ipaddress.IPv6Address
    dest: ipaddress.IPv4Address | ipaddress.IPv6Address
    if family >> 4 == 1 and len(body) >= 12:  # AF_INET
        source, dest = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        ports = body[8:12]
    elif family >> 4 == 2 and len(body) >= 36:  # AF_INET6
        source, dest = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        ports = body[32:36]
    elif family >> 4 in (0, 3):  # UNSPEC, AF_UNIX: keep the connection's addresses
        return ProxyInfo(None, None), total
    else:
        raise ProxyProtocolError("malformed PROXY v2 addresses")
    sport, dport = int.from_bytes(ports[0:2], "big"), int.from_bytes(ports[2:4], "big")
    return ProxyInfo((str(source), sport), (str(dest), dport)), total
