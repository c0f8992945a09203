"""Corral's HTTP/2 (the `h2` library's state machine): by ALPN on TLS listeners, by prior knowledge (h2c) on plain
ones. Imported only when `--http2` is on (the default), so a worker without it does not load `h2`."""

from __future__ import annotations

from corral.options import Options
from corral.worker.http.protocol import HttpProtocol
from corral.worker.http2.limits import H2Limits
from corral.worker.http2.protocol import H2Protocol, configure, take_over


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
