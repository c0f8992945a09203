"""/metrics on --admin-bind: Corral's figures from shared memory, promtool's lint, a real Prometheus scraping it;
the recent figures in `corral status --json`; the fold of dead processes' app metrics."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from corral import metrics_exposition
from corral.control_client import request as control_request
from corral.manager.metrics import restart_cause
from corral.manager.pool import Worker
from corral.metrics_exposition import fold, render
from corral.metrics_shm import (
    BOUNDS,
    CELL_WORDS,
    CLASS_STRIDE,
    COUNTS,
    LATENCY_SUM,
    Figures,
    RequestFigures,
    quantile,
)
from corral.scoreboard import Scoreboard
from harness import Corral, free_port, wait_for, write_app

APP = """
    import asyncio

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/slow":
            await asyncio.sleep(0.2)
        if path == "/linger":
            await asyncio.sleep(8)
        if path == "/boom":
            raise RuntimeError("boom")
        if path == "/block":
            import time
            time.sleep(3600)
        if path == "/send":  # what the app's `send` is: the server's own, or a layer's around it
            body = getattr(send, "__qualname__", "").encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        status = {"/missing": 404, "/bogus": 999}.get(path, 200)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 100})
"""


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    match = re.search(pattern, text, re.M)
    assert match, f"{name}{{{labels}}} not in:\n{text}"
    return float(match.group(1))


# --- pure parts -----------------------------------------------------------------------------------


def test_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [0] * (len(BOUNDS) + 1)
    assert quantile(tuple(buckets), 0.5) is None
    buckets[0] = 50  # <= 1 ms
    buckets[3] = 50  # 5..10 ms
    assert quantile(tuple(buckets), 0.5) == pytest.approx(0.001)
    assert quantile(tuple(buckets), 0.99) == pytest.approx(0.005 + 0.005 * 49 / 50)
    buckets[-1] = 1000  # beyond the last bound: answered as the last bound
    assert quantile(tuple(buckets), 0.99) == BOUNDS[-1]


def test_figures_add_and_subtract() -> None:
    one = Figures((0, 3, 0, 1, 0), (1,) * (len(BOUNDS) + 1), 0.5, in_flight=2)
    two = one + one
    assert two.requests == 8 and two.latency_sum == 1.0 and two.in_flight == 4
    assert (two - one).requests == 4


def test_a_cell_sums_its_table_into_status_classes_and_buckets() -> None:
    board = Scoreboard.create()
    figures = RequestFigures.create(board.fd)
    try:
        figures.reset(3, slot=7)
        start = 3 * CELL_WORDS + COUNTS
        figures.words[start + 1 * CLASS_STRIDE + 0] += 5  # 2xx under 1 ms
        figures.words[start + 1 * CLASS_STRIDE + 2] += 1  # 2xx under 5 ms
        figures.words[start + 4 * CLASS_STRIDE + len(BOUNDS)] += 2  # 5xx beyond the last bound
        figures.floats[3 * CELL_WORDS + LATENCY_SUM] += 25.0
        read = figures.read(3)
        assert read.status == (0, 6, 0, 0, 2)
        assert read.buckets == (5, 0, 1) + (0,) * (len(BOUNDS) - 3) + (2,)
        assert read.latency_sum == 25.0 and figures.slot(3) == 7
        assert figures.read(2) == Figures.zero() and figures.read(4) == Figures.zero()  # neighbours untouched
    finally:
        figures.close()
        board.close()


def test_a_counted_response_lands_in_the_bucket_of_its_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bound belongs to its own bucket (Prometheus' `le`), the next float above it to the next one; statuses
    outside 100..599 count as 5xx. The clock is fixed, so latencies are exact. The counts reach the shared cell
    when the worker publishes them (with its heartbeat), not before."""
    from uvicorn.protocols.http import h11_impl, httptools_impl

    from corral.worker import metrics, protocols, uvicorn_http

    for owner, name in ((h11_impl, "RequestResponseCycle"), (httptools_impl, "RequestResponseCycle"),
                        (protocols._Draining, "timed"), (uvicorn_http, "_counting"), (metrics, "_figures"),
                        (metrics, "_cell")):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # restored after the test
    monkeypatch.setattr(uvicorn_http, "perf_counter", lambda: 0.0)
    saved = metrics.TABLE[:]
    metrics.TABLE[:] = [0] * metrics.TABLE_WORDS + [0.0]

    class Cycle:
        response_started = False

        async def send(self, message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                self.response_started = True

    board = Scoreboard.create()
    figures = RequestFigures.create(board.fd)
    try:
        metrics.count_requests(figures, 2)
        counted = uvicorn_http._counted(Cycle)
        latencies = [0.0, *BOUNDS, *(math.nextafter(bound, math.inf) for bound in BOUNDS)]
        for status, latency in [(200, latency) for latency in latencies] + [(404, 0.0), (999, 0.0), ("x", 0.0)]:
            cycle = counted()
            cycle.read_at = -latency
            for message in ({"type": "http.response.start", "status": status}, {"type": "http.response.body"}):
                with contextlib.suppress(StopIteration):
                    cycle.send(message).send(None)
        assert figures.read(2) == Figures.zero()  # not published yet
        metrics.publish(3)
        read = figures.read(2)
        assert read.status == (0, len(latencies), 0, 1, 2)
        assert read.buckets == (5, *([2] * (len(BOUNDS) - 1)), 1)
        assert read.latency_sum == pytest.approx(sum(latencies))
        assert read.in_flight == 3
    finally:
        metrics.TABLE[:] = saved
        figures.close()
        board.close()


def test_restart_causes_from_the_supervisors_facts() -> None:
    def worker(**fields: object) -> Worker:
        return Worker(slot=1, cell=0, generation=2, forked_at=0.0, **fields)  # type: ignore[arg-type]

    assert restart_cause(worker(), 2, False) == "crash"
    assert restart_cause(worker(), 2, True) is None  # stopping
    assert restart_cause(worker(), 3, False) is None  # a generation that never served
    assert restart_cause(worker(fault="its event loop hung", stop_reason="x"), 2, False) == "hang"
    assert restart_cause(worker(stop_reason="served 5 requests (limit 5)"), 2, False) == "requests"
    assert restart_cause(worker(stop_reason="private memory 300 MiB above --max-memory 200 MiB"), 2, False) == "memory"
    assert restart_cause(worker(stop_reason="reload to generation 3"), 2, False) == "reload"
    assert restart_cause(worker(stop_reason="scaled down"), 2, False) is None


def test_fold_keeps_counters_and_drops_dead_gauges(tmp_path: Path) -> None:
    """Real processes write prometheus_client files and exit; folding keeps every count in one record."""
    child = textwrap.dedent("""
        import sys
        from prometheus_client import Counter, Gauge
        Counter("c", "c", ["k"]).labels("a").inc(int(sys.argv[1]))
        Gauge("g_all", "g").set(1)
        Gauge("g_max", "g", multiprocess_mode="max").set(int(sys.argv[1]))
    """)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for amount in (1, 2, 3, 4):
        subprocess.run([sys.executable, "-c", child, str(amount)], env=env, check=True)
    assert len(list(tmp_path.glob("*.db"))) == 12
    assert fold(tmp_path) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_folded.db", "gauge_max_folded.db"]
    subprocess.run([sys.executable, "-c", child, "5"], env=env, check=True)
    fold(tmp_path)
    text = render({"families": [], "directory": str(tmp_path)}).decode()
    assert metric(text, "c_total", 'k="a"') == 15
    assert metric(text, "g_max") == 5
    assert "g_all" not in text.replace("# HELP g_all", "").replace("# TYPE g_all", "")


def test_fold_leaves_the_file_of_a_process_that_reused_a_dead_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pids are reused: a file of a dead pid is moved aside before it is folded, and put back if a process with
    that pid is alive by then (it may hold the file), unless that process has made a file of its own."""
    child = 'from prometheus_client import Counter; Counter("c", "c").inc(2)'
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", child], env=env, check=True)
    (dead,) = tmp_path.glob("counter_*.db")
    newcomer = subprocess.Popen(["sleep", "60"])
    try:
        reused = tmp_path / f"counter_{newcomer.pid}.db"
        dead.rename(reused)  # as if the newcomer had the dead process's pid
        assert metrics_exposition._claim(reused, newcomer.pid) is None  # alive: it may hold the file
        assert reused.exists() and not list(tmp_path.glob("*.folding"))

        def made_its_own(pid: int) -> bool:  # the newcomer opens its file by name while the first is moved aside
            reused.write_bytes(b"")
            return True

        monkeypatch.setattr(metrics_exposition, "_alive", made_its_own)
        claimed = metrics_exposition._claim(reused, newcomer.pid)
        assert claimed is not None and claimed.exists() and reused.read_bytes() == b""
    finally:
        newcomer.kill()
        newcomer.wait()
    monkeypatch.undo()
    reused.unlink()
    assert fold(tmp_path) == 1  # the claimed file left by an unfinished fold is folded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_folded.db"]
    assert metric(render({"families": [], "directory": str(tmp_path)}).decode(), "c_total") == 2


# --- a running instance ---------------------------------------------------------------------------


def serve(tmp_path: Path, corrals: list[Corral], *args: str) -> tuple[Corral, str]:
    write_app(tmp_path, APP)
    admin = free_port()
    corral = Corral(tmp_path, "app:app", "--admin-bind", f"127.0.0.1:{admin}", *args)
    corrals.append(corral)
    corral.wait_ready(2)
    return corral, f"http://127.0.0.1:{admin}"


def test_metrics_count_requests_by_status_and_latency(tmp_path: Path, corrals: list[Corral]) -> None:
    corral, admin = serve(tmp_path, corrals, "-w", "2", "--no-access-log")
    for _ in range(10):
        assert corral.get("/").status_code == 200
    for _ in range(3):
        assert corral.get("/missing").status_code == 404
    assert corral.get("/boom").status_code == 500
    assert corral.get("/slow").status_code == 200

    def scraped() -> tuple[httpx.Response, dict[str, float]]:
        response = httpx.get(f"{admin}/metrics", timeout=30)
        total = {code: sum(metric(response.text, "corral_requests_total", f'code="{code}",worker="{w}"')
                           for w in (1, 2)) for code in ("2xx", "4xx", "5xx")}
        return response, total

    # the workers publish their counts with their heartbeat: the figures are up to one heartbeat old
    response, total = wait_for(lambda: (r := scraped())[1]["2xx"] == 11 and r, 30, "the heartbeat's counts")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert total == {"2xx": 11, "4xx": 3, "5xx": 1}
    slow = sum(metric(text, "corral_request_duration_seconds_bucket", f'le="0.1",worker="{w}"') for w in (1, 2))
    everything = sum(metric(text, "corral_request_duration_seconds_count", f'worker="{w}"') for w in (1, 2))
    assert everything == 15 and slow == 14  # the 0.2 s request is above the 0.1 s bucket
    assert metric(text, "corral_workers", 'state="ready"') == 2
    assert metric(text, "corral_generation") == 1
    assert metric(text, "corral_accept_queue_limit_connections", f'listener="127.0.0.1:{corral.port}"') > 0
    assert metric(text, "corral_memory_pss_bytes") > 0
    assert metric(text, "corral_process_memory_uss_bytes", 'generation="",process="manager",worker=""') > 0
    assert metric(text, "corral_memory_budget_bytes") > 0
    assert metric(text, "corral_restarts_total", 'cause="crash"') == 0
    if shutil.which("promtool"):
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    elif sys.platform == "linux":
        pytest.fail("promtool is missing (Debian package prometheus, in scripts/apt-packages.txt)")


def test_a_worker_publishes_its_last_counts_as_it_exits(tmp_path: Path, corrals: list[Corral]) -> None:
    """Counts reach the shared cell with the heartbeat (once a second); those of a worker's last second are not
    lost when it exits between two heartbeats: it publishes them as it ends, and the manager folds them."""
    corral, admin = serve(tmp_path, corrals, "-w", "2", "--no-access-log")
    for _ in range(6):
        assert corral.get("/").status_code == 200
    victims = corral.ready_pids()
    for victim in victims:
        os.kill(victim, signal.SIGTERM)  # each drains at once: no connection is open
    wait_for(lambda: len(corral.ready_pids()) == 2 and not set(victims) & set(corral.ready_pids()), 60,
             "two replacement workers")

    def counted() -> float:
        text = httpx.get(f"{admin}/metrics", timeout=30).text
        return sum(metric(text, "corral_requests_total", f'code="2xx",worker="{w}"') for w in (1, 2))

    assert wait_for(lambda: counted() >= 6, 30, "six requests counted") and counted() == 6


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_both_http_protocols_count_pipelined_requests_and_bad_statuses(
    tmp_path: Path, corrals: list[Corral], http: str
) -> None:
    """Requests are counted by the HTTP protocol: pipelined ones too, each with its own latency; a status outside
    100..599 counts as a 5xx."""
    corral, admin = serve(tmp_path, corrals, "-w", "2", "--http", http, "--no-access-log")
    with socket.create_connection(("127.0.0.1", corral.port), timeout=30) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /missing HTTP/1.1\r\nHost: a\r\n\r\n"
                       b"GET /slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert re.findall(rb"HTTP/1.1 (\d+)", answer) == [b"200", b"404", b"200"]
    assert corral.get("/boom").status_code == 500
    with contextlib.suppress(httpx.HTTPError):  # httptools drops the connection, h11 sends "999"
        corral.get("/bogus")

    def counted() -> dict[str, float]:
        text = httpx.get(f"{admin}/metrics", timeout=30).text
        figures = {code: ("corral_requests_total", f'code="{code}",') for code in ("2xx", "4xx", "5xx")}
        figures["fast"] = ("corral_request_duration_seconds_bucket", 'le="0.1",')
        figures["all"] = ("corral_request_duration_seconds_count", "")
        return {key: sum(metric(text, name, f'{labels}worker="{w}"') for w in (1, 2))
                for key, (name, labels) in figures.items()}

    assert wait_for(lambda: (c := counted())["all"] == 5 and c, 30, "five requests counted") == {
        "2xx": 2, "4xx": 1, "5xx": 2, "fast": 4, "all": 5,
    }


def test_status_has_recent_rates_and_percentiles(tmp_path: Path, corrals: list[Corral]) -> None:
    corral, _ = serve(tmp_path, corrals, "-w", "2", "--no-access-log")
    deadline = time.monotonic() + 3
    sent = 0
    while time.monotonic() < deadline:
        assert corral.get("/").status_code == 200
        sent += 1
    # the workers publish their counts with the heartbeat: up to one heartbeat late
    status = wait_for(lambda: (s := control_request(corral.control, {"cmd": "status"})) and
                      s["pool"]["requests_per_second"] > 0 and s["pool"]["requests_total"] == sent and s, 30,
                      "a request rate and every request counted")
    pool = status["pool"]
    assert pool["requests_total"] == sent
    assert pool["requests_by_status"]["2xx"] == sent
    assert 0 < pool["latency_p50_seconds"] <= pool["latency_p99_seconds"]
    assert pool["in_flight"] == 0
    assert set(pool["restarts_by_cause"]) == {"crash", "hang", "memory", "requests", "reload"}
    for worker in status["workers"]:
        for key in ("requests_per_second", "latency_p50_seconds", "latency_p99_seconds", "in_flight",
                    "requests_by_status"):
            assert key in worker, key
    assert sum(w["requests_by_status"]["2xx"] for w in status["workers"]) == sent


def test_requests_in_flight_follow_the_heartbeat(tmp_path: Path, corrals: list[Corral]) -> None:
    corral, admin = serve(tmp_path, corrals, "-w", "2", "--no-access-log")

    def in_flight() -> float:
        text = httpx.get(f"{admin}/metrics", timeout=30).text
        return sum(metric(text, "corral_requests_in_flight", f'worker="{w}"') for w in (1, 2))

    answered: list[int] = []
    lingering = threading.Thread(target=lambda: answered.append(corral.get("/linger", timeout=60).status_code))
    lingering.start()
    try:
        wait_for(lambda: in_flight() == 1, 30, "one request in flight")
    finally:
        lingering.join()
    assert answered == [200]
    wait_for(lambda: in_flight() == 0, 30, "no request in flight")


def test_a_hung_worker_counts_as_a_hang_restart(tmp_path: Path, corrals: list[Corral]) -> None:
    corral, admin = serve(tmp_path, corrals, "-w", "2", "--timeout", "2", "--no-access-log")
    with pytest.raises(httpx.HTTPError):
        corral.get("/block", timeout=4)
    wait_for(lambda: control_request(corral.control, {"cmd": "status"})["pool"]["restarts_by_cause"]["hang"] == 1,
             60, "the hung worker to be replaced")
    text = httpx.get(f"{admin}/metrics", timeout=30).text
    assert metric(text, "corral_restarts_total", 'cause="hang"') == 1
    assert metric(text, "corral_restarts_total", 'cause="crash"') == 0


def test_no_metrics_leaves_no_route(tmp_path: Path, corrals: list[Corral]) -> None:
    corral, admin = serve(tmp_path, corrals, "-w", "2", "--no-metrics", "--no-access-log")
    assert corral.get("/").status_code == 200
    assert httpx.get(f"{admin}/metrics", timeout=10).status_code == 404


def test_a_real_prometheus_scrapes_corral(tmp_path: Path, corrals: list[Corral]) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        if sys.platform == "linux":
            pytest.fail("prometheus is missing (Debian package prometheus, in scripts/apt-packages.txt)")
        pytest.skip("no prometheus")
    corral, admin = serve(tmp_path, corrals, "-w", "2", "--no-access-log")
    for _ in range(7):
        assert corral.get("/missing").status_code == 404
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(textwrap.dedent(f"""
        global:
          scrape_interval: 10s
          scrape_timeout: 10s
        scrape_configs:
          - job_name: corral
            static_configs:
              - targets: ["{admin.removeprefix('http://')}"]
    """))
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        def query() -> float | None:
            answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query",
                               params={"query": 'sum(corral_requests_total{code="4xx"})'}, timeout=5).json()
            result = answer["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        assert wait_for(query, 90, "Prometheus to have scraped corral_requests_total") == 7
        targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5).json()
        assert targets["data"]["activeTargets"][0]["health"] == "up"
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_json_logs_from_every_process_and_the_access_log(tmp_path: Path, corrals: list[Corral]) -> None:
    corral, _ = serve(tmp_path, corrals, "-w", "2", "--log-format", "json", "--log-level", "debug", "--access-log")
    assert corral.get("/missing?x=1").status_code == 404
    wait_for(lambda: '"corral.access"' in corral.log, 30, "an access log line")
    corral.signal(15)
    assert corral.wait_exit() == 0
    lines = [line for line in corral.log.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    loggers = {record["logger"] for record in records}
    assert {"corral", "uvicorn.error", "corral.access"} <= loggers, loggers
    assert any(record["message"].startswith("Started server process") for record in records)
    assert {record["process"] for record in records} >= {"corral", "worker"}
    access = next(record for record in records if record["logger"] == "corral.access")
    assert access["status"] == 404 and access["bytes"] == 100 and access["path"] == "/missing?x=1"
    assert access["worker"] in (1, 2) and access["duration_seconds"] >= 0 and access["method"] == "GET"


def test_text_logs_use_corrals_format_for_uvicorns_lines(tmp_path: Path, corrals: list[Corral]) -> None:
    corral, _ = serve(tmp_path, corrals, "-w", "2", "--log-level", "debug", "--access-log")
    assert corral.get("/").status_code == 200
    wait_for(lambda: '"GET / HTTP/1.1" 200 100B' in corral.log, 30, "an access log line")
    started = [line for line in corral.log.splitlines() if "Started server process" in line]
    assert started and all(re.match(r"\d\d:\d\d:\d\d \[worker [12]\] INFO ", line) for line in started), started
    assert "INFO:     " not in corral.log


def test_corrals_protocol_writes_the_access_log_without_a_layer_around_the_app(
    tmp_path: Path, corrals: list[Corral]
) -> None:
    """With the access log on, Corral's protocol logs each request itself: the app gets the protocol's own `send`,
    not a closure made for the request, and the line is the same."""
    corral, _ = serve(tmp_path, corrals, "-w", "2", "--access-log")
    answer = corral.get("/send")
    assert answer.status_code == 200 and answer.text == "Cycle.send"
    wait_for(lambda: '"GET /send HTTP/1.1" 200 10B' in corral.log, 30, "the access log line")
    assert corral.get("/missing?x=1").status_code == 404
    wait_for(lambda: '"GET /missing?x=1 HTTP/1.1" 404 100B' in corral.log, 30, "the 404's access log line")


def test_json_formatter_one_object_per_line_with_extra_fields() -> None:
    import logging

    from corral.logs import formatter

    record = logging.LogRecord("corral.access", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
    record.status = 404
    line = formatter("json", "worker 3", worker=3).format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "GET /x" and data["status"] == 404 and data["worker"] == 3
    assert data["process"] == "worker" and data["level"] == "info" and data["time"].endswith("Z")
    text = formatter("text", "worker 3").format(record)
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[worker 3\] INFO GET /x", text)
