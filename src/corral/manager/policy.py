"""Decisions, as pure functions over plain data. The manager gathers facts, asks here, and acts.

Nothing in this module reads a clock, a file or a process: every input is an argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

GIB = 1024**3
MIB = 1024**2


PROVING_TIME = 1.0  # seconds a worker must stay ready before its death counts as a crash, not a failed start


@dataclass(frozen=True)
class Backoff:
    base: float = 0.1
    maximum: float = 30.0
    proving_time: float = PROVING_TIME


def proved(ready_for: float | None, backoff: Backoff) -> bool:
    """A worker that stayed ready for the proving time has shown the app can serve.

    Its death is a crash of that worker (a bad request, a segfault, the OOM killer), not evidence that the
    app cannot start. `ready_for` is None when the worker never became ready.
    """
    return ready_for is not None and ready_for >= backoff.proving_time


def failures_after_exit(previous_failures: int, ready_for: float | None, backoff: Backoff) -> int:
    """A slot's count of failed starts in a row once its worker has died: 0 after a proven worker."""
    return 0 if proved(ready_for, backoff) else previous_failures + 1


def restart_delay(consecutive_failures: int, backoff: Backoff) -> float:
    """Delay before restarting a slot after `consecutive_failures` failed starts in a row.

    No failed start, or the first one: at once (a crash while serving is replaced by a fork, and one early
    death is as likely a kill from outside as a bad start). Then `base`, doubling up to `maximum`.
    """
    if consecutive_failures <= 1:
        return 0.0
    delay: float = backoff.base * 2.0 ** (consecutive_failures - 2)
    return min(backoff.maximum, delay)


def start_despite_backoff(ready_or_starting: int, waiting_slots: int) -> bool:
    """Backoff never leaves the pool at zero: with no worker ready or starting, one waiting slot starts now.

    An app that truly cannot start then fails fast, and the crash limit ends it.
    """
    return ready_or_starting == 0 and waiting_slots > 0


def is_crash_loop(
    failed_starts: Sequence[float], now: float, limit: int, window: float, last_proof: float | None = None
) -> bool:
    """More than `limit` failed starts within the last `window` seconds, none of them followed by proof.

    A failed start is a worker that died before proving itself, or a template that died. `last_proof` is
    the latest time a worker was seen proven (alive, or dead of a crash, after the proving time): a pool
    that keeps proving workers can serve, however many die, so the count starts again after each proof.
    """
    recent = [t for t in failed_starts if now - t <= window and (last_proof is None or t > last_proof)]
    return len(recent) > limit


def is_hung(now: float, heartbeat: float, timeout: float, importing: bool = False) -> bool:
    """A worker whose event loop has not stamped its heartbeat for longer than `timeout` is hung.

    A worker still importing the app (`--no-preload`) has no event loop yet: only --startup-timeout bounds it.
    """
    return not importing and now - heartbeat > timeout


def heartbeat_interval(timeout: float) -> float:
    """How often workers stamp: often enough that a healthy loop never looks late."""
    return max(0.05, min(1.0, timeout / 5))


def recycle_reason(
    requests: int,
    request_limit: int | None,
    memory_uss: int | None,
    memory_limit: int | None,
) -> str | None:
    """Why a worker should be replaced now, or None."""
    if request_limit is not None and requests >= request_limit:
        return f"served {requests} requests (limit {request_limit})"
    if memory_limit is not None and memory_uss is not None and memory_uss > memory_limit:
        return f"private memory {format_bytes(memory_uss)} above --max-memory {format_bytes(memory_limit)}"
    return None


def memory_check(rss: int | None, memory_limit: int | None) -> bool:
    """Whether to measure a worker's private memory (USS, a walk of its page map) now.

    RSS, one read of /proc/PID/statm, bounds USS from above: below the limit there is nothing to measure.
    """
    return memory_limit is not None and rss is not None and rss > memory_limit


KILL_FACTOR = 1.5


def memory_kill(memory_uss: int | None, memory_limit: int | None) -> bool:
    """A worker this far above --max-memory is killed, not drained: a fast leak would overshoot while its
    replacement starts and its requests finish."""
    return memory_limit is not None and memory_uss is not None and memory_uss > KILL_FACTOR * memory_limit


def request_limit(max_requests: int | None, jitter: int, draw: float) -> int | None:
    """A worker's own request limit; `draw` in [0, 1) spreads recycles so workers do not restart together."""
    if max_requests is None:
        return None
    return max_requests + int(draw * (jitter + 1))


def auto_workers(cpu_count: int, cpu_quota: float | None) -> int:
    """`--workers auto`: the cgroup's CPU quota when set (containers), else the CPUs we may run on."""
    if cpu_quota is not None and cpu_quota > 0:
        return max(1, min(cpu_count, math.ceil(cpu_quota)))
    return max(1, cpu_count)


def parse_scale(text: str, current: int) -> int:
    """'N', '+K' or '-K' against the current target; raises ValueError on anything else."""
    text = text.strip()
    if text[:1] in "+-" and text[1:].isdigit():
        target = current + int(text)
    elif text.isdigit():
        target = int(text)
    else:
        raise ValueError(f"expected N, +K or -K, got {text!r}")
    if target < 1:
        raise ValueError(f"at least one worker is needed (asked for {target})")
    return target


def parse_range(text: str, example: str) -> tuple[int, int]:
    """'A:B' as two integers (`--autoscale 1:8`, `--target-utilisation 50:90`); raises ValueError."""
    low, sep, high = str(text).strip().partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"expected {example}, got {text!r}")
    return int(low), int(high)


@dataclass(frozen=True)
class MemoryPlan:
    workers: int
    fits: bool
    explanation: str


def plan_memory(
    wanted: int,
    explicit: bool,
    private_per_worker: int,
    shared: int,
    available: int,
    margin: float = 0.1,
) -> MemoryPlan:
    """How many workers fit in the memory budget.

    `available` is what the pool may use in all (free memory plus what the pool holds now, or the cgroup's
    limit when lower); `margin` is kept back. An explicit count that does not fit is refused with the
    arithmetic; `auto` is lowered to what fits (at least one).
    """
    budget = int(available * (1 - margin))
    need = wanted * private_per_worker + shared
    arithmetic = (
        f"{wanted} workers × {format_bytes(private_per_worker)} private + {format_bytes(shared)} shared"  # noqa: RUF001
    )
    if need <= budget:
        return MemoryPlan(wanted, True, f"{arithmetic} ≤ {format_bytes(budget)} available")
    if explicit:
        return MemoryPlan(wanted, False, f"{arithmetic} > {format_bytes(budget)} available")
    fitting = max(1, (budget - shared) // max(1, private_per_worker))
    return MemoryPlan(
        int(min(wanted, fitting)), True, f"{arithmetic} > {format_bytes(budget)} available: using {fitting}"
    )


def format_bytes(size: int) -> str:
    if size >= GIB:
        return f"{size / GIB:.1f} GiB"
    if size >= MIB:
        return f"{size / MIB:.0f} MiB"
    return f"{size / 1024:.0f} KiB"
