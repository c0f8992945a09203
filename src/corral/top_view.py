"""`corral top`: a live view of a running instance over its control socket.

`top` redraws a table every interval (rich.live) and reads single keys in cbreak mode between redraws: the
wait for the next redraw is a `select` on the terminal, so a key acts at once and never blocks the refresh.
Actions that take time (a reload waits until the new workers serve) run in a thread; the view keeps moving.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from corral.errors import CorralError
from corral.events_view import Ask, event_spans

if TYPE_CHECKING:  # rich is imported where it draws: `corral events --json` needs none of it
    from rich.console import Console, Group
    from rich.text import Text

KEYS = "r reload · + add a worker · - remove a worker · q quit"


class Rates:
    """Requests per second of each worker over the last `span` seconds, from successive readings of its request
    count (used when the status does not carry `requests_per_second` itself; workers publish their counts
    about once a second, so a longer span than one refresh keeps the figure steady)."""

    def __init__(self, span: float = 5.0) -> None:
        self.span = span
        self._readings: collections.deque[tuple[float, dict[int, int]]] = collections.deque()
        self.rates: dict[int, float] = {}

    def update(self, workers: list[dict[str, Any]], now: float) -> None:
        counts = {int(w["pid"]): int(w.get("requests") or 0) for w in workers if w.get("pid")}
        while len(self._readings) > 1 and now - self._readings[0][0] > self.span:
            self._readings.popleft()
        self.rates = {}
        if self._readings:
            then, before = self._readings[0]
            if now > then:
                self.rates = {pid: max(0, count - before[pid]) / (now - then)
                              for pid, count in counts.items() if pid in before}
        self._readings.append((now, counts))

    def of(self, worker: dict[str, Any]) -> float | None:
        given = worker.get("requests_per_second")
        if given is not None:
            return float(given)
        return self.rates.get(worker.get("pid") or -1)


def event_line(event: dict[str, Any]) -> Text:
    from rich.text import Text

    return Text.assemble(*event_spans(event))


def _ms(seconds: Any) -> str:
    return "-" if seconds is None else f"{float(seconds) * 1000:.1f}ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(status: dict[str, Any], events: list[dict[str, Any]], rates: Rates, message: str = "") -> Group:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from corral.status_view import STATE_STYLE, _uptime, startup_line
    from corral.text import format_bytes

    pool = status.get("pool", {})
    total_rate = sum(rates.of(w) or 0.0 for w in status["workers"])
    quota = float(pool.get("cpu_quota") or 0)
    title = (
        f"corral top · manager pid {status['manager_pid']} · generation {status['generation']} · "
        f"{pool.get('workers_ready', '?')}/{status['target_workers']} workers ready · {status['restarts']} restarts"
        + (" · stopping" if status.get("stopping") else "")
    )
    table = Table(title=title, title_justify="left", expand=False)
    columns = ("id", "pid", "state", "gen", "req/s", "p50", "p99", "cpu", "private mem", "restarts", "uptime")
    for column in columns:
        table.add_column(column, justify="left" if column == "state" else "right")
    for worker in status["workers"]:
        uss = worker.get("memory_uss")
        table.add_row(
            str(worker["id"]),
            str(worker.get("pid") or "-"),
            Text(str(worker["state"]), style=STATE_STYLE.get(str(worker["state"]), "")),
            str(worker["generation"]),
            _rate(rates.of(worker)),
            _ms(worker.get("latency_p50_seconds")),
            _ms(worker.get("latency_p99_seconds")),
            f"{float(worker.get('cpu_percent') or 0):.0f}%",
            format_bytes(uss) if uss else "-",
            str(worker.get("restarts", 0)),
            _uptime(float(worker["started_at"])),
        )
    totals = Text("pool  ")
    totals.append(f"{total_rate:.1f} req/s", style="bold")
    if quota:
        totals.append(f" · CPU {float(pool.get('cpu_percent') or 0):.0f}% of {quota * 100:.0f}% ({quota:g} CPUs)")
    if pool.get("memory_budget"):
        used, budget = int(pool.get("memory_used") or 0), int(pool["memory_budget"])
        share = 100 * used / budget if budget else 0
        totals.append(f" · memory {format_bytes(used)} of {format_bytes(budget)} budget ({share:.0f}%)")
    if "prestart" in status:  # before the first workers: what the instance is doing instead
        totals = Text(startup_line(status), style="yellow")
    latest = Table.grid()
    for event in events[-8:]:
        latest.add_row(event_line(event))
    footer = Text(KEYS, style="dim")
    if message:
        footer = Text(message + "   ", style="bold").append(KEYS, style="dim")
    return Group(table, totals, Text("events", style="bold underline"), latest, footer)


@contextlib.contextmanager
def _cbreak(fd: int | None) -> Iterator[None]:
    """Single keys without Enter and without echo; the terminal is restored however the view ends."""
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_top(ask: Ask, interval: float = 1.0, console: Console | None = None) -> None:
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    rates = Rates()
    notice = {"text": ""}
    busy = threading.Lock()

    def act(label: str, message: dict[str, Any]) -> None:
        """Run an action in a thread (a reload waits until it has finished); its outcome shows in the footer."""
        if not busy.acquire(blocking=False):
            notice["text"] = "busy: wait for the last action to finish"
            return
        notice["text"] = f"{label}…"

        def work() -> None:
            try:
                answer = ask(message)
                notice["text"] = str(answer.get("message") or answer.get("error") or label)
            except CorralError as exc:
                notice["text"] = str(exc)
            finally:
                busy.release()

        threading.Thread(target=work, daemon=True).start()

    ask({"cmd": "status"})  # no instance: one line, before the screen is taken over
    with _cbreak(fd), Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            status = ask({"cmd": "status"})
            events = ask({"cmd": "events", "limit": 8}).get("events", [])
            rates.update(status["workers"], time.monotonic())
            live.update(render(status, events, rates, notice["text"]), refresh=True)
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                if fd is None:
                    time.sleep(left)
                    break
                readable, _, _ = select.select([fd], [], [], left)
                if not readable:
                    break
                key = os.read(fd, 1).decode(errors="replace")
                if key in ("q", "Q", "\x1b"):
                    return
                if key == "r":
                    act("reloading", {"cmd": "reload"})
                elif key in ("+", "="):
                    act("scaling up", {"cmd": "scale", "to": "+1"})
                elif key in ("-", "_"):
                    act("scaling down", {"cmd": "scale", "to": "-1"})
                else:
                    continue
                break  # redraw at once to show the action's notice

