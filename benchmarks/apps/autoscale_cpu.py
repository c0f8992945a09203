"""A FastAPI endpoint that spends CPU: a few milliseconds of hashing per request (the autoscaling benchmark)."""

from __future__ import annotations

import hashlib
import os

from _common import fastapi_app

app = fastapi_app()


@app.get("/")
async def work() -> dict[str, str]:
    digest = b"corral" * 170  # about 1 KiB, hashed 1000 times: 2 to 3 ms of one core
    for _ in range(1000):
        digest = hashlib.sha256(digest).digest() * 32
    return {"digest": digest[:8].hex()}


@app.get("/pid")
async def pid() -> int:
    return os.getpid()
