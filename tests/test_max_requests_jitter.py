"""--max-requests-jitter gives each worker a limit of its own, from max to max + jitter (docs/configuration.md).

One worker, requests one at a time: each worker is recycled once it has served its limit, and the manager's
recycle events (`served N requests (limit L)`) show the limits differ between workers, within the range.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx

from harness import OK_APP, Corral, run_cli, wait_for, write_app

MAX, JITTER, RECYCLES = 10, 10, 6


def recycles(corral: Corral) -> list[tuple[int, int]]:
    result = run_cli("events", "--json", "--control", str(corral.control))
    found = []
    for event in map(json.loads, result.stdout.splitlines()):
        match = re.fullmatch(r"served (\d+) requests \(limit (\d+)\)", str(event.get("cause", "")))
        if event["kind"] == "recycle" and match:
            found.append((int(match[1]), int(match[2])))
    return found


def test_recycled_workers_have_limits_spread_over_the_jitter(corrals: list[Corral], tmp_path: Path) -> None:
    write_app(tmp_path, OK_APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", "--max-requests", str(MAX), "--max-requests-jitter", str(JITTER))
    corrals.append(corral)
    corral.wait_ready(1)
    sent = 0
    with httpx.Client(base_url=corral.url, timeout=30) as client:
        while sent < RECYCLES * (MAX + JITTER) + 50:
            assert client.get("/").status_code == 200
            sent += 1
            time.sleep(0.1)  # paced: the manager (one look per 50 ms) sees each count as it is reached
            if sent % 25 == 0 and len(recycles(corral)) >= RECYCLES:
                break
    seen = wait_for(lambda: (r := recycles(corral)) and len(r) >= RECYCLES and r, what=f"{RECYCLES} recycles")
    limits = [limit for _, limit in seen]
    assert all(MAX <= limit <= MAX + JITTER for limit in limits), seen
    assert all(limit <= served <= limit + 10 for served, limit in seen), seen  # + what a slow manager lets by
    assert len(set(limits)) >= 2, f"every worker had the same limit: {seen}"
