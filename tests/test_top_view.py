"""`corral top`'s pieces without a terminal: request rates from successive counts, and what a frame shows."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from corral.top_view import Rates, event_line, render


def worker(pid: int, requests: int, **extra: Any) -> dict[str, Any]:
    return {"id": pid % 10, "pid": pid, "state": "ready", "generation": 1, "requests": requests, "restarts": 0,
            "cpu_percent": 12.0, "memory_uss": 40 * 2**20, "started_at": time.time() - 90, **extra}


def test_rates_over_a_span_of_readings() -> None:
    rates = Rates(span=5.0)
    rates.update([worker(11, 100)], 0.0)
    assert rates.of(worker(11, 100)) is None  # one reading: no rate yet
    rates.update([worker(11, 150)], 1.0)
    rates.update([worker(11, 300), worker(12, 5)], 2.0)
    assert rates.of(worker(11, 300)) == 100.0  # (300 - 100) / 2 s
    assert rates.of(worker(12, 5)) is None  # new worker: no earlier reading
    rates.update([worker(11, 300)], 60.0)  # after a long gap: measured against the last reading kept
    assert rates.of(worker(11, 300)) == 0.0
    assert rates.of(worker(11, 0, requests_per_second=42.5)) == 42.5  # the status's own figure wins
    rates.update([worker(13, 0)], 61.0)
    assert rates.of(worker(11, 300)) is None  # gone workers are forgotten


def test_a_frame_shows_workers_totals_and_events() -> None:
    status = {
        "manager_pid": 7, "generation": 3, "target_workers": 2, "restarts": 1, "stopping": False,
        "workers": [worker(101, 10, latency_p50_seconds=0.0021, latency_p99_seconds=0.0456), worker(102, 20)],
        "pool": {"cpu_quota": 2.0, "cpu_percent": 24.0, "memory_used": 300 * 2**20,
                 "memory_budget": 3 * 2**30, "workers_ready": 2},
    }
    rates = Rates()
    rates.update(status["workers"], 0.0)
    rates.update([worker(101, 30), worker(102, 20)], 2.0)
    events = [{"seq": 1, "time": time.time(), "kind": "hang", "message": "worker 1 (pid 101): its event loop hung",
               "waiting_in": "hrtimer_nanosleep"}]
    console = Console(record=True, width=160)
    console.print(render(status, events, rates, "scaled from 1 to 2 workers"))
    text = console.export_text()
    assert "101" in text and "102" in text and "generation 3" in text and "2/2 workers ready" in text
    assert "10.0" in text and "0.0" in text  # req/s of each
    assert "2.1ms" in text and "45.6ms" in text and "-" in text  # latency when known, else -
    assert "CPU 24% of 200% (2 CPUs)" in text and "300 MiB of 3.0 GiB budget (10%)" in text
    assert "hang" in text and "waiting in hrtimer_nanosleep" in text
    assert "scaled from 1 to 2 workers" in text and "q quit" in text
    assert "1m30s" in text  # uptime
    assert "hang" in event_line(events[0]).plain


def test_a_frame_before_the_workers_shows_the_pre_start_step() -> None:
    status = {"phase": "prestart", "manager_pid": 7, "generation": 0, "target_workers": 2, "restarts": 0,
              "stopping": False, "workers": [], "pool": {"workers_ready": 0},
              "prestart": {"step": 1, "steps": 2, "command": "alembic upgrade head", "waiting_for": None,
                           "seconds": 75.0}}
    console = Console(record=True, width=160)
    console.print(render(status, [], Rates()))
    text = console.export_text()
    assert "pre-start step 1 of 2 running for 1m15s: alembic upgrade head · 2 workers wanted" in text
