"""The worker's utilisation: its loop thread's running and runnable time, AnyIO's thread tokens in use, and the
process's CPU time, each over the elapsed time; the largest is published."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import anyio.to_thread

from corral.scoreboard import Cell, CellState, Scoreboard
from corral.worker.busy import BusyMeter, ProcessMeter, ThreadpoolMeter, WorkerLoad


def test_a_spinning_thread_reads_busy_and_a_sleeping_one_idle() -> None:
    meter = BusyMeter()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass
    assert meter.sample() > 0.8  # running, or waiting for a CPU on a loaded machine: busy either way
    time.sleep(0.3)
    assert meter.sample() < 0.2


def test_the_process_meter_sees_the_cpu_of_threads_the_loop_meter_does_not() -> None:
    loop, process = BusyMeter(), ProcessMeter()
    spent: list[float] = []

    def spin() -> None:
        start, deadline = time.thread_time(), time.monotonic() + 0.4
        while time.monotonic() < deadline:
            pass
        spent.append(time.thread_time() - start)

    started = time.monotonic()
    worker = threading.Thread(target=spin)
    worker.start()
    worker.join()  # this thread sleeps meanwhile, as a loop waiting for the GIL would
    elapsed = time.monotonic() - started
    assert loop.sample() < 0.2
    # The spinning thread's own CPU time (less on a loaded machine, where it also waits for a CPU) shows.
    assert process.sample() >= 0.9 * spent[0] / elapsed > 0.05


async def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def _occupancies() -> list[float]:
    """The meter's mean over a quiet stretch with: nothing, 2 of 4 tokens taken, 4 taken and 2 tasks waiting, and
    everything finished."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = 4
    meter = ThreadpoolMeter()
    meter.start()
    readings = []

    async def settled() -> float:
        meter.sample()  # from here: at least one look happens during the sleep (it is longer than EVERY)
        await asyncio.sleep(0.3)
        return meter.sample()

    readings.append(await settled())
    release = threading.Event()
    tasks = [asyncio.create_task(anyio.to_thread.run_sync(release.wait)) for _ in range(2)]
    await _until(lambda: limiter.borrowed_tokens == 2)
    readings.append(await settled())
    tasks += [asyncio.create_task(anyio.to_thread.run_sync(release.wait)) for _ in range(4)]
    await _until(lambda: limiter.statistics().tasks_waiting == 2)
    readings.append(await settled())
    release.set()
    await asyncio.gather(*tasks)
    readings.append(await settled())
    return readings


def test_the_threadpool_meter_reads_anyio_tokens_in_use_and_waiting_tasks_as_full() -> None:
    assert asyncio.run(_occupancies()) == [0.0, 0.5, 1.0, 0.0]


def test_an_app_without_anyio_does_not_load_it_and_reads_no_threadpool() -> None:
    script = """
import asyncio, sys
from corral.worker.busy import WorkerLoad

async def main():
    load = WorkerLoad()
    load.threadpool.start()
    await asyncio.sleep(0.2)
    return load.threadpool.sample()

print(asyncio.run(main()), "anyio" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["0.0", "False"]


def test_the_published_utilisation_is_the_largest_signal() -> None:
    async def full_threadpool_idle_loop() -> float:
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = 1
        load = WorkerLoad()
        load.threadpool.start()
        release = threading.Event()
        task = asyncio.create_task(anyio.to_thread.run_sync(release.wait))
        await _until(lambda: limiter.borrowed_tokens == 1)
        load.sample()
        await asyncio.sleep(0.3)  # the loop sleeps, the thread waits: only the threadpool is full
        busy = load.sample()
        release.set()
        await task
        return busy

    assert asyncio.run(full_threadpool_idle_loop()) == 1.0


def test_the_busy_fraction_travels_in_the_scoreboard_cell() -> None:
    board = Scoreboard.create()
    try:
        board.write(3, Cell(42, 1, CellState.READY, 1.0, 2.0, 10, 2, 0.75))
        assert board.read(3).busy == 0.75
        board.reset(3, 2)
        assert board.read(3).busy == 0.0
    finally:
        board.close()
