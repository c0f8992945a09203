"""Scaling: the pool brought to its target, and the memory plan that bounds the target.

The target changes by `corral scale`, TTIN/TTOU or the autoscaler's decision (`Supervisor.scale`); each tick,
`reconcile` forks the slots up to the target that have no worker (unless they wait in backoff) and drains those
above it; `tend_spare` keeps the spare workers that replace crashed ones at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from corral.manager import policy, resources
from corral.manager.generation import Generation
from corral.manager.pool import SPARE_SLOT, Pool, Worker
from corral.manager.restarts import Restarts
from corral.scoreboard import CELLS

if TYPE_CHECKING:
    from corral.manager.autoscaler import AutoscaleDecision, Autoscaler
    from corral.shed_orders import ShedOrders

log = logging.getLogger("corral")


def carry_out(
    autoscaler: Autoscaler,
    decision: AutoscaleDecision,
    now: float,
    target: int,
    scale: Callable[..., str],
    shed_orders: ShedOrders | None,
) -> None:
    """The autoscaler's decision carried out: a resize through `scale` (whose memory check may still refuse
    it), and orders to workers to let some keep-alive clients go (in shared memory, read with their heartbeat)."""
    if decision.target != target:
        try:
            scale(decision.target, by_autoscaler=True)
        except ValueError as exc:  # the memory check here disagreed: hold
            autoscaler.resized(now, target, refused=str(exc))
        else:
            autoscaler.resized(now, target)
    if shed_orders is not None:
        for order in decision.shed:
            shed_orders.order(order.cell, order.count)


def reconcile(
    pool: Pool,
    book: Restarts,
    target: int,
    current: Generation,
    now: float,
    fork: Callable[[int, Generation], Worker],
) -> None:
    for slot_number in range(1, target + 1):
        active = [
            w for w in pool.workers.values()
            if w.slot == slot_number and w.generation == current.number
            and not w.replacing and w.stop_reason is None
        ]
        if not active and now >= book.slot(slot_number).next_start:
            fork(slot_number, current)
    waiting = book.waiting(range(1, target + 1), now)
    serving = sum(1 for w in pool.workers.values() if w.state not in ("draining", "parked") and w.stop_reason is None)
    if policy.start_despite_backoff(serving, len(waiting)):
        slot_number = min(waiting, key=lambda n: book.slot(n).next_start)
        log.warning("worker %d: starting before its backoff ends: no worker is ready", slot_number)
        fork(slot_number, current)
    for worker in list(pool.workers.values()):
        if worker.slot > target:
            pool.drain(worker, "scaled down")


def memory_plan(
    pool: Pool, sampler: resources.ProcessSampler, current: Generation | None, wanted: int, explicit: bool
) -> policy.MemoryPlan | None:
    """`policy.plan_memory` on the pool's figures: the largest worker's private memory, the template's shared
    memory; None until a worker of `current` generation's template is ready to be measured."""
    ready = [w for w in pool.workers.values() if w.state == "ready" and w.pid]
    if not ready or current is None:
        return None
    measured = [sampler.memory(w.pid) for w in ready if w.pid]
    private = [m.uss for m in measured if m is not None]
    template = sampler.memory(current.process.pid)
    shared = template.rss if template else 0
    in_use = shared + sum(private)
    available = resources.memory_available() + in_use
    return policy.plan_memory(wanted, explicit, max(private, default=0), shared, available)


def tend_spare(pool: Pool, book: Restarts, current: Generation, target: int, now: float) -> None:
    """As many spares of the current generation parked as `policy.spares_wanted` says; the others drain (the
    newest first: the oldest have had the time to park). A spare that died on its own waits out its backoff like
    a slot (`SPARE_SLOT` in the restart book)."""
    wanted = policy.spares_wanted(now, book.serving_crashes, target)
    kept: list[Worker] = []
    for spare in sorted(pool.spares(), key=lambda w: w.forked_at):
        if spare.generation == current.number and len(kept) < wanted:
            kept.append(spare)
        else:
            pool.drain(spare, "no spare needed")
    if now < book.slot(SPARE_SLOT).next_start:
        return
    for _ in range(wanted - len(kept)):
        if len(pool.workers) >= CELLS - 1:
            break
        pool.fork(SPARE_SLOT, current, spare=True)
