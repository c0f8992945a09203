"""Unit tests of the manager's pure decisions (no processes, no clocks)."""

from __future__ import annotations

import pytest

from corral.heartbeat import TICK, heartbeat_interval
from corral.manager import policy
from corral.manager.policy import GIB, MIB, Backoff
from corral.text import format_bytes

TIMES = "\N{MULTIPLICATION SIGN}"

# --- restarts: a crash while serving, or a failed start -------------------------------------------


def test_a_worker_is_proven_once_ready_for_the_proving_time() -> None:
    backoff = Backoff(proving_time=1.0)
    assert not policy.proved(None, 0, backoff)
    assert not policy.proved(0.3, 0, backoff)
    assert policy.proved(1.0, 0, backoff)
    assert policy.proved(3600.0, 0, backoff)
    assert Backoff().proving_time == policy.PROVING_TIME == 1.0


def test_a_worker_that_answered_a_request_is_proven_whatever_its_age() -> None:
    backoff = Backoff(proving_time=1.0)
    assert policy.proved(0.01, 1, backoff)
    assert policy.proved(0.0, 49, backoff)
    assert policy.proved(None, 1, backoff)  # answered, then died before the manager saw its ready message
    assert policy.failures_after_exit(4, 0.05, 1, backoff) == 0
    assert policy.failures_after_exit(4, 0.05, 0, backoff) == 5


def test_a_crash_while_serving_is_replaced_at_once_whatever_came_before() -> None:
    backoff = Backoff()
    for previous in (0, 1, 7, 100):
        for ready_for, answered in ((5.0, 0), (0.05, 3), (5.0, 1000)):
            failures = policy.failures_after_exit(previous, ready_for, answered, backoff)
            assert failures == 0
            assert policy.restart_delay(failures, backoff) == 0.0


def test_failed_starts_in_a_row_back_off_after_the_first() -> None:
    backoff = Backoff(base=0.1, maximum=30.0)
    failures, delays = 0, []
    for _ in range(12):
        failures = policy.failures_after_exit(failures, None if failures % 2 else 0.5, 0, backoff)
        delays.append(policy.restart_delay(failures, backoff))
    assert failures == 12
    assert delays[:6] == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.8, 1.6])
    assert delays[-1] == 30.0 and delays == sorted(delays)


def test_restart_delay_respects_a_small_maximum_and_no_failures() -> None:
    assert policy.restart_delay(6, Backoff(base=1.0, maximum=3.0)) == 3.0
    assert policy.restart_delay(0, Backoff()) == 0.0
    assert policy.restart_delay(-3, Backoff()) == 0.0


def test_a_proven_worker_resets_its_slot_backoff() -> None:
    backoff = Backoff()
    assert policy.failures_after_exit(9, 1.0, 0, backoff) == 0
    assert policy.restart_delay(policy.failures_after_exit(0, None, 0, backoff), backoff) == 0.0


def test_a_spare_is_kept_only_while_workers_crash_while_serving() -> None:
    assert policy.spares_wanted(100.0, [], 4) == 0  # no crash yet: no spare, no memory spent
    assert policy.spares_wanted(100.0, [99.0], 4) == 1
    assert policy.spares_wanted(100.0, [100.0 - policy.SPARE_WINDOW], 4) == 1
    assert policy.spares_wanted(100.0, [99.0 - policy.SPARE_WINDOW], 4) == 0  # crashes stopped: the spare goes
    assert policy.spares_wanted(100.0, [10.0, 20.0, 30.0, 50.0], 4) == 1  # now and then: one is enough


def test_spares_grow_with_a_burst_of_crashes_up_to_one_per_worker() -> None:
    per = policy.CRASHES_PER_SPARE
    burst = [100.0 - i * policy.BURST_WINDOW / (3 * per) for i in range(3 * per)][::-1]  # 3 times `per`, oldest first
    assert policy.spares_wanted(100.0, burst[: per - 1], 8) == 1
    assert policy.spares_wanted(100.0, burst[:per], 8) == 2
    assert policy.spares_wanted(100.0, burst, 8) == 4
    assert policy.spares_wanted(100.0, burst, 2) == 2  # never more spares than workers
    assert policy.spares_wanted(100.0, burst * 50, 0) == 1  # a pool scaled to 0 workers still gets one
    assert policy.spares_wanted(100.0, burst * 50, 64) == policy.MAX_SPARES  # their memory is bounded
    later = 100.0 + policy.BURST_WINDOW + 1.0
    assert policy.spares_wanted(later, burst, 8) == 1  # the burst is over: back to one while crashes linger


def test_backoff_never_leaves_the_pool_empty() -> None:
    assert policy.start_despite_backoff(ready_or_starting=0, waiting_slots=3)
    assert not policy.start_despite_backoff(ready_or_starting=1, waiting_slots=3)
    assert not policy.start_despite_backoff(ready_or_starting=0, waiting_slots=0)


# --- crash loop: failed starts without proof -----------------------------------------------------


def test_crash_loop_needs_more_than_limit_failed_starts() -> None:
    now = 100.0
    five = [91.0, 93.0, 95.0, 97.0, 99.0]
    assert not policy.is_crash_loop(five, now, limit=5, window=60.0)
    assert policy.is_crash_loop([*five, 100.0], now, limit=5, window=60.0)


def test_crash_loop_only_counts_the_window() -> None:
    now = 1000.0
    old = [900.0, 901.0, 902.0, 903.0, 904.0, 905.0]
    recent = [990.0, 995.0]
    assert not policy.is_crash_loop(old + recent, now, limit=5, window=60.0)
    # The window's edge counts as inside.
    assert policy.is_crash_loop([940.0] * 6, now, limit=5, window=60.0)
    assert not policy.is_crash_loop([939.9] * 6, now, limit=5, window=60.0)


def test_a_proof_starts_the_count_again() -> None:
    starts = [90.0, 91.0, 92.0, 93.0, 94.0, 95.0, 96.0]
    assert policy.is_crash_loop(starts, 100.0, limit=5, window=60.0, last_proof=None)
    assert policy.is_crash_loop(starts, 100.0, limit=5, window=60.0, last_proof=80.0)
    assert not policy.is_crash_loop(starts, 100.0, limit=5, window=60.0, last_proof=92.5)
    # A proof at the same instant as a failed start covers it.
    assert not policy.is_crash_loop(starts, 100.0, limit=5, window=60.0, last_proof=96.0)


def test_crash_loop_with_no_failed_starts() -> None:
    assert not policy.is_crash_loop([], 10.0, limit=1, window=60.0)


# --- memory checks -------------------------------------------------------------------------------


def test_memory_is_measured_only_when_rss_passes_the_limit() -> None:
    assert not policy.memory_check(300 * MIB, None)
    assert not policy.memory_check(None, 200 * MIB)
    assert not policy.memory_check(200 * MIB, 200 * MIB)
    assert policy.memory_check(201 * MIB, 200 * MIB)


def test_a_worker_far_above_the_limit_is_killed() -> None:
    limit = 200 * MIB
    assert not policy.memory_kill(250 * MIB, limit)
    assert not policy.memory_kill(300 * MIB, limit)
    assert policy.memory_kill(301 * MIB, limit)
    assert not policy.memory_kill(None, limit)
    assert not policy.memory_kill(10 * GIB, None)


# --- hang detection -------------------------------------------------------------------------------


def test_hung_only_after_the_timeout_has_passed() -> None:
    assert not policy.is_hung(now=130.0, heartbeat=100.0, timeout=30.0)
    assert policy.is_hung(now=130.1, heartbeat=100.0, timeout=30.0)
    assert not policy.is_hung(now=100.0, heartbeat=100.0, timeout=0.5)


def test_a_hang_is_worded_by_what_is_stuck() -> None:
    """A WSGI request thread stuck is not an event loop that hung; when the worker left no stall, neither."""
    assert policy.hang_cause(31.24, 30.0, True) == "a request thread stuck for 31.2 s (--timeout 30)"
    assert policy.hang_cause(2.5, 2.0, False) == "its event loop hung (blocked 2.5 s, --timeout 2)"
    neutral = policy.hang_cause(2.5, 2.0, None)
    assert neutral == "its heartbeat stopped for 2.5 s (--timeout 2)"
    assert "event loop" not in neutral and "thread" not in neutral


def test_a_worker_importing_the_app_is_not_hung() -> None:
    """--no-preload: the import runs before any event loop; --startup-timeout bounds it, not --timeout."""
    assert not policy.is_hung(now=1000.0, heartbeat=100.0, timeout=30.0, importing=True)


@pytest.mark.parametrize(
    ("timeout", "interval"),
    [(30.0, 1.0), (5.0, 1.0), (2.0, 0.4), (0.5, 0.1), (0.1, 0.05), (0.01, 0.05)],
)
def test_heartbeat_interval_is_a_fraction_of_the_timeout_within_bounds(
    timeout: float, interval: float
) -> None:
    assert heartbeat_interval(timeout) == pytest.approx(interval)


@pytest.mark.parametrize("request_limit", [False, True])
@pytest.mark.parametrize("timeout", [0.3, 1.0, 2.5, 30.0, 600.0])
def test_a_healthy_loop_stamps_several_times_per_timeout(timeout: float, request_limit: bool) -> None:
    """A loop that stamps on schedule is never seen as hung, even one interval late."""
    interval = heartbeat_interval(timeout, request_limit)
    assert 2 * interval < timeout
    assert not policy.is_hung(now=2 * interval, heartbeat=0.0, timeout=timeout)


@pytest.mark.parametrize("timeout", [0.01, 2.0, 30.0, 600.0])
def test_with_a_request_limit_workers_stamp_every_manager_tick(timeout: float) -> None:
    """The manager reads the request count from the stamp, every tick: a busy worker is recycled close to its
    limit, not a second past it."""
    assert heartbeat_interval(timeout, request_limit=True) == TICK


# --- recycling ------------------------------------------------------------------------------------


def test_no_recycling_without_limits() -> None:
    assert policy.recycle_reason(10**9, None, 100 * GIB, None) is None


def test_recycle_when_the_request_limit_is_reached() -> None:
    assert policy.recycle_reason(99, 100, None, None) is None
    assert policy.recycle_reason(100, 100, None, None) == "served 100 requests (limit 100)"
    assert policy.recycle_reason(150, 100, None, None) == "served 150 requests (limit 100)"


def test_recycle_when_private_memory_passes_the_limit() -> None:
    limit = 512 * MIB
    assert policy.recycle_reason(0, None, limit, limit) is None
    assert policy.recycle_reason(0, None, None, limit) is None
    reason = policy.recycle_reason(0, None, 600 * MIB, limit)
    assert reason == "private memory 600 MiB above --max-memory 512 MiB"


def test_request_limit_is_reported_before_memory() -> None:
    reason = policy.recycle_reason(10, 10, 2 * GIB, GIB)
    assert reason is not None and reason.startswith("served 10 requests")


def test_request_limit_without_max_requests() -> None:
    assert policy.request_limit(None, 50, 0.7) is None


def test_request_limit_adds_jitter_from_the_draw() -> None:
    assert policy.request_limit(1000, 0, 0.99) == 1000
    assert policy.request_limit(1000, 10, 0.0) == 1000
    assert policy.request_limit(1000, 10, 0.5) == 1005
    assert policy.request_limit(1000, 10, 0.999999) == 1010


def test_request_limits_spread_over_the_whole_jitter_range() -> None:
    draws = [i / 1000 for i in range(1000)]
    limits = {policy.request_limit(100, 9, draw) for draw in draws}
    assert limits == set(range(100, 110))


# --- auto workers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpus", "quota", "workers"),
    [
        (8, None, 8),
        (1, None, 1),
        (0, None, 1),
        (8, 2.0, 2),
        (8, 1.5, 2),
        (8, 0.25, 1),
        (4, 16.0, 4),
        (8, 0.0, 8),
        (8, -1.0, 8),
    ],
)
def test_auto_workers(cpus: int, quota: float | None, workers: int) -> None:
    assert policy.auto_workers(cpus, quota) == workers


# --- scale ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "current", "target"),
    [("4", 2, 4), ("+2", 3, 5), ("-1", 3, 2), (" 6 ", 1, 6), ("+0", 3, 3), ("12", 12, 12)],
)
def test_parse_scale(text: str, current: int, target: int) -> None:
    assert policy.parse_scale(text, current) == target


@pytest.mark.parametrize("text", ["", "+", "-", "four", "2.5", "+-1", "--1", "+ 2", "3x", "1e3"])
def test_parse_scale_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="expected N, \\+K or -K"):
        policy.parse_scale(text, 3)


@pytest.mark.parametrize(("text", "current"), [("0", 3), ("-3", 3), ("-5", 2)])
def test_parse_scale_keeps_at_least_one_worker(text: str, current: int) -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        policy.parse_scale(text, current)


# --- memory plan ----------------------------------------------------------------------------------


def test_memory_plan_that_fits_keeps_the_count_and_shows_the_arithmetic() -> None:
    plan = policy.plan_memory(4, True, 100 * MIB, 200 * MIB, 1000 * MIB)
    assert plan.workers == 4
    assert plan.fits
    assert plan.explanation == f"4 workers {TIMES} 100 MiB private + 200 MiB shared ≤ 900 MiB available"


def test_memory_plan_refuses_an_explicit_count_that_does_not_fit() -> None:
    plan = policy.plan_memory(16, True, 100 * MIB, 200 * MIB, 1000 * MIB)
    assert plan.workers == 16
    assert not plan.fits
    assert plan.explanation == f"16 workers {TIMES} 100 MiB private + 200 MiB shared > 900 MiB available"


def test_memory_plan_lowers_auto_to_what_fits() -> None:
    plan = policy.plan_memory(16, False, 100 * MIB, 200 * MIB, 1000 * MIB)
    assert plan.fits
    assert plan.workers == 7  # (900 - 200) // 100
    assert (
        plan.explanation
        == f"16 workers {TIMES} 100 MiB private + 200 MiB shared > 900 MiB available: using 7"
    )
    assert plan.workers * 100 * MIB + 200 * MIB <= 900 * MIB


def test_memory_plan_auto_keeps_at_least_one_worker() -> None:
    plan = policy.plan_memory(8, False, 600 * MIB, 800 * MIB, 1000 * MIB)
    assert plan.workers == 1
    assert plan.explanation.endswith("using 1")


def test_memory_plan_boundary_is_inclusive_and_keeps_the_margin() -> None:
    available = 1000 * MIB
    budget = int(available * 0.9)
    exact = policy.plan_memory(2, True, (budget - 100 * MIB) // 2, 100 * MIB, available)
    assert exact.fits
    over = policy.plan_memory(2, True, (budget - 100 * MIB) // 2 + 1, 100 * MIB, available)
    assert not over.fits
    no_margin = policy.plan_memory(2, True, (budget - 100 * MIB) // 2 + 1, 100 * MIB, available, margin=0.0)
    assert no_margin.fits


def test_memory_plan_with_unknown_private_memory() -> None:
    plan = policy.plan_memory(3, False, 0, 100 * MIB, 1000 * MIB)
    assert plan.fits and plan.workers == 3


def test_memory_plan_uses_gib_for_large_sizes() -> None:
    plan = policy.plan_memory(2, True, 3 * GIB, GIB // 2, 64 * GIB)
    assert plan.explanation == f"2 workers {TIMES} 3.0 GiB private + 512 MiB shared ≤ 57.6 GiB available"


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (2048, "2 KiB"),
        (5 * MIB, "5 MiB"),
        (GIB, "1.0 GiB"),
        (int(1.5 * GIB), "1.5 GiB"),
        (MIB - 1, "1024 KiB"),
    ],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text
