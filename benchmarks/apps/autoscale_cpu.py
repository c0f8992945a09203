"""A FastAPI endpoint that spends CPU: a few milliseconds of hashing per request (the autoscaling benchmark).

Each response names its worker in `X-Worker-Pid`, so the benchmark counts each worker's share."""

from __future__ import annotations

import hashlib
import os

from _common import fastapi_app
from fastapi import Response

app = fastapi_app()


@app.get("/")
async def work(response: Response) -> dict[str, str]:
    response.headers["x-worker-pid"] = str(os.getpid())
    digest = b"corral" * 170  # about 1 KiB, hashed 1000 times: 2 to 3 ms of one core
    for _ in range(1000):
        digest = hashlib.sha256(digest).digest() * 32
    return {"digest": digest[:8].hex()}


@app.get("/pid")
async def pid() -> int:
    return os.getpid()
