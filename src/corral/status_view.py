"""`corral status` as a table, in the spirit of `pm2 ls`, drawn without rich (`terminal.py`): monitors poll it."""

from __future__ import annotations

import time
from typing import Any

from corral.terminal import Cell, Terminal
from corral.text import format_bytes, plural

STATE_STYLE = {"ready": "green", "starting": "yellow", "draining": "magenta", "parked": "cyan"}
COLUMNS = (("worker", True), ("pid", True), ("state", False), ("gen", True), ("uptime", True), ("restarts", True),
           ("requests", True), ("cpu", True), ("private mem", True), ("pss", True))  # fmt: skip


def _uptime(started_at: float) -> str:
    seconds = max(0, int(time.time() - started_at))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def print_status(status: dict[str, Any], terminal: Terminal) -> None:
    if "prestart" in status:  # before the first workers
        terminal.line(startup_line(status))
        return
    title = (
        f"manager pid {status['manager_pid']} · generation {status['generation']} · "
        f"{plural(status['target_workers'], 'worker')} wanted · {plural(status['restarts'], 'restart')}"
        + (f" ({plural(status['crashes'], 'crash', 'crashes')} while serving)" if status.get("crashes") else "")
        + (" · stopping" if status.get("stopping") else "")
    )
    rows: list[list[Cell]] = []
    for name, process, state in [
        ("manager", status.get("manager"), ""),
        *((f"template {t['generation']}", t, t["phase"]) for t in status.get("templates", [])),
    ]:
        if process:
            rows.append([name, str(process["pid"]), state, "", "", "", "", "", *_memory(process)])
    for worker in [*status["workers"], *status.get("spares", [])]:  # a spare: parked, accepting nothing
        uss = worker.get("memory_uss")
        rows.append([
            "spare" if worker["state"] == "parked" else str(worker["id"]),
            str(worker["pid"] or "-"),
            (str(worker["state"]), STATE_STYLE.get(worker["state"], "")),
            str(worker["generation"]),
            _uptime(worker["started_at"]),
            str(worker["restarts"]),
            str(worker["requests"]),
            f"{worker['cpu_percent']:.0f}%",
            format_bytes(uss) if uss else "-",
            _bytes(worker.get("memory_pss")),
        ])  # fmt: skip
    caption = ""
    if status.get("memory_pss_total"):
        other = status.get("memory_pss_other") or 0
        caption = f"total PSS (manager, templates, workers{', other' if other else ''}): " + _bytes(
            status["memory_pss_total"]
        ) + (f" · other processes of the app: {_bytes(other)}" if other else "")
    terminal.table(title, COLUMNS, rows, caption)
    for slot in status.get("backoff", []):
        until = time.strftime("%H:%M:%S", time.localtime(slot["until"]))
        terminal.line((f"worker {slot['id']} waits in backoff until {until} ({slot['seconds']:.1f} s): "
                       f"{plural(slot['failures'], 'failed start')} in a row", "yellow"))  # fmt: skip
    if status.get("autoscaler"):
        terminal.line(autoscaler_line(status["autoscaler"]))


def startup_line(status: dict[str, Any]) -> str:
    """`manager pid 42 · pre-start step 1 of 2 running for 12s: alembic upgrade head · 2 workers wanted`."""
    step = status.get("prestart") or {}
    since = _uptime(time.time() - float(step.get("seconds") or 0))
    if status.get("phase") == "stopping":
        doing = "stopping before serving"
    elif step.get("waiting_for"):
        doing = f"pre-start steps waiting for {since} for the {step['waiting_for']} (another instance holds it)"
    elif step.get("step"):
        doing = f"pre-start step {step['step']} of {step['steps']} running for {since}: {step['command']}"
    else:
        doing = "starting"
    return f"manager pid {status['manager_pid']} · {doing} · {plural(status['target_workers'], 'worker')} wanted"


def autoscaler_line(scaler: dict[str, Any]) -> str:
    """`autoscale 1-8 (memory allows 5) · band 50-90 % · busy 72 %, CPU 40 % of 2 CPUs · hold: ...`."""
    low, high = scaler["range"]
    lines = f"autoscale {low}-{high}"
    if scaler["ceiling"] < high:
        lines += f" (memory allows {scaler['ceiling']})"
    lines += f" · band {scaler['band'][0]}-{scaler['band'][1]} %"
    if scaler["utilisation"] is not None:
        lines += f" · busy {scaler['utilisation'] * 100:.0f} %, CPU {scaler['cpu'] * 100:.0f} % of {scaler['cpus']:g}"
        lines += f" CPU{'s' if scaler['cpus'] != 1 else ''}"
    if scaler["queued"]:
        lines += f", {scaler['queued']} waiting"
    decision = scaler["decision"]
    lines += f"\nnow: {decision['action']}: {decision['reason']}"
    last = scaler.get("last_change")
    if last:
        when = time.strftime("%H:%M:%S", time.localtime(last["time"]))
        lines += f"\nlast change at {when}: {last['action']} {last['from']} → {last['to']}: {last['reason']}"
    shed = (scaler.get("shed") or {}).get("last")
    if shed:
        when = time.strftime("%H:%M:%S", time.localtime(shed["time"]))
        lines += (f"\nlast spread at {when}: worker {shed['worker']} let {shed['count']} of its {shed['connections']} "
                  f"keep-alive connections go ({shed['reason']})")
    return lines


def _bytes(value: int | None) -> str:
    return format_bytes(value) if value else "-"


def _memory(process: dict[str, Any]) -> tuple[str, str]:
    return _bytes(process.get("memory_uss")), _bytes(process.get("memory_pss"))
