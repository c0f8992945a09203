"""A bounded log of what happened to the pool, as structured events.

The supervisor and its helpers record events (a crash and its cause, a hang and its top frame, a recycle,
a reload, a scaling decision, a certificate renewal); `corral status`, `corral events`, `corral top` and the
dashboard read them over the control socket. The log keeps the latest `capacity` events, so a flapping
worker cannot grow the manager's memory.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

CAPACITY = 500


@dataclass(frozen=True)
class Event:
    seq: int  # increases by one per event, never reused: a follower asks for what came after the last it saw
    time: float  # wall clock, seconds
    kind: str  # crash, hang, recycle, reload, scale, autoscale, certificate, prestart, start, stop, ...
    message: str  # one line, for people
    fields: dict[str, Any] = field(default_factory=dict)  # for machines (worker slot, pid, cause, figures)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "kind": self.kind, "message": self.message, **self.fields}


class EventLog:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self._events: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._seq = 0

    def record(self, kind: str, message: str, **fields: Any) -> Event:
        self._seq += 1
        event = Event(self._seq, time.time(), kind, message, fields)
        self._events.append(event)
        return event

    def since(self, seq: int = 0, limit: int = CAPACITY) -> list[Event]:
        """Events after `seq`, oldest first, at most the `limit` latest of them."""
        newer = [event for event in self._events if event.seq > seq]
        return newer[-limit:] if limit > 0 else []

    @property
    def last_seq(self) -> int:
        return self._seq


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
