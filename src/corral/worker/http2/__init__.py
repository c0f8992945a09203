"""Corral's HTTP/2 (the `h2` library's state machine): by ALPN on TLS listeners, by prior knowledge (h2c) on plain
ones. Imported only when `--http2` is on (the default), so a worker without it does not load `h2`."""

from __future__ import annotations

from corral.options import Options
from corral.worker.http.protocol import HttpProtocol
from corral.worker.http2.limits import H2Limits
from corral.worker.http2.protocol import H2Protocol, configure

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


def enable(settings: Options) -> type[H2Protocol]:
    """HTTP/2 for this worker: the protocol class TLS hands `h2` connections to; Corral's HTTP/1.1 protocol hands
    it the plain connections that open with the HTTP/2 preface."""
    configure(limits_from(settings))
    HttpProtocol.h2c = staticmethod(take_over)
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
    protocol = H2Protocol(h1.config, h1.server_state, h1.app_state, h1.loop)
    protocol.client, protocol.server = h1.client, h1.server  # a PROXY header's addresses stay
    h1.transport.set_protocol(protocol)
    protocol.connection_made(h1.transport)
    protocol.data_received(PREFACE + rest)
