"""A bounded log of what happened to the pool, as structured events.

The supervisor and its helpers record events (a crash and its cause, a hang and its top frame, a recycle,
a reload, a scaling decision, a certificate renewal); `corral status`, `corral events`, `corral top` and the
dashboard read them over the control socket. The log keeps the latest `capacity` events, so a flapping
worker cannot grow the manager's memory. The last event of an instance is `stopped` (`FINAL`): a follower
(`corral events --follow`) that reads it knows the instance has ended as it should.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from corral.worker.stall import MAIN_THREAD, MEMFD_NAME, REQUEST_THREAD

CAPACITY = 500
FINAL = "stopped"


@dataclass(frozen=True)
class Event:
    seq: int  # increases by one per event, never reused: a follower asks for what came after the last it saw
    time: float  # wall clock, seconds
    kind: str  # crash, hang, recycle, reload, scale, autoscale, certificate, prestart, start, stop, stopped...
    message: str  # one line, for people
    fields: dict[str, Any] = field(default_factory=dict)  # for machines (worker slot, pid, cause, figures)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "kind": self.kind, "message": self.message, **self.fields}


class EventLog:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self._events: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._seq = 0
        self._waiters: list[asyncio.Future[None]] = []

    def record(self, kind: str, message: str, **fields: Any) -> Event:
        """Add an event (from the manager's loop thread only) and wake the followers."""
        self._seq += 1
        event = Event(self._seq, time.time(), kind, message, fields)
        self._events.append(event)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return event

    async def wait_after(self, seq: int) -> None:
        """Return once an event after `seq` has been recorded."""
        while self._seq <= seq:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:  # cancelled: a follower that went away
                    self._waiters.remove(waiter)

    def since(self, seq: int = 0, limit: int = CAPACITY) -> list[Event]:
        """Events after `seq`, oldest first, at most the `limit` latest of them."""
        newer = [event for event in self._events if event.seq > seq]
        return newer[-limit:] if limit > 0 else []

    @property
    def last_seq(self) -> int:
        return self._seq

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The answer to `{"cmd": "events", "since": N, "limit": L}`."""
        events = self.since(_whole(request, "since", 0), _whole(request, "limit", 100))
        return {"ok": True, "events": [event.to_json() for event in events], "last_seq": self._seq}

    async def follow(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """`{"cmd": "events", "follow": true, ...}`: that answer, then one per batch of new events, until the
        batch that holds the final event (marked `"end": true`)."""
        answer = self.answer(request)
        while True:
            if any(event["kind"] == FINAL for event in answer["events"]):
                yield {**answer, "end": True}
                return
            yield answer
            seq = int(answer["last_seq"])
            await self.wait_after(seq)
            answer = self.answer({"since": seq, "limit": CAPACITY})


def _whole(request: dict[str, Any], key: str, default: int) -> int:
    """`request[key]` as an int; a bad value is a ValueError (a bad request), an infinite one included."""
    try:
        return int(request.get(key, default))
    except OverflowError:
        raise ValueError(f"{key} must be a finite number") from None


def wait_channel(pid: int | None) -> str | None:
    """The kernel function a process sleeps in (`/proc/PID/wchan`, e.g. `hrtimer_nanosleep` for a `time.sleep`),
    a hint of where a hung worker blocks that is known before its stack dump reaches the log."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/wchan") as file:
            text = file.read().strip()
    except OSError:
        return None
    return text if text and text != "0" else None


DUMP_LIMIT = 1 << 20  # what is read of a worker's stack file (a dump is a few KiB)
_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-f]+) \(most recent call first\):$", re.M)
_FRAME = re.compile(r'^  File "(.*)", line (\d+) in (.*)$', re.M)


@dataclass(frozen=True)
class Stall:
    """Where a hung worker is stuck, from the stacks its watchdog wrote (`corral.worker.stall`)."""

    frame: str | None  # the stuck thread's top frame, as `path:line in function`
    request_thread: bool | None  # a thread stuck in a request (WSGI), the event loop, or None: not known


def read_stall(pid: int | None) -> Stall:
    """The stall a worker's watchdog recorded; nothing known if there is none or it cannot be read."""
    if not pid:
        return Stall(None, None)
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            path = f"/proc/{pid}/fd/{fd}"
            if os.readlink(path).startswith(f"/memfd:{MEMFD_NAME}"):
                with open(path, "rb") as file:  # the stuck thread's id, then the stacks of a stall, if any
                    dump = file.read(DUMP_LIMIT).decode(errors="replace")
                frame = top_frame(dump)
                if dump.startswith(REQUEST_THREAD):
                    return Stall(frame, True)
                return Stall(frame, False if frame else None)
    except OSError:
        return Stall(None, None)
    return Stall(None, None)


def stalled_frame(pid: int | None) -> str | None:
    """The top frame of a hung worker's event loop (or stuck request thread), as `path:line in function`, from
    the stacks its watchdog wrote (`corral.worker.stall`); None if there are none or they cannot be read."""
    return read_stall(pid).frame


def top_frame(dump: str) -> str | None:
    """The innermost frame of the stuck thread in the latest faulthandler dump in `dump`, which starts with that
    thread's id (the main thread's, where the loop runs, or a request thread's)."""
    first, _, rest = dump.partition("\n")
    prefix = next((prefix for prefix in (MAIN_THREAD, REQUEST_THREAD) if first.startswith(prefix)), None)
    if prefix is None:
        return None
    main = int(first.removeprefix(prefix), 16)
    sections = list(_THREAD.finditer(rest))
    for number, header in reversed(list(enumerate(sections))):
        if int(header.group(1), 16) != main:
            continue
        end = sections[number + 1].start() if number + 1 < len(sections) else len(rest)
        frame = _FRAME.search(rest, header.end(), end)
        return f"{frame.group(1)}:{frame.group(2)} in {frame.group(3)}" if frame else None
    return None
