"""Where a worker's coroutines wait: printed after the threads' stacks when the manager asks for them (the
watchdog, before it replaces a hung or stuck worker)."""

from __future__ import annotations

import asyncio
import faulthandler
import inspect
import sys
from typing import Any

from corral.process import DUMP_STACKS


def dump_tasks_too(loop: asyncio.AbstractEventLoop) -> None:
    """On DUMP_STACKS, faulthandler writes every thread's stack at once (even with the loop blocked); it then
    chains to a loop handler that also prints the suspended coroutines, when the loop is free to run it
    (a worker stuck awaiting something that never comes shows where it waits)."""

    def print_tasks() -> None:
        lines = []
        for task in asyncio.all_tasks(loop):
            lines.append(f"Task {task.get_name()} (outermost call first):")
            lines += await_chain(task.get_coro())
        print("\n".join(lines), file=sys.stderr, flush=True)

    faulthandler.unregister(DUMP_STACKS)
    loop.add_signal_handler(DUMP_STACKS, print_tasks)
    faulthandler.register(DUMP_STACKS, all_threads=True, chain=True)


def await_chain(awaited: Any, limit: int = 200) -> list[str]:
    """The lines a suspended coroutine waits on, outermost first: through coroutines, generators, async
    generators (an `async with` of an @asynccontextmanager awaits its generator's `asend`, which shows no frame:
    the generator is found among the awaiting frame's locals) and the futures and tasks at the bottom."""
    lines: list[str] = []
    frame: Any = None
    seen: set[int] = set()
    while awaited is not None and id(awaited) not in seen and len(lines) < limit:
        seen.add(id(awaited))
        if isinstance(awaited, asyncio.Task):
            lines.append(f"  awaiting task {awaited.get_name()}:")
            awaited = awaited.get_coro()
            continue
        if isinstance(awaited, asyncio.Future):
            lines.append(f"  awaiting {awaited!r}")
            break
        code_frame = (
            getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            or getattr(awaited, "ag_frame", None)
        )
        if code_frame is None:
            generator = _suspended_async_generator(frame)
            if generator is None:  # a future's own iterator (C asyncio), a callback-based awaitable
                lines.append(f"  awaiting {type(awaited).__name__}")
            awaited = generator
            continue
        frame = code_frame
        lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno} in {frame.f_code.co_name}')
        awaited = (
            getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
            or getattr(awaited, "ag_await", None)
        )
    return lines


def _suspended_async_generator(frame: Any) -> Any:
    """The async generator that `frame` is awaiting, among its locals (directly or as `.gen`, which is how
    contextlib's async context managers hold theirs)."""
    if frame is None:
        return None
    for value in list(frame.f_locals.values()):
        for candidate in (value, getattr(value, "gen", None)):
            if inspect.isasyncgen(candidate) and candidate.ag_await is not None:
                return candidate
    return None
