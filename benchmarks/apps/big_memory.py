"""An app holding a large read-only numpy array from import time, like a model's weights.

`$BENCH_ARRAY_MIB` sets the size (default 512 MiB). Every page is written once at import, so a
server that imports the app once and forks can share them copy-on-write, and one that imports it
in every worker cannot.
"""

from __future__ import annotations

import os
from typing import Any

import numpy
from _common import lifespan, pid_body, respond

WEIGHTS = numpy.ones(int(os.environ.get("BENCH_ARRAY_MIB", "512")) * 2**20 // 8, dtype=numpy.float64)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await respond(send, pid_body())
