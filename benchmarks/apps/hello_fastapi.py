"""A FastAPI "hello". `/pid` answers the worker's pid."""

from __future__ import annotations

import os

from _common import fastapi_app

app = fastapi_app()


@app.get("/")
async def hello() -> dict[str, str]:
    return {"message": "hello"}


@app.get("/pid")
async def pid() -> int:
    return os.getpid()
