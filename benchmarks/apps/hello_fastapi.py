"""A FastAPI "hello". `/pid` answers the worker's pid."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from _common import mark_ready
from fastapi import FastAPI


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    mark_ready()
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def hello() -> dict[str, str]:
    return {"message": "hello"}


@app.get("/pid")
async def pid() -> int:
    return os.getpid()
