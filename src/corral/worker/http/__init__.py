"""Corral's own HTTP/1.1 server protocol (llhttp through httptools): `--http auto`, the default."""

from __future__ import annotations

import asyncio

from corral.worker.http.limits import Limits
from corral.worker.http.protocol import HttpProtocol, configure


def protocol_class(http: str, limits: Limits) -> type[asyncio.Protocol]:
    """The worker's HTTP protocol: Corral's for `auto`, uvicorn's for `h11` and `httptools`."""
    if http == "auto":
        configure(limits)
        return HttpProtocol
    from corral.worker.uvicorn_http import protocol_class as uvicorn_protocol_class  # only then: h11 and more

    return uvicorn_protocol_class(http)
