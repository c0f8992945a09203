"""The worker's first answer is stamped at once: the manager's proof that the app serves.

The manager tells a worker that could not start from one that crashed while serving by the requests its
scoreboard cell counts (`policy.proved`). The heartbeat stamps that count at most once a second, so a worker that
answered requests and died on a later one within its first second would look as if it had answered none. Here the
first response to end stamps the cell at once (uvicorn counts a request in `total_requests` as its response ends):
Corral's own protocol (`--http auto`) calls its `first_answer` hook as its first response ends; under uvicorn's
protocols (`--http h11|httptools`) the request-response cycles are replaced by subclasses whose `send` does it,
and the first such stamp puts uvicorn's own classes back, so later requests pay nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, MutableMapping
from types import ModuleType
from typing import Any

from corral.worker.http.protocol import HttpProtocol

UVICORN_PROTOCOLS = ("uvicorn.protocols.http.h11_impl", "uvicorn.protocols.http.httptools_impl")


def stamp_on_first_answer(stamp: Callable[[], None]) -> None:
    """Call `stamp` once, when the first response of this worker has been sent (any status). Called once the
    worker's HTTP protocol is chosen: uvicorn's modules are loaded then if it runs them (and only then)."""
    modules: list[ModuleType] = [m for name in UVICORN_PROTOCOLS if (m := sys.modules.get(name)) is not None]
    originals = {module: module.RequestResponseCycle for module in modules}
    done = False

    def answered() -> None:
        nonlocal done
        if done:
            return
        done = True
        HttpProtocol.first_answer = None
        for module, cycle_class in originals.items():
            module.RequestResponseCycle = cycle_class  # type: ignore[attr-defined]
        stamp()

    def watching(cycle_class: type[Any]) -> type[Any]:
        server_send = cycle_class.send

        async def send(self: Any, message: MutableMapping[str, Any]) -> None:
            await server_send(self, message)
            if not done and self.response_complete:  # the server counted it in `total_requests`
                answered()

        return type(f"Watched{cycle_class.__name__}", (cycle_class,), {"__slots__": (), "send": send})

    HttpProtocol.first_answer = answered
    for module, cycle_class in originals.items():
        module.RequestResponseCycle = watching(cycle_class)  # type: ignore[attr-defined]
