"""A FastAPI app with a handler that blocks its worker's event loop: `time.sleep` in an `async def`."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from _common import mark_ready
from fastapi import FastAPI


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    mark_ready()
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/pid")
async def pid() -> int:
    return os.getpid()


@app.get("/block")
async def block(seconds: float) -> int:
    time.sleep(seconds)  # the bug being measured: a blocking call on the event loop
    return os.getpid()
