"""The app's own prometheus_client metrics over every worker: correct totals through recycles, kills, reloads."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx

from corral.control_client import request as control_request
from corral.manager.metrics import FOLD_AFTER
from harness import Corral, free_port, wait_for, write_app

APP = """
    from prometheus_client import Counter, Gauge, Histogram, Summary

    SERVED = Counter("app_served", "Requests the app answered", ["path"])
    BUSY = Gauge("app_busy", "Requests being answered", multiprocess_mode="livesum")
    WORKERS = Gauge("app_worker_up", "1 per live worker")  # the default mode: one series per process
    TIME = Histogram("app_work_seconds", "Time the app worked")
    SIZE = Summary("app_body_bytes", "Body sizes")

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        WORKERS.set(1)
        with BUSY.track_inprogress(), TIME.time():
            SERVED.labels(scope["path"]).inc()
            SIZE.observe(5)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(__import__("os").getpid()).encode()})
"""


RECYCLES = 1000
POOL = 8  # recycles run in parallel, one per worker: more workers, a shorter test


def start(tmp_path: Path, corrals: list[Corral], *args: str) -> tuple[Corral, str]:
    write_app(tmp_path, APP)
    admin = free_port()
    corral = Corral(tmp_path, "app:app", "--admin-bind", f"127.0.0.1:{admin}", "--no-access-log", *args)
    corrals.append(corral)
    return corral, f"http://127.0.0.1:{admin}/metrics"


def scrape(url: str) -> str:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    return response.text


def value(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    match = re.search(pattern, text, re.M)
    assert match, f"{name}{{{labels}}} not in:\n{text}"
    return float(match.group(1))


FAILURES: list[str] = []  # what went wrong with each failed request, for the assertion's message


def get(port: int) -> bool:
    """One request on its own connection; True when it was answered 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/hit", headers={"Connection": "close"})
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        FAILURES.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
        return False
    finally:
        connection.close()
    if status != 200:
        FAILURES.append(f"{time.strftime('%H:%M:%S')} status {status}")
    return status == 200


def app_metrics_directory(corral: Corral) -> Path:
    """The directory Corral gave the app: in a template's environment."""
    template = corral.status()["templates"][0]["pid"]
    environ = Path(f"/proc/{template}/environ").read_bytes().split(b"\0")
    found = [item.split(b"=", 1)[1] for item in environ if item.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    assert found, "no PROMETHEUS_MULTIPROC_DIR in the template's environment"
    return Path(found[0].decode())


def restarts(corral: Corral, cause: str) -> int:
    status = control_request(corral.control, {"cmd": "status"}, timeout=10)
    return int(status["pool"]["restarts_by_cause"][cause])


def test_a_thousand_recycles_keep_the_count_and_bounded_space(tmp_path: Path, corrals: list[Corral]) -> None:
    corral, url = start(tmp_path, corrals, "-w", str(POOL), "--max-requests", "1")
    corral.wait_ready(POOL)
    directory = app_metrics_directory(corral)
    served = 0
    failed = 0
    lock = threading.Lock()
    stop = threading.Event()
    biggest = [0, 0]  # files, bytes in the directory at most

    def client() -> None:
        nonlocal served, failed
        while not stop.is_set():
            ok = get(corral.port)
            with lock:
                served += ok
                failed += not ok

    def watch_space() -> None:
        while not stop.wait(0.2):
            files = list(directory.glob("*"))
            used = 0
            for file in files:
                with contextlib.suppress(FileNotFoundError):  # folded meanwhile
                    used += file.stat().st_blocks * 512
            biggest[0] = max(biggest[0], len(files))
            biggest[1] = max(biggest[1], used)

    threads = [threading.Thread(target=client) for _ in range(POOL)] + [threading.Thread(target=watch_space)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: restarts(corral, "requests") >= RECYCLES, 600, f"{RECYCLES} recycles")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failed == 0, FAILURES

    def corral_counted(text: str) -> float:
        return sum(value(text, "corral_requests_total", f'code="2xx",worker="{w}"') for w in range(1, POOL + 1))

    # Corral's own count is published with each worker's heartbeat and as it exits: it may lag a heartbeat
    text = wait_for(lambda: (t := scrape(url)) and value(t, "app_served_total", 'path="/hit"') == served
                    and corral_counted(t) == served and t, 30, f"the app's and Corral's counters to reach {served}")
    assert value(text, "app_work_seconds_count") == served
    assert value(text, "app_body_bytes_count") == served
    assert value(text, "app_busy") == 0
    # only the live workers' series of a default-mode gauge remain
    assert len(re.findall(r"^app_worker_up\{", text, re.M)) <= POOL + 1
    # Corral's own count agrees: every request counted once, whatever worker served it
    assert corral_counted(text) == served
    # the folded record and the live processes' files only: bounded, whatever the number of recycles. A fold
    # runs once a second past FOLD_AFTER files of dead processes, and recycles go on while it runs, so the
    # directory may overshoot by what a few seconds of recycling make on a loaded machine; without folding,
    # 1,000 recycles leave several files each (4,000 and more).
    assert biggest[0] <= 2 * FOLD_AFTER, biggest
    assert biggest[1] <= 16 * 2**20, biggest


def test_sigkill_and_reload_never_make_counters_go_backwards(tmp_path: Path, corrals: list[Corral]) -> None:
    corral, url = start(tmp_path, corrals, "-w", "2")
    corral.wait_ready(2)
    sent = sum(get(corral.port) for _ in range(40))
    assert sent == 40
    before = wait_for(lambda: (v := value(scrape(url), "app_served_total", 'path="/hit"')) == 40 and v, 30, "40")
    victim = corral.ready_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in corral.ready_pids() and len(corral.ready_pids()) == 2, 30, "a replacement")
    after_kill = value(scrape(url), "app_served_total", 'path="/hit"')
    assert after_kill == before == 40
    text = scrape(url)
    assert value(text, "corral_restarts_total", 'cause="crash"') == 1
    assert len(re.findall(r"^app_worker_up\{", text, re.M)) <= 3  # the killed worker's gauge is gone
    old = set(corral.ready_pids())
    assert control_request(corral.control, {"cmd": "reload"}, timeout=60)["ok"]
    assert not old & set(corral.ready_pids())
    sent += sum(get(corral.port) for _ in range(10))
    text = scrape(url)
    assert value(text, "app_served_total", 'path="/hit"') == sent == 50
    assert value(text, "corral_reloads_total", 'outcome="done"') == 1
    assert value(text, "corral_restarts_total", 'cause="reload"') == 2
    assert value(text, "corral_generation") == 2
