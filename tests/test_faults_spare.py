"""Fault suite: a worker that crashes while serving is replaced by a spare parked beforehand (issue 19).

After a first crash while serving, the manager keeps one spare worker forked and parked: its event loop and
server are built, but it accepts nothing and its app's lifespan has not run. When a worker that has answered a
request dies, its template wakes the spare in its place at once, with no round trip to the manager and no fork
on the way. Asserted by order, not by timing: the worker that takes the slot is the process that was parked
before the crash. Real processes on loopback; the crashes are real `os._exit` calls.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import SECOND_REQUEST_CRASHES_APP, Corral, process_tree, run_cli, wait_for, write_app

APP = """
    import os
    from pathlib import Path

    STARTED = Path(os.environ["STARTED_DIR"])

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    (STARTED / str(os.getpid())).touch()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/crash":
            os._exit(1)
        body = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
"""


def crash(corral: Corral) -> None:
    """One request that ends the worker serving it (os._exit before any answer)."""
    with pytest.raises(httpx.HTTPError):
        corral.get("/crash")


def one_spare(corral: Corral, generation: int = 1) -> dict[str, Any]:
    def parked() -> dict[str, Any] | None:
        spares = corral.status()["spares"]
        return spares[0] if len(spares) == 1 and spares[0]["generation"] == generation else None

    spare: dict[str, Any] = wait_for(parked, what=f"a spare of generation {generation}")
    return spare


def serving_pid(corral: Corral, other_than: set[int]) -> int:
    def ready() -> int | None:
        workers = corral.status()["workers"]
        pids = [w["pid"] for w in workers if w["state"] == "ready" and w["pid"] not in other_than]
        return pids[0] if len(workers) == 1 and pids else None

    pid: int = wait_for(ready, what="a new ready worker")
    return pid


def test_a_serving_crash_is_replaced_by_the_spare_parked_before_it(corrals: list[Corral], tmp_path: Path) -> None:
    started = tmp_path / "started"
    started.mkdir()
    write_app(tmp_path, APP)
    corral = Corral(tmp_path, "app.py", "-w", "1", env={"STARTED_DIR": str(started)})
    corrals.append(corral)
    [first] = corral.wait_ready(1)
    assert corral.status()["spares"] == []  # no crash yet: no spare
    assert corral.get("/pid").text == str(first)  # it has answered: its death is a crash while serving
    crash(corral)

    second = serving_pid(corral, {first})
    spare = one_spare(corral)["pid"]
    assert spare != second
    # Parked: it accepts nothing (every request goes to the one worker) and its app has not started.
    assert {corral.get("/pid").text for _ in range(20)} == {str(second)}
    assert not (started / str(spare)).exists()
    table = run_cli("status", "--control", str(corral.control), env={**os.environ, "COLUMNS": "200"}).stdout
    assert re.search(rf"spare\W+{spare}\W+parked", table), table  # `corral status` shows it on its own row

    crash(corral)  # the worker that answered above dies: the template wakes the spare in its slot
    third = serving_pid(corral, {first, second})
    assert third == spare, (third, spare, corral.log)  # the process parked before the crash, not a fork after it
    assert (started / str(spare)).exists()  # its lifespan ran once it was promoted
    assert corral.get("/pid").text == str(spare)
    assert f"the spare (pid {spare}) takes its place" in corral.log
    [worker] = corral.status()["workers"]
    assert worker["id"] == 1 and worker["pid"] == spare
    fresh = one_spare(corral)["pid"]  # the manager parks the next one
    assert fresh not in (first, second, spare)

    # A reload drains the old generation's spare (its template can then exit) and parks one of the new.
    reload = run_cli("reload", "--control", str(corral.control))
    assert reload.returncode == 0, reload.stderr
    newer = one_spare(corral, generation=2)["pid"]
    wait_for(lambda: fresh not in process_tree(corral.process.pid), what="the old spare to end")
    assert not (started / str(fresh)).exists()  # a spare that never served never ran the app's lifespan

    tree = process_tree(corral.process.pid)
    assert newer in tree
    corral.signal(signal.SIGTERM)
    assert corral.wait_exit() == 0, corral.log
    for pid in tree:  # the spare ended with the rest
        assert not os.path.exists(f"/proc/{pid}") or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_a_burst_of_serving_crashes_parks_more_spares_up_to_one_per_worker(
    corrals: list[Corral], tmp_path: Path
) -> None:
    """One spare answers a crash now and then; when crashes come faster than a new spare can be forked and
    parked, one spare would leave the pool to wait for forks, so the manager parks more (policy.spares_wanted)."""
    write_app(tmp_path, SECOND_REQUEST_CRASHES_APP)
    corral = Corral(tmp_path, "app.py", "-w", "3")
    corrals.append(corral)
    corral.wait_ready(3)
    crashes = 0
    for _ in range(300):  # every worker answers one request and dies on its next: a crash while serving each
        try:
            corral.get("/")
        except httpx.HTTPError:
            crashes += 1
            if crashes == 3 * 4:
                break
    assert crashes == 12, corral.log

    def three_spares() -> list[dict[str, Any]] | None:
        spares: list[dict[str, Any]] = corral.status()["spares"]
        return spares if len(spares) == 3 else None

    spares = wait_for(three_spares, what="three spares parked (one per worker, as the burst asks)")
    assert all(s["state"] == "parked" and s["generation"] == 1 for s in spares), spares
    assert corral.process.poll() is None  # crashes while serving never count toward --crash-limit
    corral.wait_ready(3)  # every slot filled again (a request now could meet a worker that dies on it)
