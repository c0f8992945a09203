"""The manager's view of the pool's figures: `/metrics`, and request rates and latency for `corral status`.

Workers count their requests into shared memory (`corral.metrics_shm`); every second the manager reads the
live workers' cells and keeps the last few seconds of readings, for rates and percentiles over a recent
window. When a worker is gone its figures are folded into its slot's total, so a slot's counters never go
backwards. A scrape collects everything as plain families and hands them, with the app's multiprocess
directory, to a short-lived helper process (`corral.metrics_exposition`) that renders Prometheus's text
format with prometheus_client: the manager itself never imports it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from corral import __version__
from corral.manager import resources
from corral.manager.admin import Request, Response, Route
from corral.metrics_shm import BOUNDS, STATUS_CLASSES, Figures, RequestFigures, quantile

if TYPE_CHECKING:
    from corral.manager.pool import Worker
    from corral.manager.supervisor import Supervisor

log = logging.getLogger("corral")

WINDOW = 10.0  # seconds of readings behind `requests_per_second` and the percentiles
RENDER_TIMEOUT = 30.0
FOLD_AFTER = 500  # files of dead processes tolerated in the app's metrics directory before a fold runs
CAUSES = ("crash", "hang", "memory", "requests", "reload")
ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[list[str], Any]


def restart_cause(worker: Worker, current_generation: int | None, stopping: bool) -> str | None:
    """Why a worker that is gone was replaced (one of CAUSES), or None when it was not a restart."""
    reason = worker.stop_reason
    if worker.fault:
        return "hang"
    if reason is None:
        return None if stopping or worker.generation != current_generation else "crash"
    if reason.startswith("reload"):
        return "reload"
    if reason.startswith("served "):
        return "requests"
    if reason.startswith("private memory"):
        return "memory"
    return None


class AppMetricsDirectory:
    """The app's prometheus_client multiprocess directory, one per instance, set before any import of the app."""

    PREFIX = "corral-metrics-"

    def __init__(self, user: str | None, group: str | None) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.path = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-", dir=base))
        self._remove_orphans()
        if user or group:
            from corral.privileges import resolve_owner

            owner = resolve_owner(user, group)
            if owner is not None:
                os.chown(self.path, *owner)
        os.environ[ENV_VAR] = str(self.path)  # the templates inherit it, so the app's import sees it

    def _remove_orphans(self) -> None:
        """Directories left by our instances that were killed (SIGKILL skips the clean-up): their manager is
        gone. Only real directories of our own user: root too leaves every other user's alone."""
        for path in self.path.parent.glob(f"{self.PREFIX}*-*"):
            pid = path.name.removeprefix(self.PREFIX).partition("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not psutil.pid_exists(int(pid)):
                with contextlib.suppress(OSError):
                    info = os.lstat(path)
                    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
                        shutil.rmtree(path, ignore_errors=True)

    def dead_files(self, live: set[int]) -> int:
        count = 0
        with contextlib.suppress(OSError):
            for name in os.listdir(self.path):
                pid = name.removesuffix(".db").rpartition("_")[2]
                if name.endswith(".db") and pid.isdigit() and int(pid) not in live:
                    count += 1
        return count

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class PoolMetrics:
    def __init__(
        self,
        supervisor: Supervisor,
        figures: RequestFigures,
        listeners: list[socket.socket],
        app_metrics: AppMetricsDirectory | None,
        started_at: float | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.figures = figures
        self.listeners = listeners
        self.app_metrics = app_metrics
        self.folded: dict[int, Figures] = {}  # per slot: the figures of its workers that are gone
        self.cpu_folded: dict[int, float] = {}  # per slot: CPU seconds of its workers that are gone
        self.cpu_seen: dict[int, float] = {}  # per pid: the latest CPU seconds read
        self.restarts: collections.Counter[str] = collections.Counter()
        self.readings: dict[int, collections.deque[tuple[float, Figures]]] = {}  # per cell
        self.pool_readings: collections.deque[tuple[float, Figures]] = collections.deque()
        self.started_at = started_at or time.time()
        self._helper = asyncio.Lock()
        supervisor.on_worker_forked.append(self.forked)
        supervisor.on_worker_gone.append(self.gone)

    # --- facts from the supervisor ----------------------------------------------------------------

    def forked(self, worker: Worker) -> None:
        self.figures.reset(worker.cell, worker.slot)
        self.readings.pop(worker.cell, None)

    def gone(self, worker: Worker) -> None:
        last = self.figures.read(worker.cell)
        kept = Figures(last.status, last.buckets, last.latency_sum)
        self.folded[worker.slot] = self.folded.get(worker.slot, Figures.zero()) + kept
        self.readings.pop(worker.cell, None)
        if worker.pid is not None:
            self.cpu_folded[worker.slot] = self.cpu_folded.get(worker.slot, 0.0) + self.cpu_seen.pop(worker.pid, 0.0)
        current = self.supervisor.current.number if self.supervisor.current else None
        cause = restart_cause(worker, current, self.supervisor.stopping)
        if cause is not None:
            self.restarts[cause] += 1

    # --- the window -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Read the cells every second; fold the app's files of dead processes when they pile up."""
        while True:
            self.sample(time.monotonic())
            if self.app_metrics is not None and self.app_metrics.dead_files(self._live_pids()) > FOLD_AFTER:
                try:
                    await self._run_helper({"directory": str(self.app_metrics.path), "render": False})
                except (RuntimeError, OSError, TimeoutError) as exc:
                    log.warning("the app's metrics of dead workers could not be folded: %s", exc)
            await asyncio.sleep(1.0)

    def sample(self, now: float) -> None:
        for worker in list(self.supervisor.workers.values()):
            readings = self.readings.setdefault(worker.cell, collections.deque())
            readings.append((now, self.figures.read(worker.cell)))
            _trim(readings, now)
            if worker.pid:
                with contextlib.suppress(psutil.Error):
                    times = psutil.Process(worker.pid).cpu_times()
                    self.cpu_seen[worker.pid] = times.user + times.system
        self.pool_readings.append((now, self.totals()))
        _trim(self.pool_readings, now)

    def totals(self) -> Figures:
        total = Figures.zero()
        for figures in self.folded.values():
            total = total + figures
        for worker in self.supervisor.workers.values():
            total = total + self.figures.read(worker.cell)
        return total

    def summary(self, readings: collections.deque[tuple[float, Figures]], latest: Figures) -> dict[str, Any]:
        now = time.monotonic()
        oldest_at, oldest = readings[0] if readings else (now, latest)
        span = now - oldest_at
        recent = latest - oldest
        return {
            "requests_per_second": round(recent.requests / span, 2) if span >= 0.5 else 0.0,
            "latency_p50_seconds": _rounded(quantile(recent.buckets, 0.5)),
            "latency_p99_seconds": _rounded(quantile(recent.buckets, 0.99)),
            "in_flight": latest.in_flight,
            "requests_by_status": dict(zip(STATUS_CLASSES, latest.status, strict=True)),
        }

    def annotate(self, status: dict[str, Any]) -> None:
        """Add the recent figures to `corral status --json`: per worker and for the pool."""
        cells = {worker.pid: worker.cell for worker in self.supervisor.workers.values() if worker.pid}
        for entry in status.get("workers", []):
            cell = cells.get(entry.get("pid"))
            if cell is not None:
                entry.update(self.summary(self.readings.get(cell, collections.deque()), self.figures.read(cell)))
        totals = self.totals()
        pool = self.summary(self.pool_readings, totals)
        pool["requests_total"] = totals.requests
        pool["restarts_by_cause"] = {cause: self.restarts[cause] for cause in CAUSES}
        status["pool"] = pool

    # --- /metrics ---------------------------------------------------------------------------------

    async def render(self) -> bytes:
        request = {
            "families": self.families(),
            "directory": str(self.app_metrics.path) if self.app_metrics else None,
        }
        return await self._run_helper(request)

    async def _run_helper(self, request: dict[str, Any]) -> bytes:
        async with self._helper:  # one at a time: a fold never runs under a scrape's reading
            return await exposition(request)

    def _live_pids(self) -> set[int]:
        pids = {w.pid for w in self.supervisor.workers.values() if w.pid}
        return pids | {g.process.pid for g in self.supervisor.generations.values()}

    def families(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []

        def family(name: str, kind: str, text: str, labels: list[str], samples: list[Sample]) -> None:
            out.append({"name": name, "type": kind, "help": text, "labels": labels, "samples": samples})

        supervisor = self.supervisor
        per_slot = dict(self.folded)
        for worker in supervisor.workers.values():
            per_slot[worker.slot] = per_slot.get(worker.slot, Figures.zero()) + self.figures.read(worker.cell)
        slots = sorted(per_slot)
        family("corral_requests", "counter", "HTTP requests answered, by worker and status class",
               ["worker", "code"],
               [([str(s), code], per_slot[s].status[i]) for s in slots for i, code in enumerate(STATUS_CLASSES)])
        family("corral_request_duration_seconds", "histogram", "Time to answer an HTTP request, by worker",
               ["worker"], [([str(s)], _histogram(per_slot[s])) for s in slots])
        family("corral_requests_in_flight", "gauge", "HTTP requests being answered now, by worker",
               ["worker"], [([str(s)], per_slot[s].in_flight) for s in slots])
        connections: dict[int, int] = {}
        for worker in supervisor.workers.values():
            cell = supervisor.scoreboard.read(worker.cell)
            if worker.pid and cell.pid == worker.pid:
                connections[worker.slot] = connections.get(worker.slot, 0) + cell.connections
        family("corral_open_connections", "gauge", "Client connections open, by worker", ["worker"],
               [([str(s)], n) for s, n in sorted(connections.items())])
        queues: list[Sample] = []
        limits: list[Sample] = []
        for sock in self.listeners:
            depth = resources.accept_queue(sock)
            if depth is not None:
                name = _listener_name(sock)
                queues.append(([name], depth[0]))
                limits.append(([name], depth[1]))
        family("corral_accept_queue_connections", "gauge", "Connections waiting in a listener's accept queue",
               ["listener"], queues)
        family("corral_accept_queue_limit_connections", "gauge", "Size of a listener's accept queue",
               ["listener"], limits)
        family("corral_restarts", "counter", "Workers restarted, by cause", ["cause"],
               [([cause], self.restarts[cause]) for cause in CAUSES])
        family("corral_reloads", "counter", "Rolling reloads, by outcome", ["outcome"],
               [([outcome], supervisor.reloads[outcome]) for outcome in ("done", "refused")])
        states = collections.Counter(worker.state for worker in supervisor.workers.values())
        _pool_families(family, supervisor.current.number if supervisor.current else 0, states, supervisor.target)
        self._process_families(family)
        self._other_families(family)
        return out

    def _process_families(self, family: Callable[[str, str, str, list[str], list[Sample]], None]) -> None:
        supervisor = self.supervisor
        processes: list[tuple[list[str], int]] = [(["manager", "", ""], os.getpid())]
        processes += [(["template", "", str(g.number)], g.process.pid) for g in supervisor.generations.values()]
        processes += [(["worker", str(w.slot), str(w.generation)], w.pid) for w in supervisor.workers.values() if w.pid]
        memory: dict[str, list[Sample]] = {"uss": [], "pss": [], "rss": []}
        tree = {"uss": 0, "pss": 0, "rss": 0}
        for labels, pid in processes:
            measured = supervisor.sampler.memory(pid)
            if measured is None:
                continue
            for kind in memory:
                value = getattr(measured, kind)
                memory[kind].append((labels, value))
                tree[kind] += value
        words = {"uss": "Private (unique) memory", "pss": "Proportional set size", "rss": "Resident memory"}
        process_labels = ["process", "worker", "generation"]
        for kind, samples in memory.items():
            family(f"corral_process_memory_{kind}_bytes", "gauge", f"{words[kind]} of each process",
                   process_labels, samples)
            family(f"corral_memory_{kind}_bytes", "gauge", f"{words[kind]} of the whole process tree", [],
                   [([], tree[kind])])
        times = os.times()
        cpu: list[Sample] = [(["manager", ""], times.user + times.system)]
        per_slot = dict(self.cpu_folded)
        for worker in supervisor.workers.values():
            if worker.pid:
                per_slot[worker.slot] = per_slot.get(worker.slot, 0.0) + self.cpu_seen.get(worker.pid, 0.0)
        cpu += [(["worker", str(slot)], seconds) for slot, seconds in sorted(per_slot.items())]
        family("corral_cpu_seconds", "counter", "CPU time used (user and system), by process role and worker",
               ["process", "worker"], cpu)
        pool = sum(value for labels, value in memory["uss"] if labels[0] == "worker")
        shared = sum(value for labels, value in memory["rss"] if labels[0] == "template")
        family("corral_memory_budget_bytes", "gauge",
               "Memory the pool may use: available memory (or the cgroup's headroom) plus what the pool holds",
               [], [([], resources.memory_available() + pool + shared)])
        if supervisor.settings.max_memory:
            family("corral_worker_memory_limit_bytes", "gauge", "Private memory above which a worker is recycled",
                   [], [([], supervisor.settings.max_memory)])

    def _other_families(self, family: Callable[[str, str, str, list[str], list[Sample]], None]) -> None:
        supervisor = self.supervisor
        certificates = supervisor.certificate_status() if supervisor.certificate_status else []
        expiry: list[Sample] = []
        failures: list[Sample] = []
        for certificate in certificates:
            name = ",".join(certificate.get("names", []))
            if certificate.get("not_after"):
                from datetime import datetime

                expiry.append(([name], datetime.fromisoformat(certificate["not_after"]).timestamp()))
            failures.append(([name], certificate.get("failures", 0)))
        family("corral_certificate_expiry_timestamp_seconds", "gauge", "When each certificate expires (Unix time)",
               ["names"], expiry)
        family("corral_certificate_renewal_failures", "gauge", "Failed renewals of each certificate in a row",
               ["names"], failures)
        prestart = sys.modules.get("corral.prestart")  # imported only by an instance with pre-start steps
        last_run: dict[str, Any] = getattr(prestart, "LAST_RUN", {})
        if last_run:
            family("corral_prestart_duration_seconds", "gauge", "Duration of the latest pre-start run", [],
                   [([], last_run["seconds"])])
            family("corral_prestart_success", "gauge", "1 if the latest pre-start run succeeded, else 0", [],
                   [([], 1 if last_run["ok"] else 0)])
        _instance_families(family, self.started_at)


Family = Callable[[str, str, str, list[str], list[Sample]], None]


def _pool_families(family: Family, generation: int, states: collections.Counter[str], target: int) -> None:
    family("corral_generation", "gauge", "Generation currently serving", [], [([], generation)])
    family("corral_workers", "gauge", "Worker processes, by state", ["state"],
           [([state], states[state]) for state in ("starting", "ready", "draining")])
    family("corral_target_workers", "gauge", "Workers the pool is asked to run", [], [([], target)])


def _instance_families(family: Family, started_at: float) -> None:
    family("corral_start_time_seconds", "gauge", "When this instance started (Unix time)", [], [([], started_at)])
    family("corral_build_info", "gauge", "Corral's version", ["version"], [([__version__], 1)])


async def startup_exposition(target: int, started_at: float) -> bytes:
    """`/metrics` before the supervisor exists (pre-start steps): what the instance knows, no worker yet."""
    out: list[dict[str, Any]] = []

    def family(name: str, kind: str, text: str, labels: list[str], samples: list[Sample]) -> None:
        out.append({"name": name, "type": kind, "help": text, "labels": labels, "samples": samples})

    _pool_families(family, 0, collections.Counter(), target)
    _instance_families(family, started_at)
    return await exposition({"families": out, "directory": None})


def route(render: Callable[[], Awaitable[bytes]]) -> Route:
    """`/metrics`, rendered by `render` at each scrape (the startup's, then the pool's)."""

    async def handler(_: Request) -> Response:
        try:
            body = await render()
        except (RuntimeError, OSError, TimeoutError) as exc:
            return Response.json(503, {"error": f"metrics unavailable: {exc}"})
        return Response(200, body, TEXT_FORMAT)

    return Route(handler)


async def exposition(request: dict[str, Any]) -> bytes:
    """Prometheus's text format for `request` (families and the app's directory), from the helper process."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", "corral.metrics_exposition",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(json.dumps(request).encode()), RENDER_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"the metrics helper exited with {process.returncode}: {last[0]}")
    return out


def _trim(readings: collections.deque[tuple[float, Figures]], now: float) -> None:
    while len(readings) > 1 and now - readings[1][0] >= WINDOW:
        readings.popleft()


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _histogram(figures: Figures) -> tuple[list[tuple[str, int]], float]:
    cumulative = 0
    buckets = []
    for bound, count in zip([*map(repr, BOUNDS), "+Inf"], figures.buckets, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return buckets, figures.latency_sum


def _listener_name(sock: socket.socket) -> str:
    try:
        address = sock.getsockname()
    except OSError:
        return "?"
    if isinstance(address, tuple):
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        return f"{host}:{address[1]}"
    return str(address)
