"""Flask hello and a 20 ms wait (a database query), for benchmarks/wsgi.py."""

import time

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello() -> str:
    return "Hello, world!"


@app.get("/sleep")
def sleep() -> str:
    time.sleep(0.02)
    return "slept"
