"""hello_raw whose requests crash their worker: 1 request in $BENCH_CRASH_ONE_IN (50 by default) calls
`os._exit(1)` before answering, the way a bad input reaching a C extension would end it. `/pid` never crashes."""

from __future__ import annotations

import os
import random
from typing import Any

from _common import lifespan, pid_body, respond

ONE_IN = int(os.environ.get("BENCH_CRASH_ONE_IN", "50"))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["path"] == "/pid":  # the benchmark's readiness probe
        await respond(send, pid_body())
        return
    if random.random() < 1 / ONE_IN:  # `random` draws again in each forked worker (it reseeds at fork)
        os._exit(1)
    await respond(send, b"hello")
