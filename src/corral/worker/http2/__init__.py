"""Corral's HTTP/2 (the `h2` library's state machine): by ALPN on TLS listeners, by prior knowledge (h2c) on plain
ones, with `--http2` (the default).

`h2` (with hpack and hyperframe, about 2.5 MiB of a worker tree's PSS) is imported where it is needed: with HTTPS,
by the template, so that the workers share it; on plain listeners only, by a worker when its first connection
opens with the HTTP/2 preface, so that a worker serving HTTP/1.1 alone never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.options import Options
from corral.worker.http.protocol import HttpProtocol
from corral.worker.http2.limits import H2Limits

if TYPE_CHECKING:
    from corral.worker.http2.protocol import H2Protocol

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def limits_from(settings: Options) -> H2Limits:
    return H2Limits(
        max_concurrent_streams=settings.h2_max_concurrent_streams,
        max_header_list_size=settings.h2_max_header_list_size,
        max_resets=settings.h2_max_resets,
        max_control_frames=settings.h2_max_control_frames,
        send_timeout=settings.h2_send_timeout,
        header_timeout=settings.header_timeout,
        keep_alive=settings.keep_alive,
    )


_limits = H2Limits()


def enable(settings: Options, tls: bool) -> type[H2Protocol] | None:
    """HTTP/2 for this worker: Corral's HTTP/1.1 protocol hands over the plain connections that open with the
    HTTP/2 preface; with `tls`, the protocol class the TLS router hands `h2` connections to (h2 imported now)."""
    global _limits
    _limits = limits_from(settings)
    HttpProtocol.h2c = staticmethod(take_over)
    return protocol_class() if tls else None


def protocol_class() -> type[H2Protocol]:
    from corral.worker.http2.protocol import H2Protocol, configure

    if H2Protocol.limits is not _limits:
        configure(_limits)
    return H2Protocol


def take_over(h1: HttpProtocol, data: bytes) -> None:
    """h2c by prior knowledge: the HTTP/1.1 protocol saw the HTTP/2 preface as a connection's first bytes and hands
    the connection here, with everything it read (`data`, whose beginning may have been fed to it before)."""
    h1._cancel_timers()
    h1.connections.discard(h1)
    rest = data
    for start in range(len(PREFACE)):
        if data.startswith(PREFACE[start:]):
            rest = data[len(PREFACE) - start:]
            break
    protocol = protocol_class()(h1.config, h1.server_state, h1.app_state, h1.loop)
    protocol.client, protocol.server = h1.client, h1.server  # a PROXY header's addresses stay
    h1.transport.set_protocol(protocol)
    protocol.connection_made(h1.transport)
    protocol.data_received(PREFACE + rest)
