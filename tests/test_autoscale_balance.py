"""The balance of keep-alive clients over the pool (`manager/balance.py`), without processes: which workers let
clients go, how many, and that repeated orders settle instead of sending clients back and forth."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from corral.manager.balance import SETTLE, WINDOW, Look, Shed, shed_plan

TICK = 0.5


def steady(busy: float, connections: int, since: float = 0.0, until: float = 10.0) -> list[Look]:
    """A worker seen every half second from `since` to `until` with the same figures."""
    looks, at = [], since
    while at <= until:
        looks.append(Look(at, busy, connections))
        at += TICK
    return looks


def test_a_grown_pool_the_busy_worker_lets_its_share_above_the_mean_go() -> None:
    # The case: every keep-alive client on the first worker; the newcomer, ready for a second, is idle.
    looks = {0: steady(1.0, 32), 1: steady(0.0, 0, since=9.0)}
    assert shed_plan(looks, 10.0, last_order=-1000) == [Shed(0, 16, "100 % busy, the others 0 %")]
    # With four workers, it keeps a quarter.
    looks = {0: steady(1.0, 32), 1: steady(0.0, 0, since=9.5), 2: steady(0.1, 0), 3: steady(0.0, 0)}
    assert [(s.cell, s.count) for s in shed_plan(looks, 10.0, -1000)] == [(0, 24)]


def test_a_balanced_pool_sheds_nothing() -> None:
    assert shed_plan({0: steady(1.0, 16), 1: steady(0.95, 16)}, 10.0, -1000) == []
    assert shed_plan({0: steady(0.4, 10), 1: steady(0.3, 9), 2: steady(0.35, 11)}, 10.0, -1000) == []


def test_one_worker_or_one_client_has_nothing_to_spread() -> None:
    assert shed_plan({0: steady(1.0, 32)}, 10.0, -1000) == []
    assert shed_plan({}, 10.0, -1000) == []
    # One client keeps one worker busy: it cannot be split.
    assert shed_plan({0: steady(1.0, 1), 1: steady(0.0, 0)}, 10.0, -1000) == []


def test_far_above_must_last_the_window() -> None:
    # Busy only for the last second: a burst, not a worker that stays far above.
    burst = [*steady(0.2, 8, 0.0, 9.0), *steady(1.0, 8, 9.5, 10.0)]
    assert shed_plan({0: burst, 1: steady(0.2, 0)}, 10.0, -1000) == []
    # Seen for less than most of the window (a worker just ready): not judged yet.
    assert shed_plan({0: steady(1.0, 8, since=9.0), 1: steady(0.0, 0)}, 10.0, -1000) == []
    assert shed_plan({0: steady(1.0, 8, since=10.0 - WINDOW), 1: steady(0.0, 0)}, 10.0, -1000) != []


def test_an_order_is_judged_by_its_effect() -> None:
    looks = {0: steady(1.0, 32), 1: steady(0.0, 0)}
    assert shed_plan(looks, 10.0, last_order=9.0) == [], "the looks since the order do not cover the window yet"
    ready_again = 9.0 + SETTLE + WINDOW
    assert shed_plan({0: steady(1.0, 32, until=ready_again), 1: steady(0.0, 0, until=ready_again)},
                     ready_again, last_order=9.0) != []


def test_a_saturated_worker_with_twice_the_others_connections_sheds_though_they_are_busy() -> None:
    # The newcomer's report: 57 requests on one worker, 23 on the other, both busy.
    plan = shed_plan({0: steady(1.0, 57), 1: steady(0.95, 23)}, 10.0, -1000)
    assert plan == [Shed(0, 17, "100 % busy with 57 connections, the others 23 on average")]
    # Less than twice: each worker's clients wait about as long; nothing moves.
    assert shed_plan({0: steady(1.0, 30), 1: steady(1.0, 16)}, 10.0, -1000) == []
    # A worker with many connections but room to spare is not saturated: idle keep-alive connections.
    assert shed_plan({0: steady(0.5, 57), 1: steady(0.45, 5)}, 10.0, -1000) == []


def simulate(
    busy_of: Callable[[int], float], start: list[int], back: float = 0.0, rounds: int = 40
) -> tuple[list[int], int]:
    """Workers seen every half second; each order is carried out at once, and the clients let go reconnect
    through the accept queue: the share `back` to the worker that let them go (it returned to its loop first),
    the others one by one to the worker with the fewest connections (an idle worker, waiting in its poll, wakes
    first). Returns the connections per worker at the end and the number of orders."""
    connections = list(start)
    looks: dict[int, list[Look]] = {cell: [] for cell in range(len(connections))}
    last_order, orders, now = -1000.0, 0, 0.0
    for _ in range(int(rounds / TICK)):
        for cell, count in enumerate(connections):
            looks[cell].append(Look(now, busy_of(count), count))
        for shed in shed_plan(looks, now, last_order):
            last_order, orders = now, orders + 1
            returning = round(shed.count * back)
            connections[shed.cell] -= shed.count - returning
            for _ in range(shed.count - returning):
                fewest = min((cell for cell in range(len(connections)) if cell != shed.cell),
                             key=lambda cell: connections[cell])
                connections[fewest] += 1
        now += TICK
    return connections, orders


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_a_cpu_bound_pool_settles_with_every_worker_serving(workers: int) -> None:
    # A CPU-bound endpoint under closed-loop clients: any worker with a client is fully busy.
    final, orders = simulate(lambda count: 1.0 if count else 0.0, [32] + [0] * (workers - 1))
    assert sum(final) == 32 and max(final) - min(final) <= 1, final
    assert orders == 1


def test_clients_that_come_back_to_the_busy_worker_are_let_go_again_until_it_holds_its_share() -> None:
    # Half the clients let go reconnect to the same worker: a few more orders, each smaller.
    final, orders = simulate(lambda count: 1.0 if count else 0.0, [32, 0], back=0.5)
    assert final[0] < 2 * final[1], final
    assert orders <= 3


def test_a_threadpool_pool_settles_without_sending_clients_back_and_forth() -> None:
    # Four threads a worker: its utilisation is its share of them in use.
    final, orders = simulate(lambda count: min(1.0, count / 4), [8, 0])
    assert (final, orders) == ([4, 4], 1)
    final, orders = simulate(lambda count: min(1.0, count / 4), [9, 1, 0], back=0.3)
    assert max(final) - min(final) <= 2 and orders <= 3, (final, orders)
