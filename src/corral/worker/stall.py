"""Where a worker's event loop is stuck, written by the worker itself before the manager declares it hung.

Every heartbeat re-arms faulthandler's watchdog, a C thread that needs no GIL: if the loop misses its heartbeats
for most of --timeout, the watchdog writes every thread's stack into an anonymous memory file, which each arm
empties, so it holds the stacks of the stall in progress or nothing. The manager, which declares the hang once
the whole --timeout has passed, reads the file then (through /proc/PID/fd) and names the loop's top frame in the
hang event. The file starts with the id of the main thread, where the loop runs, so the manager can tell its
stack from the others'. A WSGI worker's thread stuck in a request (its loop stays free) is written the same
way by `record_thread`, under its own first line (`request thread ID`), so the manager can say which it was.
The full dump the manager asks for (SIGUSR1) still goes to the log. An app that uses
`faulthandler.dump_traceback_later` itself shares the one watchdog with this.
"""

from __future__ import annotations

import faulthandler
import math
import os
import threading
import time
from typing import TextIO

from corral.heartbeat import heartbeat_interval

MEMFD_NAME = "corral-stacks"
MAIN_THREAD = "main thread "  # the file's first line: this, then the thread's id in hex
REQUEST_THREAD = "request thread "  # instead, for a thread stuck in a request (WSGI)
AHEAD = 0.8  # the watchdog fires at this share of --timeout: its stacks are written before the manager looks


class StallRecorder:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.every = heartbeat_interval(timeout)  # at most this often: each arm starts a thread (about 0.2 ms)
        self.armed_at = -math.inf
        self.header = f"{MAIN_THREAD}{threading.main_thread().ident or 0:#x}\n"
        self.file: TextIO | None = None
        self.held = False  # a stuck thread's stack is in the file: keep it for the manager
        if hasattr(os, "memfd_create"):
            self.file = os.fdopen(os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC), "w")

    def arm(self) -> None:
        """Called with each heartbeat: the watchdog writes the stacks unless armed again within its delay. The
        file is emptied first, so that it only ever holds the stacks of the stall in progress, if any."""
        now = time.monotonic()
        if self.file is None or self.held or now - self.armed_at < self.every:
            return
        self.armed_at = now
        faulthandler.cancel_dump_traceback_later()
        self.file.seek(0)
        self.file.truncate()
        self.file.write(self.header)
        self.file.flush()
        faulthandler.dump_traceback_later(self.timeout * AHEAD, file=self.file)

    def record_thread(self, ident: int, frames: list[tuple[str, int, str]]) -> None:
        """A thread stuck in a request while the loop is free (WSGI): its stack, innermost first, written the way
        faulthandler writes it, under the header that marks it as the stuck request's thread, the one the manager
        names; kept from then on."""
        if self.file is None:
            return
        faulthandler.cancel_dump_traceback_later()
        self.held = True
        lines = [f"{REQUEST_THREAD}{ident:#x}", f"Thread {ident:#x} (most recent call first):"]
        lines += [f'  File "{filename}", line {line} in {name}' for filename, line, name in frames]
        self.file.seek(0)
        self.file.truncate()
        self.file.write("\n".join(lines) + "\n")
        self.file.flush()
