"""Decisions, as pure functions over plain data. The manager gathers facts, asks here, and acts.

Nothing in this module reads a clock, a file or a process: every input is an argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from corral.text import format_bytes

GIB = 1024**3
MIB = 1024**2


PROVING_TIME = 1.0  # seconds of readiness that prove a worker that has answered no request yet


@dataclass(frozen=True)
class Backoff:
    base: float = 0.1
    maximum: float = 30.0
    proving_time: float = PROVING_TIME


def proved(ready_for: float | None, answered: int, backoff: Backoff) -> bool:
    """A worker that has answered a request (any status), or stayed ready for the proving time, has shown that
    the app starts.

    Its death, whatever its age, is a crash of that worker (a bad request, a segfault, the OOM killer), not
    evidence that the app cannot start. `ready_for` is None when the worker never became ready; `answered` is
    the requests its scoreboard cell counts (the worker stamps it as it answers its first one).
    """
    return answered > 0 or (ready_for is not None and ready_for >= backoff.proving_time)


def failures_after_exit(previous_failures: int, ready_for: float | None, answered: int, backoff: Backoff) -> int:
    """A slot's count of failed starts in a row once its worker has died: 0 after a proven worker."""
    return 0 if proved(ready_for, answered, backoff) else previous_failures + 1


def restart_delay(consecutive_failures: int, backoff: Backoff) -> float:
    """Delay before restarting a slot after `consecutive_failures` failed starts in a row.

    No failed start, or the first one: at once (a crash while serving is replaced by a fork, and one early
    death is as likely a kill from outside as a bad start). Then `base`, doubling up to `maximum`.
    """
    if consecutive_failures <= 1:
        return 0.0
    delay: float = backoff.base * 2.0 ** (consecutive_failures - 2)
    return min(backoff.maximum, delay)


SPARE_WINDOW = 60.0  # seconds after a crash while serving during which spare workers are kept parked
BURST_WINDOW = 10.0  # seconds over which crashes while serving are counted to size the spares
CRASHES_PER_SPARE = 4  # one more spare for each this many crashes within BURST_WINDOW
MAX_SPARES = 8  # each holds a freshly forked worker's private memory (4 to 5 MiB)


def spares_wanted(now: float, serving_crashes: Sequence[float], workers: int) -> int:
    """Spare workers to keep parked, given when workers last crashed while serving (oldest first).

    The template promotes a spare at once in place of a worker that dies after answering a request, so a pool
    whose workers die on requests does not wait for a fork and a worker's setup on a busy host
    (worker/parking.py). One spare from the first crash until `SPARE_WINDOW` passes without one; while crashes
    come faster than a new spare can be forked and parked, the pool would still run dry, so one more for each
    `CRASHES_PER_SPARE` crashes within the last `BURST_WINDOW`, up to one spare per worker and `MAX_SPARES`. A
    pool that does not crash pays nothing.
    """
    if not serving_crashes or now - serving_crashes[-1] > SPARE_WINDOW:
        return 0
    burst = sum(1 for at in serving_crashes if now - at <= BURST_WINDOW)
    return min(max(1, workers), MAX_SPARES, 1 + burst // CRASHES_PER_SPARE)


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
    the latest time a worker was seen proven (alive or dead, having answered a request or stayed ready for the
    proving time): a pool
    that keeps proving workers can serve, however many die, so the count starts again after each proof.
    """
    recent = [t for t in failed_starts if now - t <= window and (last_proof is None or t > last_proof)]
    return len(recent) > limit


def is_hung(now: float, heartbeat: float, timeout: float, importing: bool = False) -> bool:
    """A worker whose event loop has not stamped its heartbeat for longer than `timeout` is hung.

    A worker still importing the app (`--no-preload`) has no event loop yet: only --startup-timeout bounds it.
    """
    return not importing and now - heartbeat > timeout


def hang_cause(blocked: float, timeout: float, request_thread: bool | None) -> str:
    """How the log and the events word a hang: a WSGI request thread stuck, the event loop blocked, or, when
    the worker left no stall to tell them apart, its silent heartbeat."""
    limit = f"--timeout {timeout:g}"
    if request_thread:
        return f"a request thread stuck for {blocked:.1f} s ({limit})"
    if request_thread is False:
        return f"its event loop hung (blocked {blocked:.1f} s, {limit})"
    return f"its heartbeat stopped for {blocked:.1f} s ({limit})"


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


# --- autoscaling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoscaleLimits:
    """`--autoscale MIN:MAX`, `--target-utilisation LOW:HIGH` (as fractions) and the pace of changes."""

    minimum: int
    maximum: int
    low: float
    high: float
    cooldown: float = 30.0  # seconds of low use after the last growth before the first step in
    grow_after: float = 2.0  # seconds of saturation (since the last change) before a step out

    @property
    def shrink_every(self) -> float:
        """Once a step in has happened, further steps in follow at this pace while use stays low."""
        return max(self.grow_after, self.cooldown / 8)


@dataclass(frozen=True)
class LoadSample:
    """One look at the pool, taken by the manager about every half second."""

    at: float  # monotonic seconds
    workers: int  # ready workers measured
    busy: float  # their mean utilisation (loop, threadpool or CPU, the largest: worker/busy.py), 0..1
    queued: int  # connections waiting in the listeners' accept queues
    cpu: float  # the instance's CPU use as a fraction of what it may use, 0..1
    cpus: float  # what it may use: the cgroup quota, else the CPUs it may run on
    cpu_wait: float = 0.0  # the workers' mean share of the time spent runnable but waiting for a CPU
    machine_cpu: float = 0.0  # the whole machine's CPU use (other work included), 0..1
    busiest: float = 0.0  # the busiest worker's utilisation, 0..1: keep-alive clients can load one worker alone

    @property
    def top(self) -> float:
        """The busiest worker's utilisation, never below the mean (a sample that did not tell it)."""
        return max(self.busy, self.busiest)


STARVED = 0.25  # workers waiting for a CPU this share of the time, with the machine's CPUs in use: they are taken


@dataclass(frozen=True)
class MemoryFigures:
    """What `plan_memory` needs, as last measured: the most private memory of a worker, the shared part, and
    what the pool may use in all."""

    private_per_worker: int
    shared: int
    available: int


@dataclass(frozen=True)
class ScaleDecision:
    target: int
    action: str  # grow, shrink, hold
    reason: str
    cpu_bound: bool = False


def parse_autoscale(autoscale: str, band: str, cooldown: float) -> AutoscaleLimits:
    minimum, maximum = parse_range(autoscale, "MIN:MAX")
    low, high = parse_range(band, "LOW:HIGH")
    return AutoscaleLimits(minimum, maximum, low / 100, high / 100, cooldown, min(2.0, max(0.5, cooldown / 4)))


def autoscale_start(workers: int | None, limits: AutoscaleLimits) -> int:
    """The starting size: `--workers` clamped to the range, else the minimum."""
    if workers is None:
        return limits.minimum
    return max(limits.minimum, min(limits.maximum, workers))


def memory_ceiling(limits: AutoscaleLimits, memory: MemoryFigures | None) -> tuple[int, str | None]:
    """The most workers the pool may reach: the range's maximum, lowered to what fits in memory."""
    if memory is None:
        return limits.maximum, None
    plan = plan_memory(limits.maximum, False, memory.private_per_worker, memory.shared, memory.available)
    if plan.workers >= limits.maximum:
        return limits.maximum, None
    return max(limits.minimum, plan.workers), plan.explanation


def utilisation(samples: Sequence[LoadSample]) -> float:
    return sum(s.busy for s in samples) / len(samples) if samples else 0.0


def busiest(samples: Sequence[LoadSample]) -> float:
    """The busiest worker's utilisation, averaged over the samples."""
    return sum(s.top for s in samples) / len(samples) if samples else 0.0


def peak_utilisation(
    samples: Sequence[LoadSample], span: float, measure: Callable[[Sequence[LoadSample]], float] = utilisation
) -> float:
    """The highest mean busy fraction (or other `measure`) over consecutive slices of `span` seconds: a burst in
    the window shows even when the mean over the whole window is low."""
    if not samples:
        return 0.0
    start, peak, chunk = samples[0].at, 0.0, list[LoadSample]()
    for sample in samples:
        if sample.at - start >= span and chunk:
            peak = max(peak, measure(chunk))
            start, chunk = sample.at, []
        chunk.append(sample)
    return max(peak, measure(chunk))


def cpu_phrase(cpu: float, cpus: float) -> str:
    return f"{cpu * 100:.0f} % of {cpus:g} CPU{'s' if cpus != 1 else ''}"


def autoscale_decision(
    samples: Sequence[LoadSample],
    current: int,
    limits: AutoscaleLimits,
    now: float,
    last_change: float,
    last_action: str,
    memory: MemoryFigures | None = None,
) -> ScaleDecision:
    """Grow, shrink or hold the pool, one worker at a time.

    Only samples taken since the last change count, so each step is judged on its own effect. Out: the workers
    have been saturated (mean busy at or above the band's top, or connections waiting in the accept queue in
    every sample) for `grow_after` seconds, the instance's CPU use is below the band's top and its workers do not
    wait for a CPU (`STARVED`) while the machine's CPU use is at the band's top (other work takes the CPUs): with the
    CPU used up, another worker only adds contention, so the pool holds and says it is CPU-bound. Waiting for a CPU
    while the machine has CPU to spare is mostly a worker's own threads contending with its loop (a busy
    threadpool), and does not hold the pool. In: mean busy has stayed
    below the band's bottom for `cooldown` seconds after a growth (`shrink_every` after a step in), nothing
    waited (in every slice of `grow_after` seconds, not only on average, so a burst in the window counts), and one
    worker fewer would still leave the pool below the band's middle, which keeps a steady load
    at either edge of the band from flapping. Never beyond memory: a growth the memory plan refuses is held,
    with its arithmetic; a pool whose workers outgrew it steps in.

    The busiest worker counts too: keep-alive clients stay with the worker that accepted them, so one worker can be
    saturated while the mean sits inside the band. Such a worker sheds clients to the others (`balance`); the
    pool also grows when it stays saturated with the mean past the band's middle (the others have little room
    left to take its clients), and never steps in while any worker is saturated.
    """
    ceiling, why_ceiling = memory_ceiling(limits, memory)
    if current < limits.minimum:
        return ScaleDecision(limits.minimum, "grow", f"below the minimum of {limits.minimum}")
    if current > ceiling:
        why = f"memory: {why_ceiling}" if why_ceiling else f"above the maximum of {limits.maximum}"
        return ScaleDecision(current - 1, "shrink", why)
    since = [s for s in samples if s.at > last_change and s.workers > 0]
    if not since:
        return ScaleDecision(current, "hold", "measuring")
    band = f"band {limits.low * 100:.0f}-{limits.high * 100:.0f} %"
    recent = [s for s in since if s.at >= now - limits.grow_after]
    covered = now - since[0].at >= limits.grow_after * 0.9
    busy = utilisation(recent)
    cpu = sum(s.cpu for s in recent) / len(recent) if recent else 0.0
    waiting = sum(s.cpu_wait for s in recent) / len(recent) if recent else 0.0
    machine = sum(s.machine_cpu for s in recent) / len(recent) if recent else 0.0
    cpus = since[-1].cpus
    queued = bool(recent) and all(s.queued > 0 for s in recent)
    top = busiest(recent)
    middle = (limits.low + limits.high) / 2
    one_saturated = top >= limits.high and busy >= middle
    saturated = covered and bool(recent) and (busy >= limits.high or queued or one_saturated)
    if saturated:
        pressure = f"workers {busy * 100:.0f} % busy ({band})" + (", connections waiting" if queued else "")
        if busy < limits.high and not queued:
            pressure += f", the busiest {top * 100:.0f} %"
        if cpu >= limits.high:
            return ScaleDecision(
                current, "hold", f"CPU-bound at {cpu_phrase(cpu, cpus)}: add machines or CPUs", cpu_bound=True
            )
        if waiting >= STARVED and machine >= limits.high:
            return ScaleDecision(
                current, "hold",
                f"CPU-bound at {cpu_phrase(max(cpu, machine), cpus)}: add machines or CPUs (workers wait for a CPU "
                f"{waiting * 100:.0f} % of the time; other work takes the rest)",
                cpu_bound=True,
            )
        if current >= limits.maximum:
            return ScaleDecision(current, "hold", f"{pressure}; at the maximum of {limits.maximum}")
        if memory is not None:
            plan = plan_memory(current + 1, True, memory.private_per_worker, memory.shared, memory.available)
            if not plan.fits:
                return ScaleDecision(current, "hold", f"{pressure}; growth refused by memory: {plan.explanation}")
        return ScaleDecision(current + 1, "grow", f"{pressure}, CPU {cpu_phrase(cpu, cpus)}")
    wait = limits.cooldown if last_action != "shrink" else limits.shrink_every
    if current > limits.minimum and now - last_change >= wait and now - since[0].at >= wait * 0.9:
        window = [s for s in since if s.at >= now - wait]
        idle = peak_utilisation(window, limits.grow_after)
        after = idle * current / (current - 1)
        one_busy = peak_utilisation(window, limits.grow_after, busiest) >= limits.high
        if idle < limits.low and after < middle and not one_busy and not any(s.queued for s in window):
            return ScaleDecision(
                current - 1, "shrink", f"workers {idle * 100:.0f} % busy for {wait:g} s ({band})"
            )
    tail = f", the busiest {top * 100:.0f} %" if top >= limits.high and busy < limits.high else ""
    return ScaleDecision(current, "hold", f"workers {busy * 100:.0f} % busy ({band}){tail}")
