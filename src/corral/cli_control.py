"""The commands that talk to a running instance: status, events, top, scale, reload, stop.

They are polled by monitors and scripts, so each imports only what it needs: neither typer nor pydantic (the
control socket comes from `corral.control_path`), nor rich: `status` and `events` draw with `terminal.py`, only
`top` uses rich. Each command's parameters are declared once, in `COMMANDS`: `cli.py` parses the usual
invocations with it, and `cli_app.py` makes the typer commands (help, and the messages for anything unusual)
from it.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from corral.control_client import request
from corral.control_path import control_path
from corral.errors import ConfigError, CorralError

MAX_WAIT = 86400.0


class Param(NamedTuple):
    """One parameter of a client command: `kind` is str, int, float or bool (a flag); no flags: an argument."""

    name: str
    kind: type
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    metavar: str = ""


CONTROL = Param("control", str, None, "Control socket of the instance.", ("--control",), "PATH")
NAME = Param("name", str, None, "Instance name (default socket per name).", ("--name",), "NAME")


def _ask_path(path: Path, message: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
    answer = request(path, message, timeout)
    if not answer.get("ok"):
        raise CorralError(str(answer.get("error", "the request failed")))
    return answer


def _ask(
    control: str | None, name: str | None, message: dict[str, Any], timeout: float | None = 30.0
) -> dict[str, Any]:
    return _ask_path(control_path(control, name), message, timeout)


def _seconds(option: str, value: float, low: float = 0.0) -> float:
    """A wait given on the command line: finite, more than `low`, at most a day."""
    if not (math.isfinite(value) and low < value <= MAX_WAIT):
        raise ConfigError(f"{option} must be more than {low:g} and at most 86,400 seconds, got {value:g}")
    return value


def status_command(control: str | None, name: str | None, json_output: bool) -> None:
    """Show the workers of a running instance."""
    answer = _ask(control, name, {"cmd": "status"})
    answer.pop("ok", None)
    if json_output:
        print(json.dumps(answer, indent=2))
        return
    from corral.status_view import print_status
    from corral.terminal import Terminal

    print_status(answer, Terminal())


def events_command(control: str | None, name: str | None, follow: bool, json_output: bool, limit: int) -> None:
    """Print what happened to the pool: starts, exits and their cause, hangs, recycles, reloads, scaling."""
    if not 1 <= limit <= 500:
        raise ConfigError(f"--limit must be from 1 to 500 events, got {limit}")
    from corral.control_client import stream
    from corral.events_view import event_spans, follow_events

    path = control_path(control, name)

    def ask(message: dict[str, Any]) -> dict[str, Any]:
        return _ask_path(path, message)

    def follow_stream(message: dict[str, Any]) -> Iterable[dict[str, Any]]:
        return stream(path, message)

    if json_output:
        follow_events(ask, follow_stream, limit, follow, lambda event: print(json.dumps(event), flush=True))
        return
    from corral.terminal import Terminal

    terminal = Terminal()
    follow_events(ask, follow_stream, limit, follow, lambda event: terminal.line(*event_spans(event)))


def top_command(control: str | None, name: str | None, interval: float) -> None:
    """A live view of the pool (keys: r reload, + / - scale, q quit)."""
    from corral.top_view import run_top

    if not (math.isfinite(interval) and 0.2 <= interval <= 60):
        raise ConfigError(f"--interval must be from 0.2 to 60 seconds, got {interval:g}")
    path = control_path(control, name)

    def ask(message: dict[str, Any]) -> dict[str, Any]:
        if message["cmd"] in ("status", "events"):
            return _ask_path(path, message)
        return request(path, message, timeout=None)  # an action's refusal is shown, not raised

    run_top(ask, interval)


def scale_command(to: str, control: str | None, name: str | None) -> None:
    """Change the number of workers of a running instance."""
    from corral.scoreboard import MAX_WORKERS

    match = re.fullmatch(r"\s*([+-]?)(\d{1,9})\s*", to)
    if not match:
        raise ConfigError(f"expected N, +K or -K workers, got {to!r}")
    sign, count = match.group(1), int(match.group(2))
    if not sign and not 1 <= count <= MAX_WORKERS:
        raise ConfigError(f"a worker count must be from 1 to {MAX_WORKERS}, got {count}")
    if sign and not 1 <= count < MAX_WORKERS:
        raise ConfigError(f"a change of the worker count must be from 1 to {MAX_WORKERS - 1}, got {to.strip()}")
    print(_ask(control, name, {"cmd": "scale", "to": to})["message"])


def reload_command(control: str | None, name: str | None, timeout: float) -> None:
    """Roll out the current code: new workers first, then the old ones drain. Waits until done."""
    if not 0 < timeout <= MAX_WAIT:
        raise ConfigError(f"--timeout must be more than 0 and at most 86,400 seconds, got {timeout:g}")
    print(_ask(control, name, {"cmd": "reload"}, timeout=timeout)["message"])


def stop_command(control: str | None, name: str | None, now: bool, wait: float) -> None:
    """Stop a running instance gracefully (in-flight requests finish) and wait for it to exit."""
    _seconds("--wait", wait)
    answer = _ask(control, name, {"cmd": "stop", "now": now})
    pid = int(answer["manager_pid"])
    deadline = time.monotonic() + wait
    while _running(pid):
        if time.monotonic() > deadline:
            raise CorralError(f"the instance (pid {pid}) is still stopping after {wait:g} s")
        time.sleep(0.05)
    print(f"stopped (manager pid {pid})")


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (read from /proc: psutil costs more to import than a stop)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


JSON = "Print JSON."
COMMANDS: dict[str, tuple[Callable[..., None], tuple[Param, ...]]] = {
    "status": (status_command, (CONTROL, NAME, Param("json_output", bool, False, JSON, ("--json",)))),
    "events": (events_command, (
        CONTROL, NAME,
        Param("follow", bool, False, "Keep printing new events.", ("--follow", "-f")),
        Param("json_output", bool, False, "One JSON object per line.", ("--json",)),
        Param("limit", int, 50, "How many of the latest events to print first (1 to 500).", ("--limit",), "N"),
    )),
    "top": (top_command, (
        CONTROL, NAME, Param("interval", float, 1.0, "Seconds between refreshes.", ("--interval",), "SECONDS"),
    )),
    "scale": (scale_command, (
        Param("to", str, ..., "Worker count, or a change of it.", metavar="N|+K|-K"), CONTROL, NAME,
    )),
    "reload": (reload_command, (
        CONTROL, NAME,
        Param("timeout", float, 600.0, "Seconds to wait for the reload's answer (it goes on in the instance after "
              "that).", ("--timeout",), "SECONDS"),
    )),
    "stop": (stop_command, (
        CONTROL, NAME, Param("now", bool, False, "Stop at once instead of draining.", ("--now",)),
        Param("wait", float, 120.0, "Seconds to wait for the instance to exit.", ("--wait",), "SECONDS"),
    )),
}  # fmt: skip
