"""`corral events`: each event as one line (`12:00:01 crash      worker 2 (pid 41) exited ...`), and following
them on one connection. Drawn without rich (`terminal.py`): scripts poll it; `corral top` shows the same lines."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from corral.errors import CorralError, ExitCode
from corral.terminal import Span

Ask = Callable[[dict[str, Any]], dict[str, Any]]
Stream = Callable[[dict[str, Any]], Iterable[dict[str, Any]]]
EVENT_STYLE = {"crash": "red", "hang": "red", "backoff": "red", "recycle": "yellow", "reload": "cyan",
               "scale": "cyan", "autoscale": "cyan", "certificate": "blue", "stop": "magenta", "stopped": "magenta"}


def event_spans(event: dict[str, Any]) -> list[Span]:
    """The parts of an event's line and their styles: the time, the kind (coloured), the message."""
    spans = [(time.strftime("%H:%M:%S ", time.localtime(float(event["time"]))), ""),
             (f"{event['kind']:<11}", EVENT_STYLE.get(str(event["kind"]), "green")), (str(event["message"]), "")]
    if event.get("waiting_in"):
        spans.append((f" (waiting in {event['waiting_in']})", "dim"))
    return spans


def follow_events(ask: Ask, stream: Stream, limit: int, follow: bool, emit: Callable[[dict[str, Any]], None]
                  ) -> None:
    """Print the latest `limit` events; with `follow`, keep printing new ones as the instance records them, on one
    connection, until its final event (`stopped`). An instance that vanishes before it (killed) is exit 7."""
    message: dict[str, Any] = {"cmd": "events", "since": 0, "limit": limit}
    if not follow:
        for event in ask(message)["events"]:
            emit(event)
        return
    for answer in stream({**message, "follow": True}):
        if not answer.get("ok"):
            raise CorralError(str(answer.get("error", "the request failed")))
        for event in answer["events"]:
            emit(event)
        if answer.get("end"):
            return
    raise CorralError("the corral instance went away before its final event (was it killed?)", ExitCode.NOT_RUNNING)
