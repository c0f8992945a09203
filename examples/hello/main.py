"""The Quickstart example: a small FastAPI app served by `corral run examples/hello/main.py`."""

import os

from fastapi import FastAPI

app = FastAPI(title="hello")


@app.get("/")
async def hello() -> dict[str, str | int]:
    return {"message": "hello from corral", "pid": os.getpid()}
