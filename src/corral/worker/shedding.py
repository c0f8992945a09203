"""Keep-alive shedding: a worker asked to let some of its keep-alive clients go.

A client on a keep-alive connection stays with the worker that accepted it. When the pool grows, or one worker
stays far busier than the others, the manager asks that worker to shed connections; the HTTP protocol then ends
that many keep-alive connections politely, with `Connection: close` on a response it was sending anyway, and the
clients reconnect through the shared accept queue, where any worker may take them. No request is ever cut.

The HTTP protocol reads `pending` on each response that would keep its connection open (a plain integer read,
nothing more on the hot path) and calls `take()` only when it is not zero.
"""

from __future__ import annotations

pending = 0  # connections this worker was asked to close politely and has not closed yet


def request(count: int) -> None:
    """Ask for `count` more keep-alive connections to be closed after their current response."""
    global pending
    if count > 0:
        pending += count


def take() -> bool:
    """True when this response should close its keep-alive connection; each True uses up one request."""
    global pending
    if pending <= 0:
        return False
    pending -= 1
    return True
