"""A FastAPI `def` endpoint that waits 50 ms in the threadpool, like a query to a slow database (the autoscaling
benchmark)."""

from __future__ import annotations

import os
import time

from _common import fastapi_app

app = fastapi_app()


@app.get("/")
def query() -> dict[str, int]:
    time.sleep(0.05)
    return {"rows": 1}


@app.get("/pid")
async def pid() -> int:
    return os.getpid()
