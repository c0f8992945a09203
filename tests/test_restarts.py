"""The restart book (manager/restarts.py): bookkeeping over policy.py's rules, no processes."""

from __future__ import annotations

from corral.manager.policy import Backoff
from corral.manager.restarts import Restarts


def book(limit: int = 5) -> Restarts:
    return Restarts(Backoff(base=0.1, maximum=30.0, proving_time=1.0), limit, 60.0)


def test_crashes_while_serving_never_make_a_crash_loop() -> None:
    restarts = book()
    for second in range(100):
        verdict = restarts.worker_died(1 + second % 4, 2.0, 0, float(second))
        assert verdict.crash and verdict.delay == 0.0
    assert restarts.crashes == 100 and restarts.failed == 0
    assert not restarts.crash_loop(100.0)
    assert restarts.waiting(range(1, 5), 100.0) == []


def test_failed_starts_back_off_and_end_in_a_crash_loop() -> None:
    restarts = book(limit=3)
    delays = [restarts.worker_died(1, 0.3, 0, 10.0 + i).delay for i in range(4)]
    assert delays == [0.0, 0.1, 0.2, 0.4]
    assert restarts.waiting(range(1, 3), 13.1) == [1]
    (waiting,) = restarts.status(range(1, 3), 13.1)
    assert waiting["id"] == 1 and waiting["failures"] == 4 and 0 < waiting["seconds"] <= 0.4
    assert restarts.crash_loop(13.0)


def test_a_worker_alive_past_the_proving_time_keeps_the_pool_out_of_a_crash_loop() -> None:
    restarts = book(limit=2)
    for i in range(3):
        restarts.worker_died(2, None, 0, 20.0 + i)
    restarts.saw_ready([(10.0, 0)], 22.5)  # slot 1 ready since 10 s: proven, alive now
    assert not restarts.crash_loop(22.5)
    restarts.saw_ready([(22.4, 0)], 22.6)  # a worker ready for 0.2 s proves nothing
    restarts.worker_died(2, None, 0, 23.0)
    restarts.worker_died(2, None, 0, 24.0)
    assert not restarts.crash_loop(24.0)
    restarts.worker_died(2, None, 0, 25.0)
    assert restarts.crash_loop(25.0)


def test_a_crash_after_failed_starts_resets_the_slot() -> None:
    restarts = book()
    restarts.worker_died(3, None, 0, 1.0)
    restarts.worker_died(3, None, 0, 2.0)
    verdict = restarts.worker_died(3, 5.0, 0, 10.0)
    assert verdict.crash and verdict.failures == 0 and verdict.delay == 0.0
    assert restarts.slot(3).restarts == 3


def test_workers_that_answered_then_died_young_never_make_a_crash_loop() -> None:
    """1 request in 50 kills its worker: replacements answer a few requests and die within a second of ready."""
    restarts = book(limit=5)
    for i in range(200):
        verdict = restarts.worker_died(1 + i % 4, 0.05, 49, 10.0 + i * 0.01)
        assert verdict.crash and verdict.delay == 0.0 and verdict.failures == 0
    assert restarts.crashes == 200 and restarts.failed == 0
    assert not restarts.crash_loop(12.0)
    assert restarts.waiting(range(1, 5), 12.0) == []


def test_a_serving_worker_alive_for_less_than_the_proving_time_is_proof() -> None:
    restarts = book(limit=2)
    for i in range(3):
        restarts.worker_died(2, 0.2, 0, 20.0 + i)  # ready, answered nothing: failed starts
    restarts.saw_ready([(22.4, 0)], 22.5)  # young, nothing answered: no proof
    assert restarts.crash_loop(22.5)
    restarts.saw_ready([(22.4, 3)], 22.6)  # young, but it has answered: proof
    assert not restarts.crash_loop(22.6)
