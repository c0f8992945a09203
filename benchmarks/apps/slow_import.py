"""An app whose import takes `$BENCH_IMPORT_SECONDS` (default 5), like one loading a model."""

from __future__ import annotations

import os
import time
from typing import Any

from _common import lifespan, pid_body, respond

time.sleep(float(os.environ.get("BENCH_IMPORT_SECONDS", "5")))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await respond(send, pid_body())
