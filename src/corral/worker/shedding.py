"""Keep-alive shedding: a worker asked to let some of its keep-alive clients go.

A client on a keep-alive connection stays with the worker that accepted it. When the pool grows, or one worker
stays far busier than the others, the manager asks that worker to shed connections (`corral.shed_orders`); the
HTTP protocol then ends that many keep-alive connections politely, with `Connection: close` on a response it was
sending anyway, and the clients reconnect through the shared accept queue, where any worker may take them. No
request is ever cut.

The HTTP protocol reads `pending` on each response that would keep its connection open (a plain integer read,
nothing more on the hot path) and calls `take()` only when it is not zero. The heartbeat polls the manager's
orders (`Orders.poll`): a new order replaces what is left of the previous one, and what an order asked for lapses
after `LAPSE` seconds, so idle connections that never send another request do not leave a count behind for
clients that arrive later.
"""

from __future__ import annotations

from corral.shed_orders import ShedOrders

LAPSE = 5.0  # seconds an order stands; the manager orders again if the load is still uneven

pending = 0  # connections this worker was asked to close politely and has not closed yet


def request(count: int) -> None:
    """Ask for `count` keep-alive connections to be closed after their current response, in place of what is left
    of an earlier request."""
    global pending
    pending = max(0, count)


def take() -> bool:
    """True when this response should close its keep-alive connection; each True uses up one request."""
    global pending
    if pending <= 0:
        return False
    pending -= 1
    return True


class Orders:
    """The worker's end of the manager's shed orders for its scoreboard cell; `poll` runs with each heartbeat."""

    def __init__(self, area: ShedOrders, cell: int) -> None:
        self._area = area
        self._cell = cell
        self._seen = area.read(cell)[0]  # an order left for an earlier worker of this cell is not for this one
        self._lapses_at = 0.0

    def poll(self, now: float) -> None:
        number, count = self._area.read(self._cell)
        if number != self._seen:
            self._seen = number
            request(count)
            self._lapses_at = now + LAPSE
        elif pending and now >= self._lapses_at:
            request(0)
