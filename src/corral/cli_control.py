"""The commands that talk to a running instance: status, events, top, scale, reload, stop.

They are polled by monitors and scripts, so each imports only what it needs: no pydantic (the control socket
comes from `corral.control_path`), rich only to draw a table, psutil only to wait for a stop.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from corral.control_client import request
from corral.control_path import control_path
from corral.errors import ConfigError, CorralError

Opt = typer.Option
ControlOpt = Annotated[str | None, Opt("--control", help="Control socket of the instance.")]
NameOpt = Annotated[str | None, Opt("--name", help="Instance name (default socket per name).")]
MAX_WAIT = 86400.0


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
        raise ConfigError(f"{option} must be from {low:g} to 86,400 seconds, got {value:g}")
    return value


def status_command(
    control: ControlOpt = None,
    name: NameOpt = None,
    json_output: Annotated[bool, Opt("--json", help="Print JSON.")] = False,
) -> None:
    """Show the workers of a running instance."""
    answer = _ask(control, name, {"cmd": "status"})
    answer.pop("ok", None)
    if json_output:
        print(json.dumps(answer, indent=2))
        return
    from rich.console import Console

    from corral.status_view import print_status

    print_status(answer, Console(width=None if sys.stdout.isatty() else 160))  # piped: no truncated cells


def events_command(
    control: ControlOpt = None,
    name: NameOpt = None,
    follow: Annotated[bool, Opt("--follow", "-f", help="Keep printing new events.")] = False,
    json_output: Annotated[bool, Opt("--json", help="One JSON object per line.")] = False,
    limit: Annotated[int, Opt(min=1, max=500, help="How many of the latest events to print first.")] = 50,
) -> None:
    """Print what happened to the pool: starts, exits and their cause, hangs, recycles, reloads, scaling."""
    from rich.console import Console

    from corral.top_view import event_line, follow_events

    path = control_path(control, name)
    console = Console(highlight=False, soft_wrap=True)

    def emit(event: dict[str, Any]) -> None:
        if json_output:
            print(json.dumps(event), flush=True)
        else:
            console.print(event_line(event))

    follow_events(lambda message: _ask_path(path, message), limit, follow, emit)


def top_command(
    control: ControlOpt = None,
    name: NameOpt = None,
    interval: Annotated[float, Opt(min=0.2, max=60, help="Seconds between refreshes.")] = 1.0,
) -> None:
    """A live view of the pool (keys: r reload, + / - scale, q quit)."""
    from corral.top_view import run_top

    if not math.isfinite(interval):
        raise ConfigError(f"--interval must be from 0.2 to 60 seconds, got {interval:g}")
    path = control_path(control, name)

    def ask(message: dict[str, Any]) -> dict[str, Any]:
        if message["cmd"] in ("status", "events"):
            return _ask_path(path, message)
        return request(path, message, timeout=None)  # an action's refusal is shown, not raised

    run_top(ask, interval)


def scale_command(
    to: Annotated[str, typer.Argument(metavar="N|+K|-K", help="Worker count, or a change of it.")],
    control: ControlOpt = None,
    name: NameOpt = None,
) -> None:
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


def reload_command(
    control: ControlOpt = None,
    name: NameOpt = None,
    timeout: Annotated[
        float, Opt(help="Seconds to wait for the reload's answer (it goes on in the instance after that).")
    ] = 600.0,
) -> None:
    """Roll out the current code: new workers first, then the old ones drain. Waits until done."""
    if not 0 < timeout <= MAX_WAIT:
        raise ConfigError(f"--timeout must be from 0 to 86,400 seconds, got {timeout:g}")
    print(_ask(control, name, {"cmd": "reload"}, timeout=timeout)["message"])


def stop_command(
    control: ControlOpt = None,
    name: NameOpt = None,
    now: Annotated[bool, Opt("--now", help="Stop at once instead of draining.")] = False,
    wait: Annotated[float, Opt(help="Seconds to wait for the instance to exit.")] = 120.0,
) -> None:
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
